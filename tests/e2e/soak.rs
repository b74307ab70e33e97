//! The soak (docs/design.md): many messages with mixed SPF results through
//! the whole chain — Postfix's smtpd, spfmilter, OpenDKIM, OpenDMARC,
//! cleanup, qmgr and the `virtual` delivery agent writing a Maildir —
//! while spfmilter is restarted twice: once stopped with SIGTERM, once
//! killed with SIGKILL (a crash), each time started again. spfmilter
//! rejects SPF fail (HELO and MAIL FROM) with the rescue by DKIM on
//! ([`NATIVE_CONFIG`]): every reject is held to the end of DATA, where a
//! forwarded message signed by its author's domain (signed.test, a key the
//! test makes, a signature per message) is let through and the rest is
//! refused. Then every message is accounted for:
//!
//! * accepted (`250 2.0.0 Ok: queued as ID`): delivered exactly once, with
//!   exactly one `Received-SPF` (spfmilter's, above Postfix's `Received:`)
//!   carrying the expected result and identity (`Fail` for a rescued
//!   message: the rescue cancels the reject, never the result), OpenDKIM's
//!   and OpenDMARC's expected verdicts; a rescued message is logged by
//!   spfmilter with its queue ID;
//! * rejected: the expected `550 5.7.23` at the expected stage (the end of
//!   DATA for a held reject), and never delivered;
//! * answered 4xx: Postfix's `milter_default_action = tempfail` while
//!   spfmilter is down (`451 4.7.1`), or spfmilter's own `451 4.3.2` for a
//!   check or a held message it was stopped in the middle of, sent again
//!   later as a client MTA would. A 4xx is allowed only around the
//!   restarts: anywhere else it would be spfmilter failing, hidden by the
//!   retries.
//!
//! None lost, none delivered twice, nothing left in Postfix's queue, no
//! SMTP session cut after the end of data (a message whose fate the client
//! cannot know).
//!
//! The messages are sent by [`WORKERS`] threads, each SMTP session made of
//! up to three messages of the same client and HELO (so one milter
//! connection carries several transactions), through a small SMTP client
//! with XCLIENT (swaks, a Perl process per message, would be the
//! bottleneck). `SPFMILTER_SOAK_MESSAGES` sets the number of messages
//! (default [`DEFAULT_MESSAGES`], what CI runs); `BENCHMARKS.md` holds a
//! run of 10,000.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::dkim::TestKey;
use super::dns::{Record, Zone};
use super::forwarding::{SELECTOR, SIGNED_DOMAIN, dkim_result, signer_zone};
use super::lab::{Lab, LabConfig};
use super::milter::{MilterUnderTest, PolicydConf, TraceHeader, spf_header};
use super::opendkim::{DkimKey, OpenDkimConfig};
use super::postfix::{MYHOSTNAME, RCPT_DOMAIN};
use super::process::{make_dir, run, wait_until};
use super::smtp::{Message, Reply};
use super::zones::{CLIENT_IP, DMARC_RECORD, STRANGER_IP, delegate, standard_zones};

/// Messages in a CI run.
pub const DEFAULT_MESSAGES: usize = 1000;
/// The scenarios of [`scenario`], one message each in turn.
const CYCLE: usize = 12;
/// spfmilter's configuration (`run --config`): the native form of
/// `PolicydConf::reject_fail()` with `debugLevel = 1` (one line per
/// message, not three), and the rescue by DKIM.
const NATIVE_CONFIG: &str = "[milter]\n\
     authserv_id = \"mx.test.example\"\n\
     [policy]\n\
     helo_reject = \"Fail\"\n\
     mail_from_reject = \"Fail\"\n\
     [spf]\n\
     lookup_time = 4\n\
     [log]\n\
     level = 1\n\
     [rescue]\n\
     methods = [\"dkim\"]\n";
/// Signed with the RSA key: the messages of one cycle in this many.
const RSA_EVERY: usize = 8;
/// The selector of signed.test's Ed25519 key (its RSA key is [`SELECTOR`]).
const ED25519_SELECTOR: &str = "ed";
/// The stages of an SMTP transaction where the soak expects a reject.
const MAIL_FROM: &str = "MAIL FROM";
const END_OF_DATA: &str = "end of data";
/// Concurrent SMTP clients.
pub const WORKERS: usize = 8;
/// Most messages in one SMTP session.
const PER_SESSION: usize = 3;
/// A message answered 4xx this many times fails the soak.
const MAX_ATTEMPTS: usize = 30;
/// A 4xx counts as caused by a restart if it came at most this long after
/// spfmilter was listening again: an SMTP session that began while
/// spfmilter was down keeps its failed milter until it ends.
const RESTART_GRACE: Duration = Duration::from_secs(3);
/// The uid and gid `virtual` delivers as (nobody; above
/// `virtual_minimum_uid`).
const MAILBOX_ID: u32 = 65534;

