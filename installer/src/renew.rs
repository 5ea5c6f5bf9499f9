//! `muster renew`: new keys and certificates for an enrolled host; `agent` renews through it.
//!
//! Depends on `enrolled`, `renewal`, `host`, `common`, `hooks`, `layout`, `cli` and `exit`.

use crate::cli::{CommonArgs, Output};
use crate::common::{client, hook_env, pin_of_pem};
use crate::enrolled::{check_not_expired, enrolled};
use crate::exit::{Exit, Failure, Result};
use crate::host::{check_certs, owners_on_disk, Key};
use crate::layout::{self, File};
use crate::renewal::{apply_renewal, finish_renewal, Renewal};
use muster_protocol::fs::write_atomic;
use muster_protocol::node::{RenewReply, RenewRequest};
use muster_protocol::paths;

pub async fn renew(a: &CommonArgs) -> Result<serde_json::Value> {
    enrolled(&a.root)?;
    let _lock = layout::lock(&a.root)?;
    renew_locked(a).await
}

/// New keys and certificates, under the host's lock.
pub(crate) async fn renew_locked(a: &CommonArgs) -> Result<serde_json::Value> {
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
