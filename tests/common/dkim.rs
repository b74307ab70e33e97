//! DKIM signing (RFC 6376) and ARC sealing (RFC 8617) at test time, with
//! keys the test generates (no private key is ever committed). Shared by
//! the unit tests of `src/rescue/` (included there by path) and the
//! integration tests, so it uses mail-auth only, never spfmilter's types:
//! a key gives its DNS name and TXT record, and the caller puts them into
//! whatever DNS the test runs (`Zone::with_txt`, the test DNS server).
//!
//! ```ignore
//! let author = TestKey::ed25519("example.org", "sel1");
//! let zone = Zone::new().with_txt(&author.dns_name(), &author.dns_txt());
//! let signed = author.sign(&message("alice@example.org", "bob@example.net", "hi", "Hello\n"));
//! // A list that changed the message and sealed it after verifying it:
//! let list = TestKey::ed25519("lists.example", "arc");
//! let changed = [&signed[..], b"-- \r\nfooter\r\n"].concat();
//! let sealed = list.arc_seal(&changed, &signed, "lists.example", &[&author]).await;
//! ```
#![allow(dead_code)]

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dkim::DkimSigner;
use mail_auth::dkim::generate::DkimKeyPair;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, MessageAuthenticator, Parameters, ResolverCache,
    Txt,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer};

/// The header fields signed and sealed unless a test says otherwise.
pub const SIGNED_HEADERS: [&str; 5] = ["From", "To", "Subject", "Date", "Message-ID"];

#[derive(Clone)]
enum Private {
    Ed25519(Vec<u8>),
    /// PKCS #1 DER.
    Rsa(Vec<u8>),
    /// PKCS #8 DER.
    RsaPkcs8(Vec<u8>),
}

/// A signing key of one domain and selector.
#[derive(Clone)]
pub struct TestKey {
    pub domain: String,
    pub selector: String,
    private: Private,
    public_b64: String,
}

/// How [`TestKey::sign_with`] signs.
#[derive(Clone, Debug)]
pub struct SignOptions<'a> {
    pub headers: &'a [&'a str],
    /// Adds `l=` with the body's length (RFC 6376 §3.5).
    pub body_length: bool,
    /// Adds `r=y` (RFC 6651: the signer asks for failure reports).
    pub reporting: bool,
}

impl Default for SignOptions<'_> {
    fn default() -> Self {
        Self {
            headers: &SIGNED_HEADERS,
            body_length: false,
            reporting: false,
        }
    }
}

impl TestKey {
    /// A fresh Ed25519 key (RFC 8463): quick to make, even unoptimized.
    pub fn ed25519(domain: &str, selector: &str) -> TestKey {
        let pair = DkimKeyPair::generate_ed25519().expect("Ed25519 key generation");
        TestKey {
            domain: domain.to_string(),
            selector: selector.to_string(),
            public_b64: pair.encoded_public_key(),
            private: Private::Ed25519(pair.private_key().to_vec()),
        }
    }

    /// A fresh RSA key of `bits` (for verifiers without Ed25519). Slow in
    /// an unoptimized build: seconds for 2048 bits.
    pub fn rsa(domain: &str, selector: &str, bits: usize) -> TestKey {
        let pair = DkimKeyPair::generate_rsa(bits).expect("RSA key generation");
        TestKey {
            domain: domain.to_string(),
            selector: selector.to_string(),
            public_b64: pair.encoded_public_key(),
            private: Private::Rsa(pair.private_key().to_vec()),
        }
    }

    /// An RSA key made by another tool (dkimpy's `dknewkey`: quick, where
    /// [`TestKey::rsa`] takes seconds unoptimized): the private key as PEM
    /// (PKCS #8 or PKCS #1) and the `p=` of the key record the tool wrote.
    pub fn rsa_from_pem(domain: &str, selector: &str, pem: &[u8], public_b64: &str) -> TestKey {
        let private = match PrivateKeyDer::from_pem_slice(pem).expect("an RSA key in PEM") {
            PrivateKeyDer::Pkcs1(der) => Private::Rsa(der.secret_pkcs1_der().to_vec()),
            PrivateKeyDer::Pkcs8(der) => Private::RsaPkcs8(der.secret_pkcs8_der().to_vec()),
            _ => panic!("not an RSA key (PKCS #1 or PKCS #8)"),
        };
        let key = TestKey {
            domain: domain.to_string(),
            selector: selector.to_string(),
            private,
            public_b64: public_b64.to_string(),
        };
        // Fails here, not at the first signature, if the PEM is no RSA key.
        let _ = key.rsa_signing_key();
        key
    }

