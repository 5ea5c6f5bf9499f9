//! The decisions of the protocol's steps (reserve, commit, expiry), as pure functions over
//! plain records: no I/O. Both backends read what a step needs, ask these functions what to do,
//! and write what they answer, so each rule is written once.
//!
//! A step's checks come in the order both backends make them, and a backend reads the record a
//! check needs only once the checks before it passed (a revoked token's join reads no
//! reservation; an expired reservation's commit reads no token). So a step is split where the
//! next record is read: [`reserve_token`] then [`reserve_decision`]; [`commit_reservation`],
//! [`commit_token`] then [`commit_decision`]; [`expired`], [`expiry`] then [`use_given_back`].

use super::events::returned_event;
use super::records::{CommitOutcome, HostRecord, Reservation, ReserveOutcome, TokenRecord};
use muster_protocol::api::AuditEvent;
use muster_protocol::Role;
use std::borrow::Borrow;

/// A reserve's first check, before anything else is read: its token is known and not revoked.
/// The token (as the backend read it, with what it guards on) to go on with, or the answer.
pub fn reserve_token<T: Borrow<TokenRecord>>(token: Option<T>) -> Result<T, ReserveOutcome> {
    let Some(t) = token else {
        return Err(ReserveOutcome::UnknownToken);
    };
    if t.borrow().revoked {
        return Err(ReserveOutcome::Revoked);
    }
    Ok(t)
}

/// What a reserve does once its token passed [`reserve_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveDecision {
    /// Answer this; nothing is written.
    Answer(ReserveOutcome),
    /// Store the new reservation with its use's event
    /// ([`used_event`](super::events::used_event)), and this token record: the token counting
    /// that use.
    Reserve(TokenRecord),
}

/// The rest of a reserve with `token`, given the reservation the same key holds with it
/// (`existing_by_key`, if any): that reservation if it is live (the key asking again gets it
/// back), else the use limit, else a new reservation counted as one more use.
pub fn reserve_decision(
    token: &TokenRecord,
    existing_by_key: Option<Reservation>,
    now: u64,
) -> ReserveDecision {
    if let Some(existing) = existing_by_key.filter(|e| e.expires_at > now) {
        return ReserveDecision::Answer(ReserveOutcome::Existing(Box::new(existing)));
    }
    if token.max_uses.is_some_and(|max| token.uses >= max) {
        return ReserveDecision::Answer(ReserveOutcome::UseLimitReached);
    }
    let mut t = token.clone();
    t.uses += 1;
    ReserveDecision::Reserve(t)
}

/// Where a commit stops on its reservation alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitStop {
    /// None there, or committed already: answered from the host registered under that node
    /// id ([`already_committed`]).
    Already,
    /// Answer this; nothing changes.
    Answer(CommitOutcome),
}

/// A commit's first checks, on the reservation of its node id before anything else is read:
/// there, not committed yet, live. The reservation (as the backend read it) to go on with, or
/// where the commit stops.
pub fn commit_reservation<R: Borrow<Reservation>>(
    reservation: Option<R>,
    now: u64,
) -> Result<R, CommitStop> {
    let r = match reservation {
        Some(r) if !r.borrow().committed => r,
        _ => return Err(CommitStop::Already),
    };
    if r.borrow().expires_at <= now {
        return Err(CommitStop::Answer(CommitOutcome::Unknown));
    }
    Ok(r)
}

/// A commit's answer when its reservation is gone or committed, from the host registered
/// under its node id (if any).
pub fn already_committed(host: Option<HostRecord>) -> CommitOutcome {
    match host {
        Some(h) => CommitOutcome::AlreadyCommitted(Box::new(h)),
        None => CommitOutcome::Unknown,
    }
}

/// A commit's check of the token its join used (as read now, if it is still there): refused
/// if the token was revoked before the commit ([`revoked_before_commit`]).
pub fn commit_token(
    r: &Reservation,
    token: Option<&TokenRecord>,
    now: u64,
) -> Option<CommitOutcome> {
    token
        .is_some_and(|t| revoked_before_commit(t, now))
        .then(|| CommitOutcome::TokenRevoked(r.token_id.clone()))
}

