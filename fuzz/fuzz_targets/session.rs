//! Fuzzes the milter-agnostic session (`spfmilter::session::Session`)
//! directly: no socket, no milter library, DNS from an in-memory zone, so
//! each input is a whole SMTP connection in microseconds. The protocol
//! level (framing, negotiation, the daemon) is `milter_session`'s.
//!
//! Input: the first byte picks one of five configurations (the last two
//! hold SPF rejects for the rescue, one in test mode); the rest is a
//! sequence of stages `[stage][length: 1 octet][data]`: a stage byte from
//! 0xf0 up is a body chunk, others (modulo 7) HELO, MAIL FROM, RCPT TO, a
//! header (`name` NUL `value`), end of message, abort, or an internal
//! error. A client address is picked from the second byte. The rescuer is
//! a stand-in whose verdict follows the length of the message it gets
//! (rescued, not rescued, temporary failure), so that every branch of end
//! of message is reached; the real one is fuzzed through
//! `milter_session`.
//!
//! Besides "no panic", it checks at every end of message that:
//! - deletions name only `Received-SPF` / `Authentication-Results`, with an
//!   index between 1 and the count of that name seen (as the MTA counts:
//!   case and white space before the colon ignored), each at most once,
//!   the indexes of a name in falling order;
//! - after the deletions (applied as Postfix applies them), no
//!   `Received-SPF` is left and no `Authentication-Results` that OpenDMARC's
//!   reader or any lenient reading takes for our authserv-id;
//! - prepended headers are ours (`Received-SPF`, `Authentication-Results`,
//!   `X-Comment`), well-formed header bodies (no CR, LF only before a TAB,
//!   lines of at most 998 octets: RFC 5322 §2.1.1), and a Received-SPF,
//!   read as OpenDMARC reads it, has exactly one `identity` and no value
//!   holding a separator;
//! - an answer at MAIL FROM is a reject or tempfail with a 4xx/5xx code and
//!   one line of text; so is one at end of message, which then has no
//!   header edit;
//! - the bytes held are all given back once the session is gone.

#![no_main]

#[allow(dead_code)]
#[path = "../../tests/common/lenient.rs"]
mod lenient;

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use spfmilter::config::{Config, Datasets, LogTarget};
use spfmilter::dns::Zone;
use spfmilter::log::Logger;
use spfmilter::metrics::Metrics;
use spfmilter::policy::headers::could_claim_authserv_id;
use spfmilter::rescue::Verdict;
use spfmilter::session::{EndOfMessage, HeaderEdit, Session, Shared, Stage, StageReply};
use spfmilter::spf::Evaluator;

const ID: &str = "fuzz.example";

const CONFIGS: [&str; 5] = [
    "[milter]\nauthserv_id = \"fuzz.example\"\nheader_type = \"SPF,AR\"\n",
    "[milter]\nauthserv_id = \"fuzz.example\"\nheader_type = \"AR\"\n[policy]\nhelo_reject = \"SPF_Not_Pass\"\nmail_from_reject = \"False\"\npermerror_reject = true\ntemperror_defer = true\n",
    "[milter]\nauthserv_id = \"fuzz.example\"\n[policy]\ntest_mode = true\nno_mail = true\nreject_not_pass_domains = [\"pass.test\"]\n[skip]\nwhitelist = [\"192.0.2.128/25\"]\nhelo_whitelist = [\"relay.test\"]\n",
    "[milter]\nauthserv_id = \"fuzz.example\"\nheader_type = \"SPF,AR\"\n[policy]\nhelo_reject = \"SPF_Not_Pass\"\npermerror_reject = true\ntemperror_defer = true\n[rescue]\nmethods = [\"dkim\", \"arc\"]\ntrusted_arc_sealers = [\"lists.test\"]\nmax_message_size = \"64K\"\nmax_held_bytes = \"128K\"\n",
    "[milter]\nauthserv_id = \"fuzz.example\"\n[policy]\ntest_mode = true\n[rescue]\nmethods = [\"dkim\"]\nmax_message_size = \"64K\"\nmax_held_bytes = \"64K\"\n",
];

const CLIENTS: [&str; 4] = ["192.0.2.1", "198.51.100.7", "2001:db8::1", "127.0.0.2"];