/// The message count: `SPFMILTER_SOAK_MESSAGES`, else [`DEFAULT_MESSAGES`].
pub fn messages_from_env() -> usize {
    std::env::var("SPFMILTER_SOAK_MESSAGES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n >= 30)
        .unwrap_or(DEFAULT_MESSAGES)
}

/// How long the isolated test may take for `messages`: the lab, and
/// 20 messages/s at the very least (a run here does well over 100).
pub fn time_limit(messages: usize) -> Duration {
    Duration::from_secs(120 + (messages / 20) as u64)
}

/// What must happen to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Delivered with spfmilter's `Received-SPF: <spf>` for `identity`,
    /// OpenDMARC's `dmarc=` verdict and OpenDKIM's `dkim=` one (each if
    /// checked); `rescued`: let through at the end of DATA by a DKIM
    /// signature of signed.test, which spfmilter logs.
    Delivered {
        spf: &'static str,
        identity: &'static str,
        dmarc: Option<&'static str>,
        dkim: Option<&'static str>,
        rescued: bool,
    },
    /// `550 5.7.23` (Mail_From_reject / HELO_reject = Fail) at `stage`:
    /// [`MAIL_FROM`], or [`END_OF_DATA`] for a reject held for the rescue
    /// (every SPF reject, with [`NATIVE_CONFIG`]).
    Rejected { stage: &'static str },
}

/// The DKIM signature a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signature {
    None,
    /// signed.test's, over the message as sent.
    Valid,
    /// signed.test's, but the body was changed after signing.
    Broken,
}

/// One message of the soak.
#[derive(Debug, Clone)]
struct Scenario {
    client_ip: &'static str,
    helo: &'static str,
    /// Empty: the null sender.
    from: String,
    /// Carries a forged `Received-SPF: Pass` and a forged
    /// `Authentication-Results` under Postfix's host name, which must
    /// both be gone (docs/dmarc-safety.md).
    forged: bool,
    signature: Signature,
    expect: Expect,
}

/// The distinct sender domain of message `id` (its own name under
/// soak.test, so the record is fetched cold; the provider include it
/// points at is shared and cached).
fn soak_domain(id: usize) -> String {
    format!("d{id}.soak.test")
}

/// Message `id`'s scenario: a cycle of [`CYCLE`]. The results follow from
/// the zones (`zones.rs`, [`soak_zones`] and `forwarding.rs`), RFC 7208,
/// the policyd-spf decisions of docs/policyd-spf-compatibility.md §3 under
/// `HELO_reject = Mail_From_reject = Fail`, and the rescue (README.md,
/// "reject without losing forwarded mail"): every one of those rejects is
/// held to the end of DATA, and only a valid DKIM signature aligned with
/// the From or MAIL FROM domain cancels it.
fn scenario(id: usize) -> Scenario {
    let pass_helo = |from: String, expect: Expect| Scenario {
        client_ip: CLIENT_IP,
        helo: "mx.pass.test",
        from,
        forged: false,
        signature: Signature::None,
        expect,
    };
    let delivered = |spf, identity, dmarc| Expect::Delivered {
        spf,
        identity,
        dmarc,
        dkim: None,
        rescued: false,
    };
    let held = Expect::Rejected { stage: END_OF_DATA };
    match id % CYCLE {
        // ip4:192.0.2.0/24 covers the client; aligned From: → dmarc=pass.
        0 => pass_helo(
            format!("alice{id}@pass.test"),
            delivered("pass", "mailfrom", Some("pass")),
        ),
        // include:_spf.soak.test (ip4:192.0.2.0/24) passes; aligned.
        1 => pass_helo(
            format!("bob@{}", soak_domain(id)),
            delivered("pass", "mailfrom", Some("pass")),
        ),
        // ~all with forged pass headers: ours says softfail, OpenDMARC is
        // not fooled.
        2 => Scenario {
            forged: true,
            ..pass_helo(
                format!("carol{id}@softfail.test"),
                delivered("softfail", "mailfrom", Some("fail")),
            )
        },
        3 => pass_helo(
            format!("dave{id}@neutral.test"),
            delivered("neutral", "mailfrom", Some("fail")),
        ),
        // No SPF record: none; the HELO pass does not stand in for it in
        // Received-SPF (identity stays mailfrom).
        4 => pass_helo(
            format!("erin{id}@none.test"),
            delivered("none", "mailfrom", Some("fail")),
        ),
        // PermError_reject is False by default: a header.
        5 => pass_helo(
            format!("frank{id}@permerror.test"),
            delivered("permerror", "mailfrom", Some("fail")),
        ),
        // -all: a reject, held; unsigned, refused at the end of DATA.
        6 => pass_helo(format!("mallory{id}@fail.test"), held),
        // The null sender: the HELO identity (RFC 7208 §2.4), header
        // identity=helo. DMARC not checked (From: is the HELO's
        // postmaster).
        7 => pass_helo(String::new(), delivered("pass", "helo", None)),
        // HELO fail rejects before MAIL FROM counts (docs/policyd-spf-compatibility.md §3);
        // held too, and unsigned.
        8 => Scenario {
            helo: "mx.fail.test",
            ..pass_helo(format!("alice{id}@pass.test"), held)
        },
        // A cold soak.test domain from a client outside the provider's
        // networks: -all, held and refused (HELO mx.none.test has no SPF:
        // none).
        9 => Scenario {
            client_ip: STRANGER_IP,
            helo: "mx.none.test",
            ..pass_helo(format!("eve@{}", soak_domain(id)), held)
        },
        // Forwarded: signed.test lists 203.0.113.0/24 only, so SPF fails
        // for the forwarder; the message is intact and signed by its
        // author's domain, aligned with From: rescued, with the true
        // result (Fail), OpenDKIM's dkim=pass and OpenDMARC's dmarc=pass
        // through DKIM.
        10 => Scenario {
            signature: Signature::Valid,
            ..pass_helo(
                format!("alice{id}@{SIGNED_DOMAIN}"),
                Expect::Delivered {
                    spf: "fail",
                    identity: "mailfrom",
                    dmarc: Some("pass"),
                    dkim: Some("pass"),
                    rescued: true,
                },
            )
        },
        // The same, changed after signing: the signature fails, nothing
        // rescues it, refused at the end of DATA.
        _ => Scenario {
            signature: Signature::Broken,
            ..pass_helo(format!("alice{id}@{SIGNED_DOMAIN}"), held)
        },
    }
}

