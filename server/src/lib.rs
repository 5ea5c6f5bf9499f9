//! `musterd`, the Muster enrollment server, as a library: the binary in `main.rs` only parses
//! the command line and calls into these modules.

#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod error;
pub mod pki;
pub mod platform;
pub mod quickstart;
pub mod serve;
pub mod store;

/// The one-liner script served at `GET /install.sh`.
pub const INSTALL_SH: &str = include_str!("../../hooks/install.sh");
