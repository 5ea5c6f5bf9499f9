//! `muster`, the Muster installer, as a library: `main.rs` only parses, re-execs to move a
//! token out of its argument list, and maps results to exit codes.

#![forbid(unsafe_code)]

pub mod cli;
pub mod common;
pub mod exit;
pub mod facts;
pub mod hooks;
pub mod host;
pub mod install;
pub mod layout;
pub mod net;
pub mod node;
pub mod owner;
pub mod progress;
pub mod recover;
pub mod renewal;
pub mod replace;
pub mod state;
pub mod systemd;
