//! Policy: what to do with SPF results (policyd-spf semantics): the
//! decision ([`decide`]), the text of its replies ([`reply`]) and the
//! header formatting ([`headers`]).

pub mod decide;
pub mod headers;
pub mod reply;
pub mod skip;
