//! What a coordinator remembers between the steps of an enrollment, so that the usual step
//! reads nothing before its transaction: the record of a token with no use limit (it changes
//! only when the token is revoked or goes), and the reservation this coordinator just wrote
//! (its host's commit usually comes back here).
//!
//! A hint is never trusted: the transaction that uses one is guarded by the mod revision it
//! was read or written at, so a stale hint fails the guard and the step reads again, as it
//! would have without it. Hints only save reads; they decide nothing.

use super::conn::Got;
use crate::store::{Reservation, TokenRecord};
use std::collections::HashMap;
use std::sync::Mutex;

/// At most this many of each kind; past it the kind starts over empty (a step without its
/// hint reads, so forgetting costs reads, never correctness).
const MOST: usize = 10_000;

#[derive(Default)]
pub(super) struct Hints {
    tokens: Mutex<HashMap<String, Got<TokenRecord>>>,
    reservations: Mutex<HashMap<String, Got<Reservation>>>,
}

fn keep<T>(map: &Mutex<HashMap<String, T>>, key: &str, value: T) {
    if let Ok(mut m) = map.lock() {
        if m.len() >= MOST && !m.contains_key(key) {
            m.clear();
        }
        m.insert(key.to_string(), value);
    }
}

impl Hints {
    /// The token as last read, if it has no use limit (a token with one changes with every
    /// join, so a copy of it would fail its guard as often as not).
    pub(super) fn token(&self, id: &str) -> Option<Got<TokenRecord>> {
        self.tokens.lock().ok()?.get(id).cloned()
    }

    /// Keeps `t` as read, if it has no use limit and is not revoked.
    pub(super) fn keep_token(&self, t: &Got<TokenRecord>) {
        if t.value.max_uses.is_none() && !t.value.revoked {
            keep(&self.tokens, &t.value.id, t.clone());
        } else {
            self.forget_token(&t.value.id);
        }
    }

    pub(super) fn forget_token(&self, id: &str) {
        if let Ok(mut m) = self.tokens.lock() {
            m.remove(id);
        }
    }

    /// The reservation this coordinator wrote for `node_id`, taken: a commit uses it once.
    pub(super) fn take_reservation(&self, node_id: &str) -> Option<Got<Reservation>> {
        self.reservations.lock().ok()?.remove(node_id)
    }

    /// Keeps the reservation just written at revision `rev`.
    pub(super) fn keep_reservation(&self, r: &Reservation, rev: i64) {
        let got = Got {
            value: r.clone(),
            rev,
            lease: 0,
        };
        keep(&self.reservations, &r.node_id, got);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{reservation, token as record};

    fn token(id: &str, max_uses: Option<u32>, revoked: bool) -> Got<TokenRecord> {
        let value = TokenRecord {
            revoked,
            ..record(id, max_uses)
        };
        Got {
            value,
            rev: 7,
            lease: 0,
        }
    }

    #[test]
    fn only_tokens_without_a_use_limit_and_not_revoked_are_kept() {
        let h = Hints::default();
        h.keep_token(&token("a", None, false));
        h.keep_token(&token("b", Some(3), false));
        h.keep_token(&token("c", None, true));
        assert_eq!(h.token("a").map(|t| t.rev), Some(7));
        assert!(h.token("b").is_none());
        assert!(h.token("c").is_none());
        // Revoked after it was kept: the copy goes.
        h.keep_token(&token("a", None, true));
        assert!(h.token("a").is_none());
    }

    #[test]
    fn a_reservation_is_taken_once_and_the_map_stays_bounded() {
        let h = Hints::default();
        for i in 0..MOST + 5 {
            let r = reservation(&format!("n{i}"), "t", &format!("k{i}"), "h", 100);
            h.keep_reservation(&r, i as i64);
        }
        let len = h.reservations.lock().map(|m| m.len()).unwrap_or(0);
        assert!(len <= MOST, "{len} kept");
        let last = format!("n{}", MOST + 4);
        assert_eq!(
            h.take_reservation(&last).map(|r| r.rev),
            Some(MOST as i64 + 4)
        );
        assert!(h.take_reservation(&last).is_none());
    }
}
