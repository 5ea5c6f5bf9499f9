//! The commands for an enrolled host: `status`, `token inspect`, `agent`, `renew`, `leave`.
//!
//! A flow, beside `install` and never using it: it uses the layers below (`host`, `renewal`,
//! `replace`, `common`, `hooks`, `layout`, `owner`, `state`, `cli`, `exit`).

use crate::cli::{CommonArgs, Output, TokenArgs};
use crate::common::{client, client_as, coordinator_list, hook_env, now, pin_of_pem};
use crate::exit::{Exit, Failure, Result};
use crate::host::{check_certs, owners_on_disk, read_state, write_node_yaml, write_state, Key};
use crate::layout::{self, File};
use crate::owner::Owners;
use crate::renewal::{apply_renewal, finish_renewal, renewed_identity, Renewal};
use crate::state::{Stage, State};
use muster_protocol::fs::write_atomic;
use muster_protocol::node::*;
use muster_protocol::paths;
use muster_protocol::ErrorCode;
use std::path::Path;

fn enrolled(root: &Path) -> Result<State> {
    match read_state(root)? {
        Some(s) if s.stage == Stage::Committed => Ok(s),
        _ => Err(Failure::new(
            Exit::NotEnrolled,
            format!(
                "this host is not enrolled (no committed {}); run muster install",
                File::State.path(root).display()
            ),
        )),
    }
}

/// A certificate file's validity: not before, not after (seconds since the epoch).
fn cert_validity(path: &Path) -> Option<(i64, i64)> {
    pem_validity(&std::fs::read(path).ok()?)
}

/// notBefore and notAfter (unix seconds) of a PEM certificate.
fn pem_validity(pem: &[u8]) -> Option<(i64, i64)> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let c = p.parse_x509().ok()?;
    Some((
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    ))
}

/// Refuses to go on with a node certificate that has run out: the coordinator would refuse it
/// in the handshake, which looks like a coordinator that does not answer, retried for ever.
/// (Five minutes of leeway for a clock a little ahead.)
fn check_not_expired(root: &Path) -> Result<()> {
    match cert_validity(&File::NodeCert.path(root)) {
        Some((_, not_after)) => refuse_if_ran_out(not_after, ""),
        None => Ok(()),
    }
}

/// [`check_not_expired`] for a certificate valid until `not_after`; `why` adds to the message.
fn refuse_if_ran_out(not_after: i64, why: &str) -> Result<()> {
    if now() as i64 <= not_after.saturating_add(300) {
        return Ok(());
    }
    let when = time::OffsetDateTime::from_unix_timestamp(not_after)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| not_after.to_string());
    Err(Failure::new(
        Exit::NotEnrolled,
        format!("this host's certificate ran out at {when}{why} (it was not renewed in time: was the agent stopped?); enroll it again: muster install --force with a roles token"),
    ))
}

/// Whether a certificate valid from `not_before` to `not_after` has less than a third of its
/// life left at `now`: the agent renews it then.
fn due_for_renewal(not_before: i64, not_after: i64, now: i64) -> bool {
    let life = not_after.saturating_sub(not_before);
    not_after.saturating_sub(now) < life / 3
}

pub fn status(a: &CommonArgs) -> Result<serde_json::Value> {
    let st = enrolled(&a.root)?;
    let expiry = cert_validity(&File::NodeCert.path(&a.root)).map(|(_, na)| na);
    let v = serde_json::json!({
        "enrolled": true,
        "node_id": st.node_id,
        "roles": st.roles,
        "pending_roles": st.pending_roles,
        "coordinators": st.coordinators,
        "certificate_not_after": expiry,
        "committed_at": st.committed_at,
        "last_heartbeat": st.last_heartbeat,
    });
    if a.output == Output::Text {
        eprintln!("enrolled: yes");
        eprintln!("node id: {}", st.node_id.as_deref().unwrap_or("-"));
        eprintln!(
            "roles: [{}]  pending: [{}]",
            muster_protocol::role::join(&st.roles),
            muster_protocol::role::join(&st.pending_roles)
        );
        eprintln!("coordinators: {}", st.coordinators.join(", "));
        if let Some(e) = expiry {
            eprintln!(
                "certificate expires: {e} (unix), in {} days",
                e.saturating_sub(now() as i64) / 86400
            );
        }
        eprintln!(
            "last heartbeat: {}",
            st.last_heartbeat
                .map(|h| format!("{}s ago", now().saturating_sub(h)))
                .unwrap_or_else(|| "never".into())
        );
    }
    Ok(v)
}

