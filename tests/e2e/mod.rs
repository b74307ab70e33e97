//! The end-to-end harness: a private Postfix, OpenDMARC, NSD and the SPF
//! milter under test, in namespaces of their own (see `namespace.rs`),
//! driven by swaks with XCLIENT.
//!
//! | module | what |
//! |---|---|
//! | `namespace` | re-executes each test inside `unshare --net --mount --pid`; private resolv.conf and /dev/log |
//! | `process` | temporary directories, daemons stopped by PID, waiting |
//! | `syslog` | the `/dev/log` receiver (milters and OpenDMARC log to syslog) |
//! | `dns`, `zones` | NSD with zones written from Rust data, a query-logging forwarder that can time out |
//! | `postfix` | the Postfix instance (`postfix -c DIR`), maillog, `postcat` |
//! | `opendkim` | OpenDKIM (verify mode) after the SPF milter; test-time DKIM keys and signatures with dkimpy |
//! | `dkim` | `tests/common/dkim.rs`: DKIM signing in Rust with mail-auth (the soak signs a message per message) |
//! | `opendmarc` | OpenDMARC, the last milter |
//! | `milter` | the SPF milter under test (pyspf-milter today, `spfmilter run` later), its `policyd-spf.conf`, reading its header |
//! | `smtp` | swaks, transcripts, replies, stored messages |
//! | `lab` | all of it together |
//! | `forwarding` | forwarded, DKIM-signed mail through OpenDKIM, the SPF milter and OpenDMARC |
//! | `scenarios` | the checks, for any milter under test |
//! | `soak` | thousands of messages through Postfix, spfmilter restarted twice, every message accounted for |
//! | `differential` | the same mail through pyspf-milter and spfmilter: one table of expected outcomes and departures |

// Each test uses only some of the harness.
#![allow(dead_code)]

pub mod differential;
#[path = "../common/dkim.rs"]
pub mod dkim;
pub mod dns;
pub mod forwarding;
pub mod lab;
pub mod milter;
pub mod namespace;
pub mod opendkim;
pub mod opendmarc;
pub mod postfix;
pub mod process;
pub mod scenarios;
pub mod smtp;
pub mod soak;
pub mod syslog;
pub mod zones;