/// Whether a join with token `t` is refused at its commit: `t` was revoked, and not by the
/// sweep retiring it past its expiry (a join answered before then commits within its
/// reservation).
pub fn revoked_before_commit(t: &TokenRecord, now: u64) -> bool {
    let retired = t
        .expires
        .is_some_and(|e| e.saturating_add(muster_protocol::token::LEEWAY_SECS) < now);
    t.revoked && !retired
}

/// What a commit does once its reservation and token passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitDecision {
    /// Answer this; nothing changes.
    Answer(CommitOutcome),
    /// Register `host`, mark the reservation committed and, if a host was registered under its
    /// hostname, remove that one and revoke its certificates (`revoke`, empty if none).
    Commit {
        host: Box<HostRecord>,
        revoke: Vec<String>,
    },
}

/// The rest of a commit of `r`, given the host its hostname is registered to (`host_named`,
/// if any, as the backend looks it up): refused if `r` may not replace it ([`may_replace`]),
/// else a host built from `r` ([`host_from_reservation`]) replacing it.
pub fn commit_decision(
    r: &Reservation,
    host_named: Option<&HostRecord>,
    now: u64,
) -> CommitDecision {
    if let Some(old) = host_named.filter(|o| !may_replace(o, &r.roles)) {
        return CommitDecision::Answer(CommitOutcome::ReplaceRefused(Box::new(old.clone())));
    }
    CommitDecision::Commit {
        host: Box::new(host_from_reservation(r, now)),
        revoke: host_named.map(|o| o.serials.clone()).unwrap_or_default(),
    }
}

/// Whether a host joined with `roles` may replace `old`, registered under its hostname: only
/// with every role `old` has, so that a weaker token cannot knock a host off the registry.
pub fn may_replace(old: &HostRecord, roles: &[Role]) -> bool {
    old.roles.iter().all(|r| roles.contains(r))
}

/// The host a commit of reservation `r` at `now` registers.
pub fn host_from_reservation(r: &Reservation, now: u64) -> HostRecord {
    HostRecord {
        node_id: r.node_id.clone(),
        token_id: r.token_id.clone(),
        host: r.host.clone(),
        roles: r.roles.clone(),
        pending_roles: r.pending_roles.clone(),
        spki_der: r.spki_der.clone(),
        serials: r.serials.clone(),
        cert_not_after: r.cert_not_after,
        registered_at: now,
        last_heartbeat: now,
        memory_used_mb: 0,
        agent_version: None,
    }
}

/// Whether reservation `r` has expired at `now`: the sweep ends it.
pub fn expired(r: &Reservation, now: u64) -> bool {
    r.expires_at <= now
}

/// What ending an expired reservation does besides removing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// Committed: it only had to outlive a lost answer; it just goes.
    Goes,
    /// Never committed: its token's use comes back ([`use_given_back`]), its certificates
    /// (`revoke`) are revoked, and `event` audits the use given back, all with its removal.
    Returns {
        revoke: Vec<String>,
        event: Box<AuditEvent>,
    },
}

/// What the sweep at `now` does with expired reservation `r`.
pub fn expiry(r: &Reservation, now: u64) -> Expiry {
    if r.committed {
        return Expiry::Goes;
    }
    Expiry::Returns {
        revoke: r.serials.clone(),
        event: Box::new(returned_event(r, now)),
    }
}

/// Token `t` with the use of an expired reservation given back.
pub fn use_given_back(t: &TokenRecord) -> TokenRecord {
    TokenRecord {
        uses: t.uses.saturating_sub(1),
        ..t.clone()
    }
}