pub fn inspect(t: &TokenArgs, output: Output) -> Result<serde_json::Value> {
    let tok = crate::cli::read_token(t, None, None)?;
    let c = muster_protocol::token::inspect(&tok)
        .map_err(|e| Failure::new(Exit::TokenRefused, e.to_string()))?;
    let status = match muster_protocol::token::check_time(&c, now()) {
        Ok(()) => "valid (signature is checked by the coordinator)".to_string(),
        Err(e) => e.to_string(),
    };
    let v = serde_json::json!({
        "token_id": c.sub, "kind": c.kind, "roles": c.roles, "issuer": c.iss, "issued_at": c.iat,
        "not_before": c.nbf, "expires": c.exp, "persistent": c.persistent, "coordinators": c.coordinators,
        "ca_pins": c.pins, "max_uses": c.max_uses, "status": status,
    });
    if output == Output::Text {
        eprintln!("token id:      {}", c.sub);
        eprintln!("kind:          {}", c.kind.as_str());
        eprintln!("roles:         [{}]", muster_protocol::role::join(&c.roles));
        eprintln!(
            "expires:       {}",
            c.exp
                .map(|e| format!("{e} (unix), in {}s", i128::from(e) - i128::from(now())))
                .unwrap_or_else(|| "never".into())
        );
        eprintln!("coordinators:  {}", c.coordinators.join(", "));
        eprintln!("CA pins:       {}", c.pins.join(", "));
        eprintln!("status:        {status}");
    }
    Ok(v)
}

pub async fn renew(a: &CommonArgs) -> Result<serde_json::Value> {
    enrolled(&a.root)?;
    let _lock = layout::lock(&a.root)?;
    renew_locked(a).await
}

/// New keys and certificates, under the host's lock.
async fn renew_locked(a: &CommonArgs) -> Result<serde_json::Value> {
    let st = finish_renewal(&a.root, enrolled(&a.root)?)?;
    check_not_expired(&a.root)?;
    let o = owners_on_disk(&a.root)?;
    let mut c = client(&a.root, &st, a.timeout)?;
    // The coordinator certifies the names it has on record for this host, so the CSRs
    // carry none.
    let (t, h) = (Key::generate()?, Key::generate()?);
    let req = RenewRequest {
        transport_csr: t.csr_bare()?,
        http_csr: h.csr_bare()?,
    };
    let r: RenewReply = c.post(paths::RENEW, &req).await?;
    let renewal = Renewal {
        transport_key_pem: t.pem().to_string(),
        http_key_pem: h.pem().to_string(),
        transport_ca_pem: r.transport_ca_pem,
        http_ca_pem: r.http_ca_pem,
        transport_cert_pem: r.transport_cert_pem,
        http_cert_pem: r.http_cert_pem,
        cert_not_after: r.cert_not_after,
    };
    // Checked as an enrollment's bundle is: each certificate for its new key and signed by
    // its CA; and the CAs are the platform's, the ones this host already trusts (a CA
    // certificate may be renewed, its key may not change).
    check_certs(&renewal.certs(), &t, &h)?;
    for (f, pem) in [
        (File::TransportCa, &renewal.transport_ca_pem),
        (File::HttpCa, &renewal.http_ca_pem),
    ] {
        let saved = std::fs::read(f.path(&a.root)).ok();
        if saved.as_deref().and_then(pin_of_pem) != pin_of_pem(pem.as_bytes()) {
            return Err(Failure::new(
                Exit::Other,
                format!(
                    "the coordinator renewed with another CA than {}; nothing was changed",
                    f.path(&a.root).display()
                ),
            ));
        }
    }
    let json = zeroize::Zeroizing::new(
        serde_json::to_vec(&renewal).map_err(|e| Failure::new(Exit::Other, e.to_string()))?,
    );
    write_atomic(&File::Renewal.path(&a.root), &json, File::Renewal.perms(&o))?;
    muster_protocol::fs::failpoint("renew-saved");
    let st = apply_renewal(&a.root, &o, &st, &renewal)?;
    crate::hooks::run(
        &layout::hook_dir(&a.root, "post-renew"),
        &hook_env(&a.root, &st),
    )?;
    if a.output == Output::Text {
        eprintln!(
            "renewed: certificates valid until {} (unix)",
            r.cert_not_after
        );
    }
    Ok(serde_json::json!({"result": "renewed", "cert_not_after": r.cert_not_after}))
}

