//! Policy: what to do with SPF results (policyd-spf semantics): the
//! decision ([`decide`]) and the header formatting ([`headers`]).

pub mod decide;
pub mod headers;
pub mod skip;
