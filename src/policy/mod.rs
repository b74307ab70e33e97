//! Policy: what to do with SPF results (policyd-spf semantics). One
//! [`envelope::Envelope`] per message feeds the bypass chain ([`skip`]),
//! the decision ([`decide`]), the block rules ([`block`]) and the header
//! formatting ([`headers`]); the text of the replies is [`reply`]'s.

pub mod block;
pub mod decide;
pub mod envelope;
pub mod headers;
pub mod reply;
pub mod skip;
