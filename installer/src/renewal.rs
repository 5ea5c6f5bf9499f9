//! A renewal the coordinator has answered, kept in `renewal.json` until its files are written,
//! and finished by whichever command comes next (`renew`, `agent`, `leave`, `install`).
//!
//! Depends on `host`, `common`, `hooks`, `net`, `layout`, `owner`, `state`, `exit` and
//! `muster-protocol`; never on a flow.

use crate::common::hook_env;
use crate::exit::{Exit, Failure, Result};
use crate::host::{owners_on_disk, write_certs, write_state, Certs, Key};
use crate::layout::{self, File};
use crate::net::ClientIdentity;
use crate::owner::Owners;
use crate::state::State;
use muster_protocol::fs::write_atomic;
use std::path::Path;

/// A renewal the coordinator has answered, kept in `var/lib/muster/renewal.json` (root, 0600)
/// until every file it brings is written. The coordinator keeps the pair a host renewed with
/// valid until the host's next renewal, so until this file is on disk the old files still work;
/// once it is, the next command finishes it ([`finish_renewal`]) before using them. A renewal
/// killed at any moment therefore leaves a host with a working key and certificate.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renewal {
    pub transport_key_pem: String,
    pub http_key_pem: String,
    pub transport_ca_pem: String,
    pub http_ca_pem: String,
    pub transport_cert_pem: String,
    pub http_cert_pem: String,
    pub cert_not_after: u64,
}

impl Drop for Renewal {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.transport_key_pem.zeroize();
        self.http_key_pem.zeroize();
    }
}

impl Renewal {
    pub fn certs(&self) -> Certs<'_> {
        Certs {
            transport_ca_pem: &self.transport_ca_pem,
            http_ca_pem: &self.http_ca_pem,
            transport_cert_pem: &self.transport_cert_pem,
            http_cert_pem: &self.http_cert_pem,
        }
    }
}

/// Writes out a renewal: keys, certificates, keystores, state; then drops `renewal.json`.
/// Every write is atomic and the whole is repeatable, so a run killed half-way is finished
/// by doing it again.
pub fn apply_renewal(root: &Path, o: &Owners, st: &State, r: &Renewal) -> Result<State> {
    let t = Key::from_pem(&r.transport_key_pem)?;
    write_atomic(
        &File::NodeKey.path(root),
        r.transport_key_pem.as_bytes(),
        File::NodeKey.perms(o),
    )?;
    muster_protocol::fs::failpoint("renew-half-written");
    write_atomic(
        &File::HttpKey.path(root),
        r.http_key_pem.as_bytes(),
        File::HttpKey.perms(o),
    )?;
    write_certs(root, o, &r.certs(), &t)?;
    let mut st = st.clone();
    st.cert_not_after = Some(r.cert_not_after);
    write_state(root, o, &st)?;
    muster_protocol::fs::remove(&File::Renewal.path(root))?;
    Ok(st)
}

/// Finishes a renewal an earlier run was killed in the middle of writing, if there is one.
/// Returns the state after it.
pub fn finish_renewal(root: &Path, st: State) -> Result<State> {
    let path = File::Renewal.path(root);
    let bytes = match layout::read_written(root, File::Renewal, &layout::own_owners())? {
        Some(b) => zeroize::Zeroizing::new(b),
        None => return Ok(st),
    };
    let r: Renewal = serde_json::from_slice(&bytes).map_err(|e| {
        Failure::new(
            Exit::Other,
            format!(
                "{} is damaged ({e}); remove it and run muster renew",
                path.display()
            ),
        )
    })?;
    eprintln!("muster: finishing a renewal that was interrupted");
    let st = apply_renewal(root, &owners_on_disk(root)?, &st, &r)?;
    crate::hooks::run(&layout::hook_dir(root, "post-renew"), &hook_env(root, &st))?;
    Ok(st)
}

/// The transport pair a renewal waiting in `renewal.json` brings: valid at the coordinator
/// whether or not its files could be written.
pub fn renewed_identity(root: &Path) -> Option<ClientIdentity> {
    let bytes = zeroize::Zeroizing::new(
        layout::read_written(root, File::Renewal, &layout::own_owners()).ok()??,
    );
    let r: Renewal = serde_json::from_slice(&bytes).ok()?;
    Some(ClientIdentity {
        cert_pem: r.transport_cert_pem.clone(),
        key_pem: zeroize::Zeroizing::new(r.transport_key_pem.clone()),
    })
}