/// soak.test: a provider include and one sender domain per message of
/// cases 1 and 9, each `v=spf1 include:_spf.soak.test -all` with its own
/// DMARC record (OpenDMARC without a public suffix list looks up the
/// From: domain's `_dmarc` only); signed.test with `keys` published (the
/// first under [`SELECTOR`]).
fn soak_zones(messages: usize, keys: &[TestKey]) -> Vec<Zone> {
    let mut zones = standard_zones();
    let parent = zones
        .iter_mut()
        .find(|z| z.origin == "test")
        .expect("the zone test.");
    parent.records.push(Record::ns("soak", "ns.soak.test."));
    parent.records.push(Record::a("ns.soak", "127.0.0.1"));
    let mut soak = Zone::new("soak.test").with(Record::txt("_spf", "v=spf1 ip4:192.0.2.0/24 -all"));
    for id in (0..messages).filter(|id| matches!(id % CYCLE, 1 | 9)) {
        let name = soak_domain(id);
        let label = name.trim_end_matches(".soak.test");
        soak = soak
            .with(Record::txt(label, "v=spf1 include:_spf.soak.test -all"))
            .with(Record::txt(&format!("_dmarc.{label}"), DMARC_RECORD));
    }
    zones.push(soak);
    let mut signed = signer_zone(&keys[0].dns_txt());
    for key in &keys[1..] {
        signed = signed.with(Record::txt(
            &format!("{}._domainkey", key.selector),
            &key.dns_txt(),
        ));
    }
    delegate(&mut zones, signed);
    zones
}

/// What happened to one attempt at sending a message.
#[derive(Debug, Clone)]
enum Outcome {
    Accepted {
        queue_id: String,
    },
    /// 5xx, at `stage`.
    Rejected {
        stage: &'static str,
        reply: Reply,
    },
    /// 4xx at `stage`: sent again later.
    Deferred {
        stage: &'static str,
        reply: Reply,
    },
    /// The connection failed before the end of data: sent again later.
    Broken {
        stage: &'static str,
        error: String,
    },
    /// The connection failed after the end of data was sent: the client
    /// cannot know whether the message was queued.
    Unknown {
        error: String,
    },
}

/// Every attempt, in order, per message.
#[derive(Debug, Default)]
struct Ledger {
    /// Messages waiting to be sent, with the earliest time to send.
    pending: VecDeque<(usize, Instant)>,
    attempts: HashMap<usize, Vec<(Instant, Outcome)>>,
    sessions: usize,
}