/// Brings `node.yaml` in line with the state when it is not: roles granted since, coordinators
/// changed. What else it says (zone, paths) stays; a `node.yaml` that does not read is left as
/// it is (named when `changed`, the state having just changed).
fn sync_node_yaml(root: &Path, o: &Owners, st: &State, changed: bool) -> Result<()> {
    let path = File::NodeYaml.path(root);
    let node: Option<crate::state::NodeConfig> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|y| serde_norway::from_str(&y).ok());
    let Some(mut node) = node else {
        if changed {
            eprintln!(
                "muster agent: {} does not read; its roles and coordinators are not updated",
                path.display()
            );
        }
        return Ok(());
    };
    if (&node.roles, &node.pending_roles, &node.coordinators)
        == (&st.roles, &st.pending_roles, &st.coordinators)
    {
        return Ok(());
    }
    node.roles = st.roles.clone();
    node.pending_roles = st.pending_roles.clone();
    node.coordinators = st.coordinators.clone();
    write_node_yaml(root, o, &node)
}

pub async fn agent(a: &CommonArgs, interval: u64, count: u64) -> Result<serde_json::Value> {
    let mut sent = 0u64;
    loop {
        enrolled(&a.root)?;
        let lock = layout::lock(&a.root)?;
        // A renewal whose files cannot be written (a full disk) leaves the files on disk
        // half old, half new: the host keeps heartbeating with the renewed pair, kept whole in
        // renewal.json, and each round tries the files again.
        let (st, identity) = match finish_renewal(&a.root, enrolled(&a.root)?) {
            Ok(st) => (st, None),
            Err(f) if f.exit == Exit::LocalWrite => match renewed_identity(&a.root) {
                Some(id) => {
                    eprintln!("muster agent: {}; heartbeating with the renewed certificate until its files are written", f.message);
                    (enrolled(&a.root)?, Some(id))
                }
                None => return Err(f),
            },
            Err(f) => return Err(f),
        };
        let pending = identity.is_some();
        match &identity {
            None => check_not_expired(&a.root)?,
            Some(id) => {
                if let Some((_, na)) = pem_validity(id.cert_pem.as_bytes()) {
                    refuse_if_ran_out(na, " (the renewed one, whose files could not be written)")?;
                }
            }
        }
        let mut c = client_as(&a.root, &st, a.timeout, identity)?;
        let reply: HeartbeatReply = c.post(paths::HEARTBEAT, &Heartbeat::default()).await?;
        let o = owners_on_disk(&a.root)?;
        let mut st2 = st.clone();
        st2.last_heartbeat = Some(reply.server_time);
        st2.roles = reply.roles.clone();
        st2.pending_roles = reply.pending_roles.clone();
        if !reply.coordinators.is_empty() {
            // The one that answered first: it is reachable from here, whatever it advertises.
            st2.coordinators = coordinator_list(c.current(), &reply.coordinators);
        }
        // node.yaml first, checked against the state each round: a run killed between the
        // two writes is caught up by the next. The heartbeat is sent either way: a host whose
        // disk is full stays connected, and says why its files lag.
        let recorded = sync_node_yaml(&a.root, &o, &st2, st2 != st).and_then(|()| {
            if st2 != st {
                write_state(&a.root, &o, &st2)
            } else {
                Ok(())
            }
        });
        if let Err(e) = recorded {
            eprintln!("muster agent: {}; tried again next round", e.message);
        }
        sent += 1;
        // Renew when less than a third of the certificate's life is left (its own life, from
        // the certificate: each renewal starts a new one).
        if let Some((nb, na)) = cert_validity(&File::NodeCert.path(&a.root)).filter(|_| !pending) {
            if due_for_renewal(nb, na, now() as i64) {
                if let Err(e) = renew_locked(a).await {
                    eprintln!("muster agent: renewal failed, will retry: {e}");
                }
            }
        }
        drop(lock);
        if count != 0 && sent >= count {
            return Ok(serde_json::json!({"result": "ok", "heartbeats": sent}));
        }
        tokio::time::sleep(std::time::Duration::from_secs(interval)).await;
    }
}

