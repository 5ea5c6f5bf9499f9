//! The audit events a step appends in its own transaction, built from the records it changes:
//! both backends append the same events for the same step.

use super::records::{HostRecord, Reservation};
use muster_protocol::api::AuditEvent;

/// Who acted, as audit events name them (see [`AuditEvent::actor`]).
pub mod actor {
    /// The coordinator on its own (an expiry, a use given back).
    pub const MUSTERD: &str = "musterd";
    /// A `musterd` command run on the coordinator.
    pub const LOCAL: &str = "local";
    /// A refusal of a token that named no id Muster knows.
    pub const ANONYMOUS: &str = "anonymous";

    /// The holder of roles token `id`.
    pub fn token(id: &str) -> String {
        format!("token:{id}")
    }

    /// Host `node_id`, about itself.
    pub fn host(node_id: &str) -> String {
        format!("host:{node_id}")
    }
}

/// An audit event by `actor`, numbered by the store that appends it.
pub fn event(
    at: u64,
    event: &str,
    actor: &str,
    token_id: Option<&str>,
    node: Option<(&str, &str)>,
    source: Option<&str>,
    reason: Option<&str>,
) -> AuditEvent {
    AuditEvent {
        seq: 0,
        at,
        event: event.into(),
        actor: Some(actor.to_string()),
        token_id: token_id.map(str::to_string),
        node_id: node.map(|n| n.0.to_string()),
        hostname: node.map(|n| n.1.to_string()),
        source: source.map(str::to_string),
        reason: reason.map(str::to_string),
        target: None,
    }
}

/// What [`Store::reserve`](super::Store::reserve) appends with a new reservation: its token's
/// use, by its holder at the joining address.
pub fn used_event(r: &Reservation, at: u64) -> AuditEvent {
    about_reservation("used", r, at, &actor::token(&r.token_id), Some(&r.source))
}

/// What [`Store::commit`](super::Store::commit) appends with a new host: the host it replaced,
/// if any, then the host itself.
pub fn commit_events(
    host: &HostRecord,
    replaced: Option<&HostRecord>,
    at: u64,
    source: &str,
) -> Vec<AuditEvent> {
    let about = |name, h: &HostRecord| {
        let node = Some((h.node_id.as_str(), h.host.hostname.as_str()));
        let by = actor::token(&host.token_id);
        event(
            at,
            name,
            &by,
            Some(&host.token_id),
            node,
            Some(source),
            None,
        )
    };
    replaced
        .map(|o| about("replaced", o))
        .into_iter()
        .chain([about("committed", host)])
        .collect()
}

/// Event `e` about host `h`: its token, node id and name.
pub fn about_host(e: &AuditEvent, h: &HostRecord) -> AuditEvent {
    AuditEvent {
        token_id: Some(h.token_id.clone()),
        node_id: Some(h.node_id.clone()),
        hostname: Some(h.host.hostname.clone()),
        ..e.clone()
    }
}

/// What [`Store::expire_reservations`](super::Store::expire_reservations) appends for an
/// uncommitted reservation it ends: its token's use given back.
pub fn returned_event(r: &Reservation, at: u64) -> AuditEvent {
    about_reservation("returned", r, at, actor::MUSTERD, None)
}

/// Event `name` about reservation `r` by `by`: its token, node id and host name.
fn about_reservation(
    name: &str,
    r: &Reservation,
    at: u64,
    by: &str,
    source: Option<&str>,
) -> AuditEvent {
    let node = (r.node_id.as_str(), r.host.hostname.as_str());
    event(at, name, by, Some(&r.token_id), Some(node), source, None)
}
