//! The commands for an enrolled host: `status`, `token inspect`, `agent`, `renew`, `leave`.

use crate::cli::{CommonArgs, Output, TokenArgs};
use crate::exit::{Exit, Failure, Result};
use crate::install::{self, now, read_state, write_state, Key};
use crate::layout::{self, File};
use crate::net::{Client, ClientIdentity};
use crate::owner::Owners;
use crate::state::{Stage, State};
use muster_protocol::fs::write_atomic;
use muster_protocol::node::*;
use muster_protocol::paths;
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

/// Owners as the files on disk have them (keys belong to the service user).
fn owners_on_disk(root: &Path) -> Result<Owners> {
    use std::os::unix::fs::MetadataExt;
    let key = std::fs::metadata(File::NodeKey.path(root)).map_err(|e| {
        Failure::new(
            Exit::NotEnrolled,
            format!("reading {}: {e}", File::NodeKey.path(root).display()),
        )
    })?;
    let st = std::fs::metadata(File::State.path(root))
        .map_err(|e| Failure::new(Exit::NotEnrolled, e.to_string()))?;
    Ok(Owners {
        root_uid: st.uid(),
        root_gid: st.gid(),
        uid: key.uid(),
        gid: key.gid(),
    })
}

fn cert_not_after(path: &Path) -> Option<i64> {
    let pem = std::fs::read(path).ok()?;
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let c = p.parse_x509().ok()?;
    Some(c.validity().not_after.timestamp())
}

pub fn status(a: &CommonArgs) -> Result<serde_json::Value> {
    let st = enrolled(&a.root)?;
    let expiry = cert_not_after(&File::NodeCert.path(&a.root));
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
                (e - now() as i64) / 86400
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
                .map(|e| format!("{e} (unix), in {}s", e as i64 - now() as i64))
                .unwrap_or_else(|| "never".into())
        );
        eprintln!("coordinators:  {}", c.coordinators.join(", "));
        eprintln!("CA pins:       {}", c.pins.join(", "));
        eprintln!("status:        {status}");
    }
    Ok(v)
}

fn client(root: &Path, st: &State, timeout: std::time::Duration) -> Result<Client> {
    let ca = std::fs::read(File::HttpCa.path(root))
        .map_err(|e| Failure::new(Exit::NotEnrolled, format!("reading the CA: {e}")))?;
    let pin = muster_protocol::cert::pem_to_der(&ca)
        .and_then(|der| muster_protocol::cert::spki_pin_of_cert(&der))
        .ok_or_else(|| Failure::new(Exit::Other, "the saved HTTP CA is not a PEM certificate"))?;
    let id = ClientIdentity {
        cert_pem: std::fs::read_to_string(File::NodeCert.path(root))
            .map_err(|e| Failure::new(Exit::NotEnrolled, e.to_string()))?,
        key_pem: zeroize::Zeroizing::new(
            std::fs::read_to_string(File::NodeKey.path(root))
                .map_err(|e| Failure::new(Exit::NotEnrolled, e.to_string()))?,
        ),
    };
    Client::new(st.coordinators.clone(), vec![pin], Some(&id), timeout)
}

pub async fn renew(a: &CommonArgs) -> Result<serde_json::Value> {
    let st = enrolled(&a.root)?;
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
    // New keys first, then the certificates for them; a crash between leaves a key whose
    // certificate is the next renewal's to fetch, and the agent retries.
    write_atomic(
        &File::NodeKey.path(&a.root),
        t.pem().as_bytes(),
        File::NodeKey.perms(&o),
    )?;
    write_atomic(
        &File::HttpKey.path(&a.root),
        h.pem().as_bytes(),
        File::HttpKey.perms(&o),
    )?;
    let certs = install::Certs {
        transport_ca_pem: &r.transport_ca_pem,
        http_ca_pem: &r.http_ca_pem,
        transport_cert_pem: &r.transport_cert_pem,
        http_cert_pem: &r.http_cert_pem,
    };
    install::write_certs(&a.root, &o, &certs, &t)?;
    let mut st = st;
    st.cert_not_after = Some(r.cert_not_after);
    write_state(&a.root, &o, &st)?;
    crate::hooks::run(
        &layout::hook_dir(&a.root, "post-renew"),
        &install::hook_env(&a.root, &st),
    )?;
    if a.output == Output::Text {
        eprintln!(
            "renewed: certificates valid until {} (unix)",
            r.cert_not_after
        );
    }
    Ok(serde_json::json!({"result": "renewed", "cert_not_after": r.cert_not_after}))
}

pub async fn agent(a: &CommonArgs, interval: u64, count: u64) -> Result<serde_json::Value> {
    let mut sent = 0u64;
    loop {
        let st = enrolled(&a.root)?;
        let mut c = client(&a.root, &st, a.timeout)?;
        let reply: HeartbeatReply = c.post(paths::HEARTBEAT, &Heartbeat::default()).await?;
        let o = owners_on_disk(&a.root)?;
        let mut st2 = st.clone();
        st2.last_heartbeat = Some(reply.server_time);
        st2.roles = reply.roles.clone();
        st2.pending_roles = reply.pending_roles.clone();
        if !reply.coordinators.is_empty() {
            st2.coordinators = reply.coordinators.clone();
        }
        if st2 != st {
            write_state(&a.root, &o, &st2)?;
        }
        sent += 1;
        // Renew when less than a third of the certificate's life is left.
        if let (Some(exp), Some(start)) = (st2.cert_not_after, st2.committed_at) {
            let life = exp.saturating_sub(start);
            if exp.saturating_sub(now()) < life / 3 {
                if let Err(e) = renew(a).await {
                    eprintln!("muster agent: renewal failed, will retry: {e}");
                }
            }
        }
        if count != 0 && sent >= count {
            return Ok(serde_json::json!({"result": "ok", "heartbeats": sent}));
        }
        tokio::time::sleep(std::time::Duration::from_secs(interval)).await;
    }
}

pub async fn leave(a: &CommonArgs) -> Result<serde_json::Value> {
    let st = enrolled(&a.root)?;
    let mut c = client(&a.root, &st, a.timeout)?;
    let _: serde_json::Value = c.post(paths::LEAVE, &serde_json::json!({})).await?;
    let mut removed = Vec::new();
    for f in File::ALL.iter().rev() {
        if muster_protocol::fs::remove(&f.path(&a.root))? {
            removed.push(f.path(&a.root).display().to_string());
        }
    }
    if a.output == Output::Text {
        eprintln!("left the platform; removed {} files", removed.len());
    }
    Ok(serde_json::json!({"result": "left", "node_id": st.node_id, "removed": removed}))
}
