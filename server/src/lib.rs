//! `musterd`, the Muster enrollment server, as a library: the binary in `main.rs` only parses
//! the command line and calls into these modules.

#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod director;
pub mod error;
pub mod http;
pub mod limit;
pub mod logging;
pub mod metrics;
pub mod pki;
pub mod platform;
pub mod query;
pub mod seal;
pub mod serve;
pub mod service;
pub mod store;
pub mod tls;
