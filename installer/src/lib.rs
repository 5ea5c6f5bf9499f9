//! `muster`, the Muster installer, as a library: `main.rs` only parses, re-execs to move a
//! token out of its argument list, and maps results to exit codes.

#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod cli;
pub mod common;
pub mod enrolled;
pub mod exit;
pub mod facts;
pub mod hooks;
pub mod host;
pub mod inspect;
pub mod install;
pub mod layout;
pub mod leave;
pub mod net;
pub mod output;
pub mod owner;
pub mod progress;
pub mod purge;
pub mod recover;
pub mod renew;
pub mod renewal;
pub mod replace;
pub mod state;
pub mod status;
pub mod systemd;
