//! SPF evaluation (RFC 7208): record parsing, macros, check_host().
//!
//! Knows nothing about milters or policy; its only window on the world is
//! [`crate::dns::Lookup`].

pub mod eval;
pub mod flatten;
pub mod identity;
pub mod macros;
pub mod outcome;
pub mod ptr;
pub mod record;

pub use eval::{DEFAULT_EXPLANATION, Evaluator, Limits, Request, TraceStep};
pub use outcome::{Identity, SpfOutcome, SpfResult};
pub use record::{Directive, Mechanism, Qualifier, Record};