pub async fn leave(a: &CommonArgs) -> Result<serde_json::Value> {
    enrolled(&a.root)?;
    let lock = layout::lock(&a.root)?;
    // A renewal killed half-way is finished first: its new key is what the coordinator knows.
    let st = finish_renewal(&a.root, enrolled(&a.root)?)?;
    // A host the coordinator no longer takes (removed by an admin, replaced by a rebuild, its
    // certificate revoked) has nothing left to deregister: leaving removes its files all the
    // same. So does a host whose key is gone (a leave that deregistered it and stopped before
    // the state went): it has nothing left to sign in with.
    let known = match check_not_expired(&a.root).and_then(|()| client(&a.root, &st, a.timeout)) {
        Err(f) if !File::NodeKey.path(&a.root).exists() || f.exit == Exit::NotEnrolled => {
            eprintln!(
                "muster: this host cannot sign in any more ({}); removing its files",
                f.message
            );
            false
        }
        Err(f) => return Err(f),
        Ok(mut c) => match c
            .post::<_, serde_json::Value>(paths::LEAVE, &serde_json::json!({}))
            .await
        {
            Ok(_) => true,
            Err(f) if f.code.as_deref() == Some(ErrorCode::NodeUnknown.as_str()) => {
                eprintln!(
                    "muster: the coordinator no longer takes this host's certificate ({}); removing its files",
                    f.message
                );
                false
            }
            Err(f) => return Err(f),
        },
    };
    // Private keys first, the state last: a leave that fails or is killed part-way leaves no
    // key behind a removed state, and runs again (the coordinator then no longer knows the
    // host, and the files go all the same).
    let mut removed = Vec::new();
    let mut first_error = None;
    let paths = crate::replace::replacement_paths(&a.root)
        .into_iter()
        .chain(
            [File::Renewal]
                .iter()
                .chain(File::ALL.iter())
                .filter(|f| **f != File::State)
                .map(|f| f.path(&a.root)),
        );
    for path in paths {
        match muster_protocol::fs::remove(&path) {
            Ok(true) => removed.push(path.display().to_string()),
            Ok(false) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        let mut f = Failure::from(e);
        f.message.push_str(if known {
            "; the host is deregistered but its files are not all removed: fix that and run `muster leave` again"
        } else {
            "; not every file could be removed: fix that and run `muster leave` again"
        });
        return Err(f);
    }
    if muster_protocol::fs::remove(&File::State.path(&a.root))? {
        removed.push(File::State.path(&a.root).display().to_string());
    }
    // Last, the lock itself, so that nothing of the enrollment is left in var/lib/muster.
    muster_protocol::fs::remove(&layout::lock_path(&a.root))?;
    drop(lock);
    if a.output == Output::Text {
        eprintln!("left the platform; removed {} files", removed.len());
    }
    Ok(serde_json::json!({
        "result": if known { "left" } else { "removed_locally" },
        "node_id": st.node_id,
        "removed": removed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_due_with_a_third_of_each_certificate_life_left() {
        let day = 86_400;
        // A 90-day certificate: due from day 60 on, not before.
        assert!(!due_for_renewal(0, 90 * day, 59 * day));
        assert!(due_for_renewal(0, 90 * day, 61 * day));
        // After a renewal on day 61 the new certificate's own life counts, not the time since
        // the enrollment: not due again until 60 days into it.
        assert!(!due_for_renewal(61 * day, 151 * day, 62 * day));
        assert!(!due_for_renewal(61 * day, 151 * day, 120 * day));
        assert!(due_for_renewal(61 * day, 151 * day, 122 * day));
        // Expired: due.
        assert!(due_for_renewal(0, day, 2 * day));
    }
}