fn zone() -> Zone {
    Zone::new()
        .with_txt(
            "pass.test",
            "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all",
        )
        .with_txt("fail.test", "v=spf1 -all exp=why.fail.test")
        .with_txt("why.fail.test", "%{i} (%{s}; %{h}) \"is\" not=allowed\\")
        .with_txt("softfail.test", "v=spf1 ~all")
        .with_txt("neutral.test", "v=spf1 ?all")
        .with_txt("permerror.test", "v=spf1 ip4:300.1.1.1 -all")
        .with_txt(
            "inject.test",
            "v=spf1 exists:%{l}.x;identity=mailfrom.test ip4:192.0.2.0/24 -all",
        )
        .with_txt(
            "include.test",
            "v=spf1 include:pass.test include:fail.test ~all",
        )
        .with_ip("relay.test", "192.0.2.200")
}

fn shared(config: usize) -> Arc<Shared<Zone>> {
    static SHARED: OnceLock<Vec<Arc<Shared<Zone>>>> = OnceLock::new();
    let all = SHARED.get_or_init(|| {
        CONFIGS
            .iter()
            .map(|text| {
                let loaded = Config::parse_toml(text, "fuzz.toml", Datasets::Refuse)
                    .expect("the fuzz configurations load");
                let mut config = (*loaded.config).clone();
                config.log.target = LogTarget::Stderr;
                config.log.level = spfmilter::config::LogLevel::Errors;
                let evaluator = Evaluator::new(zone()).with_limits(config.spf_limits());
                Arc::new(
                    Shared::with_evaluator(
                        Arc::new(config),
                        evaluator,
                        Logger::Memory(Default::default()),
                    )
                    .with_rescuer(Box::new(|_, _, message, _| {
                        let verdict = match message.len() % 3 {
                            0 => Verdict::Rescued("dkim d=fuzz.test aligned with From".into()),
                            1 => Verdict::NotRescued("no signature".into()),
                            _ => Verdict::Temporary("key lookup SERVFAIL".into()),
                        };
                        Box::pin(async move { verdict })
                    })),
                )
            })
            .collect()
    });
    Arc::clone(&all[config % all.len()])
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fn queued(name: &str) -> Option<String> {
    (name == "i").then(|| "FUZZ123".to_owned())
}

/// The headers of the current message, as the MTA keeps them.
#[derive(Default)]
struct Message {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Is `name` the trace header `label` as Postfix counts it (case, white
/// space before the colon ignored)?
fn is_named(name: &[u8], label: &str) -> bool {
    name.trim_ascii_end().eq_ignore_ascii_case(label.as_bytes())
}

fn check_answer(answer: &StageReply) {
    match answer {
        StageReply::Continue | StageReply::Accept | StageReply::Skip => {}
        StageReply::Reject(r) | StageReply::Tempfail(r) => {
            assert!((400..600).contains(&r.code), "reply code {}", r.code);
            assert!(
                !r.text.contains(['\r', '\n']),
                "reply text of more than one line: {:?}",
                r.text
            );
        }
    }
}

fn check_end_of_message(message: &Message, edits: &[HeaderEdit]) {
    let mut headers = message.headers.clone();
    let mut last_index: Vec<(&str, i32)> = Vec::new();
    for edit in edits {
        match edit {
            HeaderEdit::Delete { name, index } => {
                assert!(
                    *name == "Received-SPF" || *name == "Authentication-Results",
                    "deletes {name}"
                );
                let count = headers.iter().filter(|(n, _)| is_named(n, name)).count();
                assert!(
                    *index >= 1 && usize::try_from(*index).is_ok_and(|i| i <= count),
                    "deletes {name} #{index} of {count}"
                );
                if let Some((_, last)) = last_index.iter_mut().find(|(n, _)| n == name) {
                    assert!(*index < *last, "{name} #{index} after #{last}");
                    *last = *index;
                } else {
                    last_index.push((name, *index));
                }
                // As Postfix applies it: the index-th of that name goes.
                let position = headers
                    .iter()
                    .enumerate()
                    .filter(|(_, (n, _))| is_named(n, name))
                    .nth(usize::try_from(*index - 1).unwrap_or(usize::MAX))
                    .map(|(i, _)| i)
                    .expect("the header to delete exists");
                headers.remove(position);
            }
            HeaderEdit::Prepend { name, value } => {
                assert!(
                    matches!(
                        *name,
                        "Received-SPF" | "Authentication-Results" | "X-Comment"
                    ),
                    "prepends {name}"
                );
                assert!(!value.contains('\r'), "CR in {name}: {value:?}");
                for (i, line) in value.split('\n').enumerate() {
                    assert!(
                        i == 0 || line.starts_with('\t'),
                        "a line break that is no folding in {name}: {value:?}"
                    );
                    assert!(line.len() + name.len() + 2 <= 998, "a line over 998 octets");
                }
                if *name == "Received-SPF" {
                    let unfolded = value.replace("\n\t", " ");
                    let (_, pairs) = lenient::opendmarc_received_spf(&unfolded);
                    let identities = pairs.iter().filter(|(k, _)| k == "identity").count();
                    assert_eq!(identities, 1, "identity keys in {unfolded:?}");
                    for (key, v) in &pairs {
                        assert!(
                            !v.contains([';', '=', '"', '(', ')', '\\']),
                            "{key}={v:?} holds a separator in {unfolded:?}"
                        );
                    }
                }
            }
        }
    }
    for (name, value) in &headers {
        let text = String::from_utf8_lossy(value);
        assert!(
            !is_named(name, "Received-SPF"),
            "an incoming Received-SPF survives: {text:?}"
        );
        if is_named(name, "Authentication-Results") {
            assert!(
                !could_claim_authserv_id(&text, ID),
                "a lenient reading takes a surviving header for ours: {text:?}"
            );
            let read = lenient::opendmarc_authserv_id(&text).map(|id| id.to_ascii_lowercase());
            assert_ne!(
                read.as_deref(),
                Some(ID),
                "OpenDMARC takes a surviving header for ours: {text:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [config, client, rest @ ..] = data else {
        return;
    };
    let shared = shared(usize::from(*config));
    // Only the headers the milter keeps (the deleted ones) matter.
    let enabled = shared.config.milter.remove_forged_headers;
    let metrics = Arc::new(Metrics::new(Arc::new(Default::default)));
    let ip = CLIENTS[usize::from(*client) % CLIENTS.len()]
        .parse()
        .expect("an address");
    let budget = Arc::clone(shared.held_budget());
    let mut session = Session::connect(shared, metrics, Some(ip), Some("mta.example"));
    session.set_header_leading_space(*client & 0x80 != 0);
    let mut message = Message::default();
    let mut input = rest;
    runtime().block_on(async {
        while let [stage, len, tail @ ..] = input {
            let len = usize::from(*len).min(tail.len());
            let (arg, next) = tail.split_at(len);
            input = next;
            let text = String::from_utf8_lossy(arg);
            if *stage >= 0xf0 {
                let answer = session.body(arg);
                assert!(
                    matches!(answer, StageReply::Continue | StageReply::Skip),
                    "{answer:?} to a body chunk"
                );
                continue;
            }
            match stage % 7 {
                0 => session.helo(&text),
                1 => {
                    message = Message::default();
                    check_answer(&session.mail(&text, &|_| None).await);
                }
                2 => session.rcpt(&text),
                3 => {
                    let (name, value) = match arg.iter().position(|&b| b == 0) {
                        Some(i) => (&arg[..i], &arg[i + 1..]),
                        None => (arg, &b""[..]),
                    };
                    session.header(name, value);
                    message.headers.push((name.to_vec(), value.to_vec()));
                }
                4 => {
                    let EndOfMessage { reply, edits } = session.end_of_message(&queued).await;
                    check_answer(&reply);
                    assert!(
                        !matches!(reply, StageReply::Skip | StageReply::Accept),
                        "{reply:?} at end of message"
                    );
                    if reply != StageReply::Continue {
                        assert!(edits.is_empty(), "edits with {reply:?}");
                    } else if enabled {
                        check_end_of_message(&message, &edits);
                    }
                    message = Message::default();
                }
                5 => {
                    session.abort();
                    message = Message::default();
                }
                _ => {
                    check_answer(&session.internal_error(Stage::Mail, &queued, &text));
                    message = Message::default();
                }
            }
        }
    });
    drop(session);
    // Other inputs' sessions are gone too: one runs at a time.
    assert_eq!(budget.used(), 0, "held bytes not given back");
});