/// Runs the soak with `messages` messages.
pub fn soak(scratch: &Path, messages: usize) {
    let milter = MilterUnderTest::spfmilter().with_native_config(NATIVE_CONFIG);
    // What the native configuration says, for the harness (which header
    // spfmilter writes).
    let conf = PolicydConf::reject_fail().set("debugLevel", "1");
    // The author's keys, made now and published in signed.test: RSA (made
    // by dknewkey, quicker than unoptimized Rust), which most signers use,
    // and Ed25519 (RFC 8463); see [`signing_key`].
    let rsa = DkimKey::generate(&scratch.join("keys"), "signed")
        .and_then(|k| k.test_key(SIGNED_DOMAIN, SELECTOR))
        .unwrap_or_else(|e| panic!("RSA key: {e}"));
    let keys = [rsa, TestKey::ed25519(SIGNED_DOMAIN, ED25519_SELECTOR)];
    let mut config = LabConfig::new(&milter, conf.clone());
    config.zones = soak_zones(messages, &keys);
    // OpenDKIM reads the key from a file: it cannot take concurrent mail
    // with its resolver configured for the lab (`OpenDkimConfig::keys`).
    // spfmilter and OpenDMARC use the lab's DNS.
    config.opendkim = Some(OpenDkimConfig {
        keys: keys.iter().map(|k| (k.dns_name(), k.dns_txt())).collect(),
        ..OpenDkimConfig::default()
    });
    let mailbox = scratch.join("mailbox");
    make_dir(&mailbox).expect("mailbox directory");
    run(std::process::Command::new("chown")
        .arg(format!("{MAILBOX_ID}:{MAILBOX_ID}"))
        .arg(&mailbox))
    .expect("chown the mailbox directory");
    deliver_to_maildir(&mut config, &mailbox);
    // The messages are written while the lab starts: an RSA signature
    // takes about 0.1 s unoptimized, too slow for the sending threads.
    let writing = Instant::now();
    let texts = std::thread::spawn(move || {
        let texts = message_texts(messages, &keys);
        eprintln!(
            "soak: {messages} messages written in {:?}",
            writing.elapsed()
        );
        texts
    });
    let mut lab = Lab::start(scratch, config).unwrap_or_else(|e| panic!("lab: {e}"));
    let port = lab.postfix().port;
    let texts = texts.join().expect("the message texts");

    let ledger = Mutex::new(Ledger {
        pending: (0..messages).map(|id| (id, Instant::now())).collect(),
        ..Ledger::default()
    });
    // Messages with a final outcome (accepted, rejected, unknown).
    let finished = AtomicUsize::new(0);
    let mut restarts: Vec<(&str, Instant, Instant)> = Vec::new();
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| worker(port, messages, &texts, &ledger, &finished));
        }
        // The restarts, at a third and two thirds of the run, under load.
        for (n, how) in [(1, "SIGTERM"), (2, "SIGKILL")] {
            while finished.load(Ordering::Relaxed) < messages * n / 3 {
                std::thread::sleep(Duration::from_millis(5));
            }
            let begin = Instant::now();
            let restarted = if how == "SIGKILL" {
                lab.kill_milter()
                    .and_then(|()| lab.restart_milter(conf.clone()))
            } else {
                lab.restart_milter(conf.clone())
            };
            if let Err(e) = restarted {
                // Stop the workers before panicking in the scope.
                ledger.lock().expect("ledger").pending.clear();
                finished.store(usize::MAX / 2, Ordering::Relaxed);
                panic!("restart {n} ({how}): {e}");
            }
            restarts.push((how, begin, Instant::now()));
            eprintln!(
                "soak: restart {n} ({how}) after {} messages took {:?}",
                finished.load(Ordering::Relaxed),
                begin.elapsed()
            );
        }
    });
    let sent_in = started.elapsed();
    let ledger = ledger.into_inner().expect("ledger");

    // Every final outcome, and the 4xx only around restarts.
    let mut accepted: HashMap<usize, String> = HashMap::new();
    let mut rejected = 0;
    let mut deferred = 0;
    // "451 4.7.1 at MAIL FROM" → how many.
    let mut deferred_by: HashMap<String, usize> = HashMap::new();
    let mut broken = 0;
    let mut failures = Vec::new();
    let near_restart = |at: &Instant| {
        restarts
            .iter()
            .any(|(_, begin, end)| at >= begin && *at <= *end + RESTART_GRACE)
    };
    for id in 0..messages {
        let attempts = ledger.attempts.get(&id).map_or(&[][..], Vec::as_slice);
        let Some((_, last)) = attempts.last() else {
            failures.push(format!("message {id}: never sent"));
            continue;
        };
        for (at, outcome) in attempts {
            match outcome {
                Outcome::Deferred { stage, reply } => {
                    deferred += 1;
                    *deferred_by
                        .entry(format!(
                            "{} {} at {stage}",
                            reply.code,
                            reply.enhanced.as_deref().unwrap_or("-")
                        ))
                        .or_default() += 1;
                    // Postfix's tempfail while spfmilter is down, or
                    // spfmilter's reply when a stop interrupts a check at
                    // MAIL FROM or a held message at the end of DATA.
                    let restart_reply = reply.code == 451
                        && match reply.enhanced.as_deref() {
                            Some("4.7.1") => true,
                            Some("4.3.2") => [MAIL_FROM, END_OF_DATA].contains(stage),
                            _ => false,
                        };
                    if !near_restart(at) || !restart_reply {
                        failures.push(format!(
                            "message {id}: {reply} at {stage}, {:?} into the run, not \
                             a tempfail around a restart ({restarts:?})",
                            at.duration_since(started)
                        ));
                    }
                }
                Outcome::Broken { stage, error } => {
                    broken += 1;
                    if !near_restart(at) {
                        failures.push(format!("message {id}: connection lost at {stage}: {error}"));
                    }
                }
                _ => {}
            }
        }
        let want = scenario(id).expect;
        match (last, want) {
            (Outcome::Accepted { queue_id }, Expect::Delivered { .. }) => {
                accepted.insert(id, queue_id.clone());
            }
            (Outcome::Rejected { stage, reply }, Expect::Rejected { stage: want }) => {
                rejected += 1;
                if *stage != want
                    || reply.code != 550
                    || reply.enhanced.as_deref() != Some("5.7.23")
                {
                    failures.push(format!("message {id}: rejected with {reply} at {stage}"));
                }
            }
            (Outcome::Unknown { error }, _) => failures.push(format!(
                "message {id}: connection lost after the end of data: {error}"
            )),
            (other, want) => failures.push(format!(
                "message {id} ({:?}): {other:?}, expected {want:?} (after {} attempts)",
                scenario(id),
                attempts.len()
            )),
        }
    }

    // Delivery: the queue drains, each accepted message arrives once.
    let maildir = mailbox.join("inbox");
    let count_delivered = || {
        ["new", "cur"]
            .iter()
            .map(|d| fs::read_dir(maildir.join(d)).map_or(0, |r| r.count()))
            .sum::<usize>()
    };
    let waited = wait_until(
        Duration::from_secs(60 + messages as u64 / 50),
        "every accepted message to be delivered",
        || count_delivered() >= accepted.len() && queue_is_empty(&lab),
    );
    let delivered_in = started.elapsed();
    if let Err(e) = waited {
        failures.push(format!(
            "{e}: {} of {} delivered; queue: {}",
            count_delivered(),
            accepted.len(),
            run(std::process::Command::new("postqueue")
                .arg("-c")
                .arg(&lab.postfix().conf_dir)
                .arg("-p"))
            .unwrap_or_default()
        ));
    }
    // spfmilter logs each rescue with the queue ID Postfix gave the
    // client: every rescued message's, and no other accepted message's.
    let rescue = format!("rescued by dkim d={SIGNED_DOMAIN} aligned with From");
    let is_rescued =
        |id: usize| matches!(scenario(id).expect, Expect::Delivered { rescued: true, .. });
    let mut logged: HashMap<String, String> = HashMap::new();
    let all_logged = wait_until(
        Duration::from_secs(30),
        "spfmilter to log every rescue",
        || {
            logged = rescue_lines(&lab.milter_log());
            accepted
                .iter()
                .filter(|(id, _)| is_rescued(**id))
                .all(|(_, queue_id)| logged.contains_key(queue_id))
        },
    );
    let mut rescues = 0;
    for (&id, queue_id) in &accepted {
        match (is_rescued(id), logged.get(queue_id)) {
            (true, Some(what)) if *what == rescue => rescues += 1,
            (false, None) => {}
            (true, what) => failures.push(format!(
                "message {id} ({queue_id}) accepted; spfmilter logged {what:?}, not {rescue:?} \
                 ({all_logged:?})"
            )),
            (false, Some(what)) => failures.push(format!(
                "message {id} ({queue_id}) logged as rescued: {what}"
            )),
        }
    }

    let mut copies: HashMap<usize, usize> = HashMap::new();
    let mut results: HashMap<String, usize> = HashMap::new();
    for dir in ["new", "cur"] {
        let Ok(entries) = fs::read_dir(maildir.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("maildir entry").path();
            let text = fs::read_to_string(&path).expect("a delivered message");
            let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
            let message = Message::parse(head, body);
            let Some(id) = message
                .first("X-Soak-Id")
                .and_then(|v| v.trim().parse::<usize>().ok())
            else {
                failures.push(format!("{}: no X-Soak-Id", path.display()));
                continue;
            };
            *copies.entry(id).or_default() += 1;
            match check_delivered(id, &message, accepted.get(&id)) {
                Ok(result) => *results.entry(result).or_default() += 1,
                Err(e) => failures.push(format!("message {id} ({}): {e}", path.display())),
            }
        }
    }
    for (&id, &n) in &copies {
        if n != 1 {
            failures.push(format!("message {id} delivered {n} times"));
        }
        if !accepted.contains_key(&id) {
            failures.push(format!("message {id} delivered but not accepted"));
        }
    }
    for id in accepted.keys() {
        if !copies.contains_key(id) {
            failures.push(format!("message {id} accepted but not delivered (lost)"));
        }
    }

    let attempts: usize = ledger.attempts.values().map(Vec::len).sum();
    let mut results: Vec<_> = results.into_iter().collect();
    results.sort();
    let mut deferred_by: Vec<_> = deferred_by.into_iter().collect();
    deferred_by.sort();
    eprintln!(
        "soak: {messages} messages in {} SMTP sessions ({attempts} attempts) by {WORKERS} clients; \
         sent in {:.1} s ({:.0} messages/s), all delivered after {:.1} s; restarts: {}; \
         outcomes: {} delivered {results:?} ({rescues} rescued by DKIM), {rejected} rejected \
         550, {deferred} answered 451 and sent again {deferred_by:?}, {broken} connections lost and \
         sent again; checked after {:.1} s",
        ledger.sessions,
        sent_in.as_secs_f64(),
        messages as f64 / sent_in.as_secs_f64(),
        delivered_in.as_secs_f64(),
        restarts.len(),
        accepted.len(),
        started.elapsed().as_secs_f64(),
    );
    if !failures.is_empty() {
        let shown: Vec<_> = failures.iter().take(30).collect();
        panic!(
            "soak: {} failures, the first ones:\n{}",
            failures.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_eq!(restarts.len(), 2, "two restarts");
    lab.shutdown()
        .unwrap_or_else(|e| panic!("unclean shutdown: {e}"));
}

/// The rescues in spfmilter's `log`: queue ID → what rescued the message
/// (`QUEUEID: rescued by dkim d=... aligned with From`).
fn rescue_lines(log: &[String]) -> HashMap<String, String> {
    log.iter()
        .filter_map(|line| {
            let at = line.find(": rescued by ")?;
            let queue_id = line[..at].rsplit([' ', ':']).next()?;
            Some((queue_id.to_string(), line[at + 2..].to_string()))
        })
        .collect()
}

/// Postfix delivers `rcpt.example` with `virtual` into the Maildir
/// `MAILBOX/inbox/` instead of holding the messages: a real delivery,
/// counted by files. No flow-control pauses (`in_flow_delay`), no client
/// rate limits (all the sessions come from 127.0.0.1).
fn deliver_to_maildir(config: &mut LabConfig, mailbox: &Path) {
    let settings = [
        ("mydestination", String::new()),
        ("virtual_mailbox_domains", RCPT_DOMAIN.to_string()),
        ("virtual_mailbox_base", mailbox.display().to_string()),
        ("virtual_mailbox_maps", "static:inbox/".to_string()),
        ("virtual_uid_maps", format!("static:{MAILBOX_ID}")),
        ("virtual_gid_maps", format!("static:{MAILBOX_ID}")),
        (
            "smtpd_recipient_restrictions",
            "reject_unauth_destination".to_string(),
        ),
        ("in_flow_delay", "0".to_string()),
        (
            "smtpd_client_event_limit_exceptions",
            "0.0.0.0/0".to_string(),
        ),
    ];
    config
        .postfix
        .main_cf
        .extend(settings.into_iter().map(|(k, v)| (k.to_string(), v)));
    config
        .postfix
        .master_cf
        .push("virtual   unix  -       n       n       -       -       virtual".to_string());
}

fn queue_is_empty(lab: &Lab) -> bool {
    run(std::process::Command::new("postqueue")
        .arg("-c")
        .arg(&lab.postfix().conf_dir)
        .arg("-p"))
    .is_ok_and(|out| out.contains("Mail queue is empty"))
}

/// Checks a delivered message against its scenario; returns its SPF
/// result.
fn check_delivered(
    id: usize,
    message: &Message,
    queue_id: Option<&String>,
) -> Result<String, String> {
    let Expect::Delivered {
        spf,
        identity,
        dmarc,
        dkim,
        rescued: _,
    } = scenario(id).expect
    else {
        return Err("delivered, but it should have been rejected".into());
    };
    let received_spf = message.all("Received-SPF");
    if received_spf.len() != 1 {
        return Err(format!(
            "{} Received-SPF fields:\n{}",
            received_spf.len(),
            message.header_text()
        ));
    }
    let header = spf_header(message, TraceHeader::ReceivedSpf).ok_or("no Received-SPF")?;
    if header.result != spf || header.identity != identity {
        return Err(format!(
            "Received-SPF {} for {identity}: {}",
            spf, header.value
        ));
    }
    // Postfix's own Received: names the queue ID the client was given.
    let received = message
        .position("Received")
        .ok_or("no Received: from Postfix")?;
    if header.position > received {
        return Err("Received-SPF below Postfix's Received:".into());
    }
    if let Some(queue_id) = queue_id {
        let ours = message.all("Received")[0];
        if !ours.contains(&format!("id {queue_id}")) {
            return Err(format!("Received: without id {queue_id}: {ours}"));
        }
    }
    if message.header_text().contains("(forged)") {
        return Err(format!(
            "a forged header survived:\n{}",
            message.header_text()
        ));
    }
    if message
        .auth_results(MYHOSTNAME, "spf")
        .iter()
        .any(|r| r.contains("spf=pass"))
    {
        return Err(format!(
            "a forged spf=pass under {MYHOSTNAME} survived:\n{}",
            message.header_text()
        ));
    }
    if let Some(dkim) = dkim {
        let got = dkim_result(message);
        if got.as_deref() != Some(dkim) {
            return Err(format!(
                "dkim={got:?}, expected {dkim}:\n{}",
                message.header_text()
            ));
        }
    }
    if let Some(dmarc) = dmarc {
        let got = message.auth_result(MYHOSTNAME, "dmarc");
        if got.as_deref() != Some(dmarc) {
            return Err(format!(
                "dmarc={got:?}, expected {dmarc}:\n{}",
                message.header_text()
            ));
        }
    }
    Ok(header.result)
}

/// A sending thread: takes up to [`PER_SESSION`] pending messages of one
/// client and HELO, sends them in one SMTP session, records what
/// happened, puts deferred ones back.
fn worker(
    port: u16,
    messages: usize,
    texts: &[String],
    ledger: &Mutex<Ledger>,
    finished: &AtomicUsize,
) {
    loop {
        if finished.load(Ordering::Relaxed) >= messages {
            return;
        }
        let batch = {
            let mut l = ledger.lock().expect("ledger");
            take_batch(&mut l.pending)
        };
        if batch.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let outcomes = send_session(port, texts, &batch);
        let mut l = ledger.lock().expect("ledger");
        l.sessions += 1;
        for (id, outcome) in batch.into_iter().zip(outcomes) {
            let retry = matches!(outcome, Outcome::Deferred { .. } | Outcome::Broken { .. });
            let attempts = l.attempts.entry(id).or_default();
            attempts.push((Instant::now(), outcome));
            if retry && attempts.len() < MAX_ATTEMPTS {
                let later = Instant::now() + Duration::from_millis(100);
                l.pending.push_back((id, later));
            } else {
                finished.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The first message due, and those after it of the same client and
/// HELO, up to a session's worth (a session of 1–3 by its ID).
fn take_batch(pending: &mut VecDeque<(usize, Instant)>) -> Vec<usize> {
    let now = Instant::now();
    let Some(first) = pending.iter().position(|(_, due)| *due <= now) else {
        return Vec::new();
    };
    let (id, _) = pending.remove(first).expect("due message");
    let key = |id: usize| {
        let s = scenario(id);
        (s.client_ip, s.helo)
    };
    let size = 1 + id % PER_SESSION;
    let mut batch = vec![id];
    while batch.len() < size
        && let Some(&(next, due)) = pending.get(first)
        && due <= now
        && key(next) == key(id)
    {
        pending.remove(first);
        batch.push(next);
    }
    batch
}

/// One SMTP session sending `ids`, whose texts are in `texts`; one outcome
/// per message.
fn send_session(port: u16, texts: &[String], ids: &[usize]) -> Vec<Outcome> {
    let first = scenario(ids[0]);
    let mut outcomes = Vec::with_capacity(ids.len());
    let mut smtp = match Smtp::open(port, first.client_ip, first.helo) {
        Ok(smtp) => smtp,
        Err((stage, e)) => {
            return ids.iter().map(|_| e.clone().into_outcome(stage)).collect();
        }
    };
    for &id in ids {
        let outcome = smtp.transaction(id, &scenario(id), &texts[id]);
        let lost = matches!(outcome, Outcome::Broken { .. } | Outcome::Unknown { .. });
        outcomes.push(outcome);
        if lost {
            break;
        }
    }
    // Messages not tried in a lost session: sent again.
    while outcomes.len() < ids.len() {
        outcomes.push(Outcome::Broken {
            stage: "session",
            error: "an earlier message of the session lost the connection".into(),
        });
    }
    smtp.quit();
    outcomes
}

/// A failed SMTP step: an unexpected reply, or an I/O error.
#[derive(Debug, Clone)]
pub enum StepError {
    Reply(Reply),
    Io(String),
}

impl StepError {
    fn into_outcome(self, stage: &'static str) -> Outcome {
        match self {
            StepError::Reply(reply) if (400..500).contains(&reply.code) => {
                Outcome::Deferred { stage, reply }
            }
            StepError::Reply(reply) if reply.code >= 500 => Outcome::Rejected { stage, reply },
            StepError::Reply(reply) => Outcome::Broken {
                stage,
                error: format!("unexpected reply {reply}"),
            },
            StepError::Io(error) => Outcome::Broken { stage, error },
        }
    }
}

/// A minimal SMTP client (RFC 5321) with Postfix's XCLIENT.
pub struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    /// Connects, greets, sets the client with XCLIENT and says EHLO as it.
    pub fn open(port: u16, client_ip: &str, helo: &str) -> Result<Self, (&'static str, StepError)> {
        let stream =
            TcpStream::connect(("127.0.0.1", port)).map_err(|e| ("connect", io_error(&e)))?;
        let timeout = Some(Duration::from_secs(60));
        let _ = stream.set_read_timeout(timeout);
        let _ = stream.set_write_timeout(timeout);
        let writer = stream.try_clone().map_err(|e| ("connect", io_error(&e)))?;
        let mut smtp = Self {
            reader: BufReader::new(stream),
            writer,
        };
        smtp.expect(220).map_err(|e| ("greeting", e))?;
        smtp.command("EHLO soak.client.example", 250)
            .map_err(|e| ("EHLO", e))?;
        // Postfix restarts the session after XCLIENT (a new greeting);
        // the milters see a new connection from ADDR named NAME.
        smtp.command(
            &format!("XCLIENT ADDR={client_ip} NAME={helo} HELO={helo}"),
            220,
        )
        .map_err(|e| ("XCLIENT", e))?;
        smtp.command(&format!("EHLO {helo}"), 250)
            .map_err(|e| ("EHLO", e))?;
        Ok(smtp)
    }

    /// MAIL, RCPT, DATA and the message `text` (ending with its
    /// end-of-data line); RSET after a failed step.
    fn transaction(&mut self, id: usize, s: &Scenario, text: &str) -> Outcome {
        let steps = [
            (MAIL_FROM, format!("MAIL FROM:<{}>", s.from), 250),
            ("RCPT TO", format!("RCPT TO:<user{id}@{RCPT_DOMAIN}>"), 250),
            ("DATA", "DATA".to_string(), 354),
        ];
        for (stage, line, code) in steps {
            if let Err(e) = self.command(&line, code) {
                let outcome = e.into_outcome(stage);
                if !matches!(outcome, Outcome::Broken { .. }) {
                    let _ = self.command("RSET", 250);
                }
                return outcome;
            }
        }
        if let Err(e) = self.send(text) {
            return Outcome::Unknown {
                error: format!("sending the message: {e}"),
            };
        }
        match self.reply() {
            Ok(reply) if reply.code == 250 => match reply.lines[0].split("queued as ").nth(1) {
                Some(queue_id) => Outcome::Accepted {
                    queue_id: queue_id.trim().to_string(),
                },
                None => Outcome::Unknown {
                    error: format!("250 without a queue ID: {reply}"),
                },
            },
            Ok(reply) => StepError::Reply(reply).into_outcome(END_OF_DATA),
            Err(e) => Outcome::Unknown {
                error: format!("reading the reply to the end of data: {e}"),
            },
        }
    }

    pub fn quit(mut self) {
        let _ = self.command("QUIT", 221);
    }

    fn command(&mut self, line: &str, code: u16) -> Result<Reply, StepError> {
        self.send(&format!("{line}\r\n"))
            .map_err(|e| io_error(&e))?;
        self.expect(code)
    }

    fn expect(&mut self, code: u16) -> Result<Reply, StepError> {
        let reply = self.reply().map_err(|e| io_error(&e))?;
        if reply.code == code {
            Ok(reply)
        } else {
            Err(StepError::Reply(reply))
        }
    }

    fn send(&mut self, text: &str) -> io::Result<()> {
        self.writer.write_all(text.as_bytes())
    }

    /// One reply, all its lines (`250-...` continues, `250 ...` ends).
    fn reply(&mut self) -> io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by Postfix",
                ));
            }
            let line = line.trim_end().to_string();
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                break;
            }
        }
        let first = &lines[0];
        let code = first.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("reply {first:?}"))
        })?;
        let enhanced = first
            .get(4..)
            .and_then(|rest| rest.split_whitespace().next())
            .filter(|w| w.split('.').count() == 3 && w.split('.').all(|p| p.parse::<u16>().is_ok()))
            .map(str::to_string);
        Ok(Reply {
            code,
            enhanced,
            lines,
        })
    }
}