    /// The private key for mail-auth's RSA signer (RSA keys only).
    fn rsa_signing_key(&self) -> RsaKey<Sha256> {
        let der = match &self.private {
            Private::Rsa(der) => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der.clone())),
            Private::RsaPkcs8(der) => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.clone())),
            Private::Ed25519(_) => panic!("not an RSA key"),
        };
        RsaKey::<Sha256>::from_key_der(der).expect("RSA key")
    }

    /// The name of the key's TXT record, `selector._domainkey.domain`
    /// (RFC 6376 §3.6.2.1), without the trailing dot.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The key's TXT record (RFC 6376 §3.6.1; RFC 8463 §4.2 for `k=ed25519`).
    pub fn dns_txt(&self) -> String {
        match self.private {
            Private::Ed25519(_) => format!("v=DKIM1; k=ed25519; p={}", self.public_b64),
            Private::Rsa(_) | Private::RsaPkcs8(_) => {
                format!("v=DKIM1; k=rsa; p={}", self.public_b64)
            }
        }
    }

    /// `message` with a DKIM-Signature of this key prepended, signing
    /// [`SIGNED_HEADERS`] (those present).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.sign_with(message, &SignOptions::default())
    }

    pub fn sign_with(&self, message: &[u8], options: &SignOptions<'_>) -> Vec<u8> {
        macro_rules! sign {
            ($key:expr) => {
                DkimSigner::from_key($key)
                    .domain(self.domain.as_str())
                    .selector(self.selector.as_str())
                    .headers(options.headers.iter().copied())
                    .body_length(options.body_length)
                    .reporting(options.reporting)
                    .sign(message)
                    .expect("DKIM signing")
                    .to_header()
            };
        }
        let header = match &self.private {
            Private::Ed25519(der) => sign!(Ed25519Key::from_pkcs8_der(der).expect("Ed25519 key")),
            Private::Rsa(_) | Private::RsaPkcs8(_) => sign!(self.rsa_signing_key()),
        };
        [header.as_bytes(), message].concat()
    }

    /// `message` with an ARC set of this key (the sealer `self.domain`)
    /// prepended, as a forwarder or mailing list adds one (RFC 8617 §5.1).
    ///
    /// Its ARC-Authentication-Results (authserv-id `authserv_id`) holds the
    /// DKIM results of `received` (the message as the sealer received it,
    /// before it changed it into `message`) verified with `known` keys; the
    /// chain already in `message` is verified with `known` too, and the new
    /// seal's `cv=` says what that gave. The signed header fields are
    /// [`SIGNED_HEADERS`] and DKIM-Signature.
    pub async fn arc_seal(
        &self,
        message: &[u8],
        received: &[u8],
        authserv_id: &str,
        known: &[&TestKey],
    ) -> Vec<u8> {
        let keys = KnownKeys::new(known);
        let verifier = offline_authenticator();
        let received = AuthenticatedMessage::parse(received).expect("received message parses");
        let dkim = verifier
            .verify_dkim(Parameters::new(&received).with_txt_cache(&keys))
            .await;
        let results =
            AuthenticationResults::new(authserv_id).with_dkim_results(&dkim, received.from());
        let to_seal = AuthenticatedMessage::parse(message).expect("message to seal parses");
        let chain = verifier
            .verify_arc(Parameters::new(&to_seal).with_txt_cache(&keys))
            .await;
        let headers = SIGNED_HEADERS.iter().copied().chain(["DKIM-Signature"]);
        macro_rules! seal {
            ($key:expr) => {
                ArcSealer::from_key($key)
                    .domain(self.domain.as_str())
                    .selector(self.selector.as_str())
                    .headers(headers)
                    .seal(&to_seal, &results, &chain)
                    .expect("ARC sealing")
                    .to_header()
            };
        }
        let sealed = match &self.private {
            Private::Ed25519(der) => seal!(Ed25519Key::from_pkcs8_der(der).expect("Ed25519 key")),
            Private::Rsa(_) | Private::RsaPkcs8(_) => seal!(self.rsa_signing_key()),
        };
        [sealed.as_bytes(), message].concat()
    }
}

/// A plain message from `from` (an address) with CRLF line ends.
pub fn message(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\n\
         Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <test-{subject_id}@example.org>\r\n\
         \r\n{body}",
        subject_id = subject.len(),
        body = body.replace("\r\n", "\n").replace('\n', "\r\n"),
    )
    .into_bytes()
}

/// The keys a sealer knows, as mail-auth's TXT cache.
struct KnownKeys(HashMap<Box<str>, Txt>);

impl KnownKeys {
    fn new(keys: &[&TestKey]) -> Self {
        KnownKeys(
            keys.iter()
                .map(|k| {
                    let record = DomainKey::parse(k.dns_txt().as_bytes()).expect("own key record");
                    (
                        format!("{}.", k.dns_name()).into_boxed_str(),
                        Txt::from(record),
                    )
                })
                .collect(),
        )
    }
}

impl ResolverCache<Box<str>, Txt> for KnownKeys {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(name).cloned()
    }
    fn remove<Q>(&self, _name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }
    fn insert(&self, _key: Box<str>, _value: Txt, _valid_until: std::time::Instant) {}
}

/// A verifier that asks no name server: every key comes from the cache.
fn offline_authenticator() -> MessageAuthenticator {
    let mut options = ResolverOpts::default();
    options.attempts = 0;
    MessageAuthenticator::new(ResolverConfig::from_parts(None, vec![], vec![]), options)
        .expect("an offline verifier")
}
