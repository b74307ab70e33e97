//! Policy: what to do with SPF results (policyd-spf semantics). One
//! [`envelope::Envelope`] per message feeds the bypass chain ([`skip`]),
//! the decision ([`decide`]) and the header formatting ([`headers`]).

pub mod decide;
pub mod envelope;
pub mod headers;
pub mod skip;