fn io_error(e: &io::Error) -> StepError {
    StepError::Io(e.to_string())
}

/// The key that signs message `id`: the RSA key (`keys[0]`) in one cycle
/// of [`RSA_EVERY`], spread over the run, else the Ed25519 key. An RSA
/// signature costs ~0.1 s of CPU unoptimized, an Ed25519 one under 1 ms;
/// both algorithms go through OpenDKIM and spfmilter either way.
fn signing_key(id: usize, keys: &[TestKey]) -> &TestKey {
    if (id / CYCLE).is_multiple_of(RSA_EVERY) {
        &keys[0]
    } else {
        &keys[keys.len() - 1]
    }
}

/// The text of every message, made on every core: a message sent again
/// is the same message, as a client MTA's would be.
fn message_texts(messages: usize, keys: &[TestKey]) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut texts = vec![String::new(); messages];
    std::thread::scope(|s| {
        for (n, chunk) in texts.chunks_mut(messages.div_ceil(threads)).enumerate() {
            let first = n * messages.div_ceil(threads);
            s.spawn(move || {
                for (i, text) in chunk.iter_mut().enumerate() {
                    let id = first + i;
                    *text = message_text(id, &scenario(id), keys);
                }
            });
        }
    });
    texts
}

/// The message text after DATA, with its end-of-data line. `From:` is the
/// envelope sender (aligned for DMARC), or the HELO's postmaster for the
/// null sender. A signed message carries a DKIM-Signature of
/// [`signing_key`] over its From, To, Subject, Date and Message-ID (which
/// name the message, so every signature differs) and its body; a broken one had its body changed
/// after signing, as a forger replaying a signature would.
fn message_text(id: usize, s: &Scenario, keys: &[TestKey]) -> String {
    let from = if s.from.is_empty() {
        format!("postmaster@{}", s.helo)
    } else {
        s.from.clone()
    };
    let mut text = String::new();
    if s.forged {
        let forged_spf = format!(
            "Received-SPF: Pass (forged) identity=mailfrom; client-ip={}; helo={}; \
             envelope-from=\"{}\"; receiver=x\r\n",
            s.client_ip, s.helo, s.from
        );
        let domain = s.from.rsplit('@').next().unwrap_or_default();
        let forged_ar =
            format!("Authentication-Results: {MYHOSTNAME}; spf=pass smtp.mailfrom={domain}\r\n");
        text.push_str(&forged_spf);
        text.push_str(&forged_ar);
    }
    // A Date of its own: the signature covers Date, present or not
    // (mail-auth signs the names of SIGNED_HEADERS), and Postfix adds a
    // missing one, which would break it.
    let body = format!("Soak message {id}.\r\n");
    text.push_str(&format!(
        "From: <{from}>\r\nTo: <user{id}@{RCPT_DOMAIN}>\r\nSubject: soak message {id}\r\n\
         Date: Wed, 02 Dec 2026 06:00:00 +0000\r\n\
         Message-ID: <soak-{id}@soak.client.example>\r\nX-Soak-Id: {id}\r\n\r\n{body}"
    ));
    let mut text = match s.signature {
        Signature::None => text,
        Signature::Valid | Signature::Broken => {
            let key = signing_key(id, keys);
            let signed = String::from_utf8(key.sign(text.as_bytes())).expect("an ASCII message");
            if s.signature == Signature::Broken {
                let changed = signed.replace(&body, &format!("Soak message {id}, changed.\r\n"));
                assert_ne!(changed, signed, "message {id}: the body to change");
                changed
            } else {
                signed
            }
        }
    };
    text.push_str(".\r\n");
    text
}