/// A host's serials, as a renewal to `new` leaves them: split into those to keep (in `keep`)
/// and those to revoke. The new ones are neither: a renewal step run again (a backend retrying
/// a request whose answer was lost) finds them recorded already, and must not revoke them.
pub(super) fn split_serials(
    old: &[String],
    new: &[String],
    keep: &[String],
) -> (Vec<String>, Vec<String>) {
    old.iter()
        .filter(|s| !new.contains(s))
        .cloned()
        .partition(|s| keep.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{reservation, token};

    fn host(node_id: &str, roles: Vec<Role>, serials: &[&str]) -> HostRecord {
        HostRecord {
            serials: serials.iter().map(|s| s.to_string()).collect(),
            roles,
            ..host_from_reservation(&reservation(node_id, "t", "k", "h", 100), 5)
        }
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reserve_refuses_an_unknown_or_revoked_token_first() {
        assert_eq!(
            reserve_token::<TokenRecord>(None),
            Err(ReserveOutcome::UnknownToken)
        );
        let revoked = TokenRecord {
            revoked: true,
            ..token("t", Some(1))
        };
        assert_eq!(reserve_token(Some(&revoked)), Err(ReserveOutcome::Revoked));
        let t = token("t", Some(1));
        assert_eq!(reserve_token(Some(&t)), Ok(&t));
        assert_eq!(reserve_token(Some(t.clone())), Ok(t));
    }

    #[test]
    fn reserve_gives_a_live_reservation_of_the_key_back_even_past_the_limit() {
        let spent = TokenRecord {
            uses: 1,
            ..token("t", Some(1))
        };
        let live = reservation("n1", "t", "k", "h", 100);
        assert_eq!(
            reserve_decision(&spent, Some(live.clone()), 99),
            ReserveDecision::Answer(ReserveOutcome::Existing(Box::new(live.clone())))
        );
        // Expired at 100: not given back; a new reservation is within the limit or not.
        assert_eq!(
            reserve_decision(&spent, Some(live), 100),
            ReserveDecision::Answer(ReserveOutcome::UseLimitReached)
        );
    }

    #[test]
    fn reserve_counts_a_use_up_to_the_limit() {
        let t = token("t", Some(2));
        let once = TokenRecord {
            uses: 1,
            ..t.clone()
        };
        assert_eq!(
            reserve_decision(&t, None, 10),
            ReserveDecision::Reserve(once.clone())
        );
        let twice = TokenRecord {
            uses: 2,
            ..t.clone()
        };
        assert_eq!(
            reserve_decision(&once, None, 10),
            ReserveDecision::Reserve(twice.clone())
        );
        assert_eq!(
            reserve_decision(&twice, None, 10),
            ReserveDecision::Answer(ReserveOutcome::UseLimitReached)
        );
        let unlimited = TokenRecord {
            uses: 1000,
            ..token("t", None)
        };
        let more = TokenRecord {
            uses: 1001,
            ..unlimited.clone()
        };
        let expired = reservation("n1", "t", "k", "h", 10);
        assert_eq!(
            reserve_decision(&unlimited, Some(expired), 10),
            ReserveDecision::Reserve(more)
        );
    }

    #[test]
    fn commit_stops_on_a_missing_committed_or_expired_reservation() {
        assert_eq!(
            commit_reservation::<Reservation>(None, 10),
            Err(CommitStop::Already)
        );
        let r = reservation("n1", "t", "k", "h", 100);
        let done = Reservation {
            committed: true,
            ..r.clone()
        };
        // Committed comes before expired: a lost commit answer is answered again.
        assert_eq!(
            commit_reservation(Some(&done), 10),
            Err(CommitStop::Already)
        );
        assert_eq!(
            commit_reservation(Some(&done), 100),
            Err(CommitStop::Already)
        );
        assert_eq!(
            commit_reservation(Some(&r), 100),
            Err(CommitStop::Answer(CommitOutcome::Unknown))
        );
        assert_eq!(commit_reservation(Some(&r), 99), Ok(&r));
        assert_eq!(commit_reservation(Some(r.clone()), 99), Ok(r));
    }

    #[test]
    fn a_gone_reservation_is_answered_by_its_host() {
        assert_eq!(already_committed(None), CommitOutcome::Unknown);
        let h = host("n1", vec![Role::Allocator], &["s"]);
        assert_eq!(
            already_committed(Some(h.clone())),
            CommitOutcome::AlreadyCommitted(Box::new(h))
        );
    }

    #[test]
    fn commit_refuses_a_token_revoked_before_it() {
        let r = reservation("n1", "t", "k", "h", 1000);
        let t = token("t", None);
        assert_eq!(
            commit_token(&r, None, 10),
            None,
            "a token gone refuses nothing"
        );
        assert_eq!(commit_token(&r, Some(&t), 10), None);
        let revoked = TokenRecord {
            revoked: true,
            ..t.clone()
        };
        assert_eq!(
            commit_token(&r, Some(&revoked), 10),
            Some(CommitOutcome::TokenRevoked("t".into()))
        );
        // Revoked by the sweep past its expiry (and leeway): the join answered before commits.
        let leeway = muster_protocol::token::LEEWAY_SECS;
        let retired = TokenRecord {
            expires: Some(100),
            ..revoked.clone()
        };
        assert!(revoked_before_commit(&retired, 100 + leeway));
        assert!(!revoked_before_commit(&retired, 101 + leeway));
        assert_eq!(commit_token(&r, Some(&retired), 101 + leeway), None);
        assert!(!revoked_before_commit(&t, 10));
    }

    #[test]
    fn commit_replaces_a_host_only_with_all_its_roles() {
        let r = reservation("n2", "t", "k", "h", 1000);
        let want = Box::new(host_from_reservation(&r, 50));
        assert_eq!(
            commit_decision(&r, None, 50),
            CommitDecision::Commit {
                host: want.clone(),
                revoke: vec![]
            }
        );
        let same = host("n1", vec![Role::Allocator], &["a", "b"]);
        assert_eq!(
            commit_decision(&r, Some(&same), 50),
            CommitDecision::Commit {
                host: want.clone(),
                revoke: strings(&["a", "b"])
            }
        );
        let none = host("n1", vec![], &["a"]);
        assert!(may_replace(&none, &[]));
        assert!(matches!(
            commit_decision(&r, Some(&none), 50),
            CommitDecision::Commit { .. }
        ));
        let stronger = host("n1", vec![Role::Allocator, Role::Coordinator], &["a"]);
        assert!(!may_replace(&stronger, &r.roles));
        assert_eq!(
            commit_decision(&r, Some(&stronger), 50),
            CommitDecision::Answer(CommitOutcome::ReplaceRefused(Box::new(stronger)))
        );
    }

    #[test]
    fn a_committed_host_is_its_reservation_at_commit_time() {
        let r = reservation("n1", "t", "k", "h", 1000);
        let h = host_from_reservation(&r, 50);
        let want = HostRecord {
            node_id: "n1".into(),
            token_id: "t".into(),
            host: r.host.clone(),
            roles: r.roles.clone(),
            pending_roles: r.pending_roles.clone(),
            spki_der: r.spki_der.clone(),
            serials: r.serials.clone(),
            cert_not_after: r.cert_not_after,
            registered_at: 50,
            last_heartbeat: 50,
            memory_used_mb: 0,
            agent_version: None,
        };
        assert_eq!(h, want);
    }

    #[test]
    fn expiry_gives_an_uncommitted_use_back_and_lets_a_committed_one_go() {
        let r = reservation("n1", "t", "k", "h", 100);
        assert!(!expired(&r, 99));
        assert!(expired(&r, 100));
        assert_eq!(
            expiry(&r, 150),
            Expiry::Returns {
                revoke: r.serials.clone(),
                event: Box::new(returned_event(&r, 150))
            }
        );
        let done = Reservation {
            committed: true,
            ..r
        };
        assert_eq!(expiry(&done, 150), Expiry::Goes);
        let t = TokenRecord {
            uses: 2,
            ..token("t", Some(2))
        };
        assert_eq!(use_given_back(&t).uses, 1);
        assert_eq!(use_given_back(&use_given_back(&use_given_back(&t))).uses, 0);
        assert_eq!(
            TokenRecord {
                uses: 2,
                ..use_given_back(&t)
            },
            t
        );
    }

    #[test]
    fn a_renewal_revokes_the_old_serials_it_does_not_keep() {
        let old = strings(&["t1", "h1", "t0", "h0"]);
        let (kept, gone) = split_serials(&old, &strings(&["t2", "h2"]), &strings(&["t1", "h1"]));
        assert_eq!(
            (kept, gone),
            (strings(&["t1", "h1"]), strings(&["t0", "h0"]))
        );
        // Run again after a lost answer: the new ones, recorded already, are neither.
        let again = strings(&["t2", "h2", "t1", "h1"]);
        let (kept, gone) = split_serials(&again, &strings(&["t2", "h2"]), &strings(&["t1", "h1"]));
        assert_eq!((kept, gone), (strings(&["t1", "h1"]), vec![]));
    }
}
