//! Helpers shared by the integration tests. Each test crate uses only some
//! of them.
#![allow(dead_code)]

pub mod dkim;
pub mod dns_server;
pub mod lenient;
pub mod milter;
pub mod suite;
