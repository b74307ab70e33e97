//! The public keys of the signatures looked at (RFC 6376 §3.6.2.1:
//! `selector._domainkey.domain` TXT), fetched through spfmilter's own
//! [`Lookup`] (so `--nameserver`, the DNS time limits and the tests'
//! in-memory zones apply), all at once and within one deadline, then handed
//! to mail-auth as its TXT cache. mail-auth's own resolver has no name
//! server ([`authenticator`]), so a name missing from the cache fails at
//! once and never reaches the network.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

use futures_util::future::join_all;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{ResolveHosts, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::{
    DnsError as AuthDnsError, Error as AuthError, MessageAuthenticator, ResolverCache,
};
use tokio::time::Instant;

use crate::dns::{DnsError, Lookup};

/// What the DNS said about one key name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A TXT answer (possibly empty: NODATA).
    Answered,
    /// NXDOMAIN: the signature has no key and fails.
    NxDomain,
    /// SERVFAIL, a timeout, or the time limit: the signature's result is
    /// unknown.
    Temporary(String),
}

/// The keys of one message: mail-auth's parsed records by the exact name
/// mail-auth asks for, and what the DNS said about each.
pub struct Keys {
    records: HashMap<Box<str>, mail_auth::Txt>,
    outcomes: HashMap<String, Outcome>,
}

impl Keys {
    /// Looks up every name in `names` (duplicates asked once) through
    /// `lookup`, concurrently, each abandoned at `deadline`.
    pub async fn fetch<L: Lookup>(lookup: &L, names: &[String], deadline: Instant) -> Keys {
        let mut unique: Vec<&String> = Vec::with_capacity(names.len());
        for name in names {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        let answers = join_all(unique.iter().map(|name| async move {
            match tokio::time::timeout_at(deadline, lookup.txt(name)).await {
                Ok(answer) => answer,
                Err(_) => Err(DnsError::Temporary(
                    "time limit for key lookups reached".to_string(),
                )),
            }
        }))
        .await;
        let mut keys = Keys {
            records: HashMap::with_capacity(unique.len()),
            outcomes: HashMap::with_capacity(unique.len()),
        };
        for (name, answer) in unique.into_iter().zip(answers) {
            let (record, outcome) = match answer {
                Ok(txts) => {
                    // Like mail-auth's own lookup: the first record that
                    // parses as a key is the key; none is an invalid record.
                    let mut parsed = Err(AuthError::Dns(AuthDnsError::InvalidRecordType));
                    for txt in txts.iter() {
                        parsed = DomainKey::parse(txt);
                        if parsed.is_ok() {
                            break;
                        }
                    }
                    (mail_auth::Txt::from(parsed), Outcome::Answered)
                }
                Err(DnsError::NxDomain) => (
                    mail_auth::Txt::Error(AuthError::Dns(AuthDnsError::RecordNotFound(
                        ResponseCode::NXDomain,
                    ))),
                    Outcome::NxDomain,
                ),
                Err(DnsError::Temporary(why)) => (
                    mail_auth::Txt::Error(AuthError::Dns(AuthDnsError::Resolver(why.clone()))),
                    Outcome::Temporary(why),
                ),
            };
            keys.records.insert(name.as_str().into(), record);
            keys.outcomes.insert(name.clone(), outcome);
        }
        keys
    }

    /// What the DNS said about `name` (`None`: it was not looked up).
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.outcomes.get(name)
    }
}

impl ResolverCache<Box<str>, mail_auth::Txt> for Keys {
    fn get<Q>(&self, name: &Q) -> Option<mail_auth::Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.records.get(name).cloned()
    }

    fn remove<Q>(&self, _name: &Q) -> Option<mail_auth::Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    /// mail-auth stores what its own resolver found; that resolver has no
    /// name server, so there is never anything worth keeping.
    fn insert(&self, _key: Box<str>, _value: mail_auth::Txt, _valid_until: std::time::Instant) {}
}

/// A mail-auth authenticator whose resolver knows no name server and reads
/// no system configuration or hosts file: every query that misses [`Keys`]
/// (a third-party ATPS record, RFC 6541; a DKIM report record, RFC 6651)
/// fails at once without a packet sent.
pub fn authenticator() -> Result<MessageAuthenticator, String> {
    let (config, options) = offline_resolver();
    MessageAuthenticator::new(config, options)
        .map_err(|e| format!("cannot set up the DKIM verifier: {e}"))
}

/// The configuration of [`authenticator`]'s resolver: no name server, no
/// search domain, no hosts file, no retry, no cache.
fn offline_resolver() -> (ResolverConfig, ResolverOpts) {
    let mut options = ResolverOpts::default();
    options.attempts = 0;
    options.cache_size = 0;
    options.use_hosts_file = ResolveHosts::Never;
    (ResolverConfig::from_parts(None, vec![], vec![]), options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_auths_resolver_has_nowhere_to_send_a_query() {
        let (config, options) = offline_resolver();
        assert!(config.name_servers().is_empty());
        assert!(config.search().is_empty());
        assert_eq!(config.domain(), None);
        assert_eq!(options.use_hosts_file, ResolveHosts::Never);
    }
}
