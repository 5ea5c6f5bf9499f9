//! Bounded memories of recent answers, so a fleet booting with one token does not pay for the
//! same check once per host.

use muster_protocol::token;
use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::TokenRecord;

/// A bounded memory of recent answers, by key, each good until a time (unix seconds): the caches
/// below. When it holds `MAX` entries, the ones past their time go, then all if it is still
/// full.
pub struct Recent<V, const MAX: usize>(Mutex<HashMap<String, (V, u64)>>);

impl<V, const MAX: usize> Default for Recent<V, MAX> {
    fn default() -> Self {
        Recent(Mutex::new(HashMap::new()))
    }
}

impl<V: Clone, const MAX: usize> Recent<V, MAX> {
    pub fn get(&self, key: &str, now: u64) -> Option<V> {
        let m = self.0.lock().ok()?;
        m.get(key)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v.clone())
    }

    pub fn insert(&self, key: &str, v: V, until: u64, now: u64) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= MAX {
                m.retain(|_, (_, u)| *u > now);
                if m.len() >= MAX {
                    m.clear();
                }
            }
            m.insert(key.to_string(), (v, until));
        }
    }

    pub fn forget(&self, key: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(usize::MAX)
    }
}

/// Tokens whose signature has verified, by their SHA-256: a fleet booting with one token pays
/// for the signature check once, not once per host. Only what the signature proves is
/// remembered; the time window and the store's record are checked on every use.
pub type VerifiedTokens = Recent<token::Claims, 1024>;

/// The transport keys of this coordinator's recent joins, by node id, until their reservation
/// expires: the commit that follows (most often on the same connection) checks its proof
/// without reading the reservation back. A node id is fresh and its key never changes, so an
/// entry cannot go stale; a miss (another coordinator's join, a restart) reads the store.
pub type JoinKeys = Recent<Vec<u8>, 4096>;

/// Token records a join has read lately, by token id, for [`TOKEN_RECORD_SECONDS`]: a fleet
/// booting with one token reads its record once a few seconds, not once per host. A join's
/// early check may so see a record up to that old; the reservation re-reads the record in
/// its own transaction and refuses a revoked or used-up token there, so nothing is signed
/// into the registry on a stale one. A revocation through this coordinator drops the copy at
/// once.
pub type TokenRecords = Recent<TokenRecord, 1024>;

/// How long a token record read by a join is used again.
pub const TOKEN_RECORD_SECONDS: u64 = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use muster_protocol::token::TokenKind;
    use muster_protocol::Role;

    #[test]
    fn token_records_are_used_again_for_a_few_seconds_and_forgotten_on_revocation() {
        let rec = TokenRecord {
            id: "t1".into(),
            hash: "00".into(),
            kind: TokenKind::Persistent,
            roles: vec![Role::Allocator],
            created: 0,
            expires: None,
            max_uses: None,
            uses: 0,
            allowed_sources: vec![],
            revoked: false,
            description: None,
        };
        let r = TokenRecords::default();
        r.insert("t1", rec.clone(), 100 + TOKEN_RECORD_SECONDS, 100);
        assert_eq!(
            r.get("t1", 100 + TOKEN_RECORD_SECONDS - 1),
            Some(rec.clone())
        );
        assert_eq!(
            r.get("t1", 100 + TOKEN_RECORD_SECONDS),
            None,
            "read again after that"
        );
        r.insert("t1", rec.clone(), 200 + TOKEN_RECORD_SECONDS, 200);
        r.forget("t1");
        assert_eq!(r.get("t1", 200), None);
    }

    #[test]
    fn join_keys_are_remembered_until_their_reservation_expires_and_stay_bounded() {
        const MAX: usize = 4096;
        let k = JoinKeys::default();
        k.insert("a", b"key-a".to_vec(), 100, 0);
        assert_eq!(k.get("a", 99).as_deref(), Some(&b"key-a"[..]));
        assert_eq!(k.get("a", 100), None, "expired with its reservation");
        assert_eq!(k.get("b", 0), None);
        k.forget("a");
        assert_eq!(k.get("a", 0), None);
        for i in 0..MAX + 10 {
            k.insert(&format!("n{i}"), b"k".to_vec(), 1000, 0);
        }
        assert!(k.len() <= MAX, "{}", k.len());
        assert!(k.get(&format!("n{}", MAX + 9), 0).is_some());
        // When full, the entries past their time go first.
        let k = JoinKeys::default();
        for i in 0..MAX {
            k.insert(
                &format!("n{i}"),
                b"k".to_vec(),
                if i == 0 { 2000 } else { 10 },
                0,
            );
        }
        k.insert("new", b"k".to_vec(), 2000, 20);
        assert!(k.get("n0", 20).is_some() && k.get("new", 20).is_some());
        assert_eq!(k.len(), 2);
    }
}
