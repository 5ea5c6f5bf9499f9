//! `muster status`: whether this host is enrolled, its roles, coordinators and certificate.
//!
//! Depends on `enrolled`, `common`, `layout`, `cli` and `exit`.

use crate::cli::{CommonArgs, Output};
use crate::common::now;
use crate::enrolled::{cert_validity, enrolled};
use crate::exit::Result;
use crate::layout::File;

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
