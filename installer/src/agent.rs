//! `muster agent`: heartbeats, keeps the state and `node.yaml` in line with the coordinator's
//! answers, and renews the certificate (through `renew`) when it falls due.
//!
//! Depends on `renew`, `enrolled`, `renewal`, `host`, `common`, `layout`, `owner`, `state`,
//! `cli` and `exit`.

use crate::cli::CommonArgs;
use crate::common::{client_as, coordinator_list, now};
use crate::enrolled::{
    cert_validity, check_not_expired, enrolled, pem_validity, refuse_if_ran_out,
};
use crate::exit::{Exit, Result};
use crate::host::{owners_on_disk, write_node_yaml, write_state};
use crate::layout::{self, File};
use crate::owner::Owners;
use crate::renew::renew_locked;
use crate::renewal::{finish_renewal, renewed_identity};
use crate::state::State;
use muster_protocol::node::{Heartbeat, HeartbeatReply};
use muster_protocol::paths;
use std::path::Path;

/// Whether a certificate valid from `not_before` to `not_after` has less than a third of its
/// life left at `now`: the agent renews it then.
fn due_for_renewal(not_before: i64, not_after: i64, now: i64) -> bool {
    let life = not_after.saturating_sub(not_before);
    not_after.saturating_sub(now) < life / 3
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
