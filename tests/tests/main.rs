//! Muster's integration tests: one binary, a module per area. Each test starts the real
//! `musterd` and `muster` (and, where its area needs them, a real etcd, `dpkg`, `rpm`,
//! cloud-init, curl, openssl, keytool and Elastic's Python client) through the testkit in
//! `tests/src/`.
//!
//! Run one area with `cargo test --test muster enroll::`, one test by its full name.

mod common;

mod admin;
mod admin_cli;
mod attack;
mod cloudinit;
mod console;
mod crash;
mod ece;
mod enroll;
mod force;
mod ha;
mod hooks;
mod hostile;
mod observe;
mod oneliner;
mod packages;
mod recovery;
mod refusals;
mod renewal;
mod server;
mod shape;
