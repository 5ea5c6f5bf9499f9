//! Where to look for a token's reservation of a key: an index of the reservations by token and
//! key, kept in the server's memory rather than in the file.
//!
//! A key's hash is random, so in the file each join wrote a leaf page of its own to that index
//! (and the interior pages above it), and read it first when it was not cached: under a storm,
//! 11 of the 28 pages a batch wrote to the log (`sh scripts/walpages.sh`). In memory it costs a
//! lookup, and a join's look for an earlier reservation of its key reads rows by row id, in
//! the reservations table whose pages the recent joins just wrote.
//!
//! The index is a hint that may hold too much and never too little: a row it names is read
//! and checked (token, key, expiry), so an entry left by a rolled-back step, or pointing at a
//! row id SQLite gave again to another reservation, finds nothing. Every reservation row is
//! entered as it is inserted, inside its step, and all of them are read in when the store
//! opens. Entries go only once their rows are deleted and that deletion is committed (the
//! sweep of expired reservations). It sees the reservations this process writes: only a
//! server's joins make them, and one server at a time uses the embedded store.

use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Reservation row ids by a hash of their token and key. About 24 bytes a reservation: 2.4 MB
/// for 100,000.
pub(super) struct ReservationKeys {
    /// Keyed per process, so no one can choose keys that share a hash to make a join read more
    /// rows (they would still be checked).
    hasher: RandomState,
    rows: Mutex<BTreeSet<(u64, i64)>>,
}

impl ReservationKeys {
    pub(super) fn new() -> ReservationKeys {
        ReservationKeys {
            hasher: RandomState::new(),
            rows: Mutex::new(BTreeSet::new()),
        }
    }

    fn hash(&self, token_id: &str, key_hash: &str) -> u64 {
        self.hasher.hash_one((token_id, key_hash))
    }

    /// A set changed by a thread that panicked is still a superset: take it as it is.
    fn lock(&self) -> MutexGuard<'_, BTreeSet<(u64, i64)>> {
        self.rows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters the reservation row `row` of `token_id` and `key_hash`.
    pub(super) fn insert(&self, token_id: &str, key_hash: &str, row: i64) {
        let h = self.hash(token_id, key_hash);
        self.lock().insert((h, row));
    }

    /// Forgets the row `row` (deleted) of `token_id` and `key_hash`.
    pub(super) fn remove(&self, token_id: &str, key_hash: &str, row: i64) {
        let h = self.hash(token_id, key_hash);
        self.lock().remove(&(h, row));
    }

    /// The row ids that may hold a reservation of `token_id` and `key_hash`, lowest first
    /// (usually none or one; each must be read and checked).
    pub(super) fn rows(&self, token_id: &str, key_hash: &str) -> Vec<i64> {
        let h = self.hash(token_id, key_hash);
        self.lock()
            .range((h, i64::MIN)..=(h, i64::MAX))
            .map(|&(_, row)| row)
            .collect()
    }

    /// How many entries the index holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::ReservationKeys;

    #[test]
    fn a_key_finds_its_rows_lowest_first_and_no_other_keys() {
        let k = ReservationKeys::new();
        k.insert("t", "key-a", 7);
        k.insert("t", "key-a", 3);
        k.insert("t", "key-b", 5);
        k.insert("other-token", "key-a", 9);
        assert_eq!(k.rows("t", "key-a"), [3, 7]);
        assert_eq!(k.rows("t", "key-b"), [5]);
        assert_eq!(k.rows("other-token", "key-a"), [9]);
        assert!(k.rows("t", "key-c").is_empty());
        // Token and key are hashed as a pair, not as one string run together.
        assert!(k.rows("tkey-", "a").is_empty());
        assert_eq!(k.len(), 4);
    }

    #[test]
    fn a_removed_row_is_no_longer_found_and_the_others_stay() {
        let k = ReservationKeys::new();
        k.insert("t", "key-a", 3);
        k.insert("t", "key-a", 7);
        k.remove("t", "key-a", 3);
        assert_eq!(k.rows("t", "key-a"), [7]);
        // Removing what is not there (a row of another key) changes nothing.
        k.remove("t", "key-b", 7);
        assert_eq!(k.rows("t", "key-a"), [7]);
        assert_eq!(k.len(), 1);
    }
}
