//! spfmilter: SPF (RFC 7208) checks for Postfix, with policyd-spf semantics.
//!
//! The layers, each usable alone (docs/design.md):
//! [`spf`] evaluates SPF and knows only [`dns::Lookup`]; [`dns`] answers the
//! five DNS questions SPF asks.

#![forbid(unsafe_code)]

pub mod config;
pub mod dns;
pub mod log;
pub mod metrics;
pub mod milter;
pub mod policy;
pub mod rescue;
pub mod session;
pub mod spf;
