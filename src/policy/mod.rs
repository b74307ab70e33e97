//! Policy: what to do with SPF results (policyd-spf semantics). So far only
//! the header formatting; the decision lands with the milter.

pub mod headers;
