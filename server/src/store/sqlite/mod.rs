//! The embedded store: one SQLite file in the data folder, WAL, every commit synced to disk
//! (`fdatasync`: .cargo/config.toml builds SQLite so).
//!
//! Records are JSON in a few tables keyed the way the protocol looks them up.
//!
//! Every [`Store`] method that reads to decide or writes runs on one writer thread, in order,
//! each in its own savepoint inside a shared `BEGIN IMMEDIATE` transaction: group commit. The
//! writer takes whatever steps are queued (up to [`MAX_BATCH`](writer::MAX_BATCH)), runs
//! them one after another, commits once (one fsync for the lot), and only then answers each
//! step. So steps are serialized exactly as with one transaction each (a one-use token is spent
//! exactly once), a step that fails rolls back its own savepoint only, nothing is acknowledged
//! before it is on disk, and a storm of joins costs one fsync per batch rather than per step.
//! Under load (more joins and commits on their way) a batch gathers for a few milliseconds more
//! ([`writer`]) before it commits, so it is fuller and its pages are written once for more
//! steps. Audit events are queued without waiting for their commit: they ride the next batch.
//! Checkpoints run on a thread of their own, out of the commits' way.
//!
//! Plain reads use other connections, which WAL lets read while the writer writes; they see
//! every acknowledged step, since a step is acknowledged only once committed. Point reads (one
//! record by its key, a revocation check) run inline on the async worker, microseconds from the
//! page cache; lists and backups run on a third connection on the blocking pool.

mod credentials;
mod keys;
mod rows;
mod writer;

use super::rules::{self, CommitDecision, CommitStop, Expiry, ReserveDecision};
use super::*;
use keys::ReservationKeys;
use rows::*;
use writer::{checkpoint_loop, write_loop, Step, WRITER_CHECKPOINT_PAGES};

pub use rows::SCHEMA_VERSION;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

pub struct SqliteStore {
    steps: mpsc::Sender<Step>,
    /// Point reads, inline.
    reader: Mutex<Connection>,
    /// Lists and backups, on the blocking pool, so a long one never holds up a point read.
    lister: Arc<Mutex<Connection>>,
    /// Reservations by token and key, for the writer's steps (see [`keys`]).
    keys: Arc<ReservationKeys>,
    /// Dropped with the store: the checkpointer stops.
    _stop_checkpoints: mpsc::Sender<()>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        let connect = || -> StoreResult<Connection> {
            let conn = Connection::open(path)
                .map_err(|e| unavailable(format!("opening {}: {e}", path.display())))?;
            conn.busy_timeout(std::time::Duration::from_secs(10))
                .map_err(unavailable)?;
            // WAL with synchronous=FULL: every commit is synced to disk (`fdatasync`) before it
            // is acknowledged.
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(unavailable)?;
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(unavailable)?;
            conn.pragma_update(None, "foreign_keys", "ON")
                .map_err(unavailable)?;
            Ok(conn)
        };
        let mut writer = connect()?;
        migrate(&mut writer)?;
        // Checkpoints run on their own thread (below), so a commit never waits for one; the
        // writer checkpoints itself only if the log grows far past that (the checkpointer
        // cannot keep up, or has stopped).
        writer
            .pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
            .map_err(unavailable)?;
        let keys = Arc::new(ReservationKeys::new());
        load_reservation_keys(&writer, &keys)?;
        let reader = connect()?;
        let lister = connect()?;
        let checkpointer = connect()?;
        let (steps, queue) = mpsc::channel::<Step>();
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("muster-sqlite-writer".into())
            .spawn(move || write_loop(writer, queue))
            .map_err(unavailable)?;
        std::thread::Builder::new()
            .name("muster-sqlite-checkpointer".into())
            .spawn(move || checkpoint_loop(checkpointer, stopped))
            .map_err(unavailable)?;
        Ok(SqliteStore {
            steps,
            reader: Mutex::new(reader),
            lister: Arc::new(Mutex::new(lister)),
            keys,
            _stop_checkpoints: stop,
        })
    }

    /// Runs `f` as one step of the writer's next batch; answers once that batch is on disk.
    async fn tx<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (reply, answer) = tokio::sync::oneshot::channel::<StoreResult<T>>();
        let step: Step = Box::new(move |tx: &mut rusqlite::Transaction<'_>| {
            let out = in_savepoint(tx, f);
            Box::new(move |committed: bool| {
                let _ = reply.send(if committed {
                    out
                } else {
                    Err(unavailable("the store could not commit"))
                });
            })
        });
        self.steps
            .send(step)
            .map_err(|_| unavailable("the store's writer has stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("the store's writer has stopped"))?
    }

    /// A point read (one row by its key) on the reader connection, right here: it takes
    /// microseconds from SQLite's page cache, less than a hop to the blocking pool would.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let guard = self
            .reader
            .lock()
            .map_err(|_| unavailable("store lock poisoned"))?;
        f(&guard)
    }

    /// A longer read (a list, a backup) on its own connection, on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let conn = self.lister.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| unavailable("store lock poisoned"))?;
            f(&mut guard)
        })
        .await
        .map_err(unavailable)?
    }

    /// A consistent copy of the whole database into `dest` (SQLite's online backup).
    pub async fn backup_to(&self, dest: std::path::PathBuf) -> StoreResult<()> {
        self.run(move |c| {
            c.execute("VACUUM INTO ?1", params![dest.to_string_lossy()])
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn init_platform(&self, record: &[u8]) -> StoreResult<bool> {
        let record = record.to_vec();
        self.tx(move |tx| {
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('platform', ?1)",
                    params![record],
                )
                .map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }

    async fn platform(&self) -> StoreResult<Option<Vec<u8>>> {
        self.run(|c| {
            c.prepare_cached("SELECT value FROM meta WHERE key = 'platform'")
                .map_err(unavailable)?
                .query_row([], |r| r.get(0))
                .optional()
                .map_err(unavailable)
        })
        .await
    }

    async fn insert_token(&self, t: &TokenRecord, created: Option<&AuditEvent>) -> StoreResult<()> {
        let (t, created) = (t.clone(), created.cloned());
        self.tx(move |tx| {
            put_token(tx, &t)?;
            created.map_or(Ok(()), |e| append_audit(tx, &e))
        })
        .await
    }

    async fn token(&self, id: &str) -> StoreResult<Option<TokenRecord>> {
        let id = id.to_string();
        self.read(move |c| get_token(c, &id))
    }

    async fn tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        // In the order they were made, as etcd lists them (writing a token's record replaces
        // its row, so rowid order would move it to the end each time it is written).
        let mut all: Vec<TokenRecord> = self.run(|c| all_tokens(c)).await?;
        all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(all)
    }

    async fn revoke_token(&self, id: &str, e: &AuditEvent) -> StoreResult<bool> {
        let (id, e) = (id.to_string(), e.clone());
        self.tx(move |tx| {
            let Some(mut t) = get_token(tx, &id)? else {
                return Ok(false);
            };
            if t.revoked {
                return Ok(false);
            }
            t.revoked = true;
            put_token(tx, &t)?;
            append_audit(tx, &e)?;
            Ok(true)
        })
        .await
    }

    async fn reserve(&self, r: &Reservation, now: u64) -> StoreResult<ReserveOutcome> {
        let (r, keys) = (r.clone(), self.keys.clone());
        self.tx(move |tx| {
            let t = match rules::reserve_token(get_token(tx, &r.token_id)?) {
                Ok(t) => t,
                Err(refused) => return Ok(refused),
            };
            let existing = find_reservation_of_key(tx, &keys, &r.token_id, &r.key_hash, now)?;
            match rules::reserve_decision(&t, existing, now) {
                ReserveDecision::Answer(outcome) => return Ok(outcome),
                // The use counted in the token's column: its record is not rewritten.
                ReserveDecision::Reserve(_) => count_use(tx, &r.token_id)?,
            }
            let used = super::used_event(&r, now);
            let (token_id, key_hash) = (r.token_id.clone(), r.key_hash.clone());
            let row = insert_reservation(tx, r)?;
            // Entered now, before the batch commits, so a later step of this batch finds it;
            // should the step or the batch roll back, the row it names is not there to match.
            keys.insert(&token_id, &key_hash, row);
            append_audit(tx, &used)?;
            Ok(ReserveOutcome::Reserved)
        })
        .await
    }

    async fn reservation(&self, node_id: &str) -> StoreResult<Option<Reservation>> {
        let id = node_id.to_string();
        self.read(move |c| get_reservation(c, &id))
    }

    async fn commit(&self, node_id: &str, now: u64, source: &str) -> StoreResult<CommitOutcome> {
        let (id, source) = (node_id.to_string(), source.to_string());
        self.tx(move |tx| {
            let r = match rules::commit_reservation(get_reservation_record(tx, &id)?, now) {
                Ok(r) => r,
                Err(CommitStop::Already) => {
                    return Ok(rules::already_committed(get_host(tx, &id)?))
                }
                Err(CommitStop::Answer(outcome)) => return Ok(outcome),
            };
            if let Some(revoked) =
                rules::commit_token(&r, get_token(tx, &r.token_id)?.as_ref(), now)
            {
                return Ok(revoked);
            }
            let old: Option<String> = tx
                .prepare_cached("SELECT json FROM hosts WHERE hostname = ?1")
                .map_err(unavailable)?
                .query_row(params![r.host.hostname], |row| row.get(0))
                .optional()
                .map_err(unavailable)?;
            let old: Option<HostRecord> = old.map(|s| from_json(&s)).transpose()?;
            let (host, revoke) = match rules::commit_decision(&r, old.as_ref(), now) {
                CommitDecision::Answer(outcome) => return Ok(outcome),
                CommitDecision::Commit { host, revoke } => (host, revoke),
            };
            let replaced = match old {
                Some(old) => {
                    revoke_serials(tx, &revoke)?;
                    tx.prepare_cached("DELETE FROM hosts WHERE node_id = ?1")
                        .map_err(unavailable)?
                        .execute(params![old.node_id])
                        .map_err(unavailable)?;
                    Some(Box::new(old))
                }
                None => None,
            };
            put_host(tx, &host)?;
            tx.prepare_cached("INSERT OR IGNORE INTO reservations_committed (node_id) VALUES (?1)")
                .map_err(unavailable)?
                .execute(params![id])
                .map_err(unavailable)?;
            for e in super::commit_events(&host, replaced.as_deref(), now, &source) {
                append_audit(tx, &e)?;
            }
            Ok(CommitOutcome::Committed { host, replaced })
        })
        .await
    }

    async fn expire_reservations(&self, now: u64) -> StoreResult<Vec<Reservation>> {
        let (expired, gone) = self.tx(move |tx| {
            type Row = (String, String, bool, KeyRow);
            let rows: Vec<Row> = tx
                .prepare_cached(reservation_select!(
                    "node_id, token_id, key_hash, rowid",
                    "expires_at <= ?1"
                ))
                .map_err(unavailable)?
                .query_map(params![now as i64], |r| {
                    Ok((r.get(2)?, r.get(0)?, r.get(1)?, (r.get(3)?, r.get(4)?, r.get(5)?)))
                })
                .map_err(unavailable)?
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            // A record that does not read is named in the log and left: one bad record must
            // not stop every other reservation from expiring.
            let (mut all, mut gone) = (Vec::with_capacity(rows.len()), Vec::new());
            for (node_id, json, committed, key) in rows {
                match reservation_of((json, committed, None, None)) {
                    Ok(r) => {
                        all.push(r);
                        gone.push(key);
                    }
                    Err(e) => tracing::warn!(%node_id, error = %e, "store: a reservation record does not read; left for an operator"),
                }
            }
            // Committed ones only had to outlive a lost answer; they just go.
            let (mut done, mut expired) = (Vec::new(), Vec::new());
            for r in all {
                match rules::expiry(&r, now) {
                    Expiry::Goes => done.push(r),
                    Expiry::Returns { revoke, event } => expired.push((r, revoke, event)),
                }
            }
            for r in &done {
                for sql in [
                    "DELETE FROM reservations WHERE node_id = ?1",
                    "DELETE FROM reservations_committed WHERE node_id = ?1",
                ] {
                    tx.prepare_cached(sql)
                        .map_err(unavailable)?
                        .execute(params![r.node_id])
                        .map_err(unavailable)?;
                }
            }
            for (r, revoke, event) in &expired {
                match get_token(tx, &r.token_id) {
                    Ok(Some(t)) => put_token(tx, &rules::use_given_back(&t))?,
                    Ok(None) => {}
                    // Its certificates are still revoked and the reservation still ends.
                    Err(StoreError::Corrupt(e)) => tracing::warn!(token_id = %r.token_id, error = %e, "store: a token record does not read; its use is not given back"),
                    Err(e) => return Err(e),
                }
                revoke_serials(tx, revoke)?;
                tx.prepare_cached("DELETE FROM reservations WHERE node_id = ?1")
                    .map_err(unavailable)?
                    .execute(params![r.node_id])
                    .map_err(unavailable)?;
                append_audit(tx, event)?;
            }
            Ok((expired.into_iter().map(|(r, ..)| r).collect(), gone))
        })
        .await?;
        // Their rows are deleted for good now that the batch committed.
        for (token_id, key_hash, row) in &gone {
            self.keys.remove(token_id, key_hash, *row);
        }
        Ok(expired)
    }

    async fn hosts(&self) -> StoreResult<Vec<HostRecord>> {
        self.run(|c| query_json(c, "SELECT json FROM hosts ORDER BY hostname", []))
            .await
    }

    async fn host_addresses(&self) -> StoreResult<Vec<HostFacts>> {
        // Only the hosts with addresses, through their index: with 100,000 hosts registered,
        // decoding every record each time took tens of megabytes and a second of CPU.
        self.run(|c| query_json(c, HOST_ADDRESSES, [])).await
    }

    async fn host(&self, node_id: &str) -> StoreResult<Option<HostRecord>> {
        let id = node_id.to_string();
        self.read(move |c| get_host(c, &id))
    }

    async fn host_named(&self, hostname: &str) -> StoreResult<Option<HostRecord>> {
        let name = hostname.to_string();
        self.read(move |c| {
            let s: Option<String> = c
                .prepare_cached("SELECT json FROM hosts WHERE hostname = ?1")
                .map_err(unavailable)?
                .query_row(params![name], |r| r.get(0))
                .optional()
                .map_err(unavailable)?;
            s.map(|s| from_json(&s)).transpose()
        })
    }

    async fn lowercase_host_name(&self, node_id: &str) -> StoreResult<bool> {
        let id = node_id.to_string();
        self.tx(move |tx| {
            let Some(mut h) = get_host(tx, &id)? else {
                return Ok(false);
            };
            let lower = h.host.hostname.to_ascii_lowercase();
            if lower == h.host.hostname {
                return Ok(false);
            }
            let taken: Option<String> = tx
                .prepare_cached("SELECT node_id FROM hosts WHERE hostname = ?1")
                .map_err(unavailable)?
                .query_row(params![lower], |r| r.get(0))
                .optional()
                .map_err(unavailable)?;
            if taken.is_some() {
                return Ok(false);
            }
            h.host.hostname = lower;
            put_host(tx, &h)?;
            Ok(true)
        })
        .await
    }

    async fn heartbeat(
        &self,
        node_id: &str,
        now: u64,
        memory_used_mb: u64,
        agent_version: Option<&str>,
    ) -> StoreResult<Option<HostRecord>> {
        let id = node_id.to_string();
        let version = agent_version.map(str::to_string);
        self.tx(move |tx| {
            update_host(tx, id, |_, h| {
                h.last_heartbeat = now;
                h.memory_used_mb = memory_used_mb;
                h.agent_version = version;
                Ok(())
            })
        })
        .await
    }

    async fn set_roles(
        &self,
        node_id: &str,
        roles: &[Role],
        pending: &[Role],
        e: &AuditEvent,
    ) -> StoreResult<Option<HostRecord>> {
        let (id, roles, pending) = (node_id.to_string(), roles.to_vec(), pending.to_vec());
        let e = e.clone();
        self.tx(move |tx| {
            let h = update_host(tx, id, |_, h| {
                h.roles = roles;
                h.pending_roles = pending;
                Ok(())
            })?;
            if let Some(h) = &h {
                append_audit(tx, &super::about_host(&e, h))?;
            }
            Ok(h)
        })
        .await
    }

    async fn replace_certs(
        &self,
        node_id: &str,
        serials: &[String],
        keep: &[String],
        not_after: u64,
    ) -> StoreResult<Option<HostRecord>> {
        let (id, serials, keep) = (node_id.to_string(), serials.to_vec(), keep.to_vec());
        self.tx(move |tx| {
            update_host(tx, id, |tx, h| {
                let (kept, gone) = rules::split_serials(&h.serials, &serials, &keep);
                revoke_serials(tx, &gone)?;
                h.serials = serials.iter().cloned().chain(kept).collect();
                h.cert_not_after = not_after;
                Ok(())
            })
        })
        .await
    }

    async fn remove_host(&self, node_id: &str, e: &AuditEvent) -> StoreResult<Option<HostRecord>> {
        let (id, e) = (node_id.to_string(), e.clone());
        self.tx(move |tx| {
            let Some(h) = get_host(tx, &id)? else {
                return Ok(None);
            };
            revoke_serials(tx, &h.serials)?;
            tx.prepare_cached("DELETE FROM hosts WHERE node_id = ?1")
                .map_err(unavailable)?
                .execute(params![id])
                .map_err(unavailable)?;
            append_audit(tx, &super::about_host(&e, &h))?;
            Ok(Some(h))
        })
        .await
    }

    async fn is_revoked(&self, serial: &str) -> StoreResult<bool> {
        let s = serial.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT 1 FROM revoked WHERE serial = ?1")
                .map_err(unavailable)?
                .query_row(params![s], |_| Ok(()))
                .optional()
                .map(|o| o.is_some())
                .map_err(unavailable)
        })
    }

    async fn audit(&self, e: &AuditEvent) -> StoreResult<()> {
        // Queued, not awaited: the event rides the next group commit, after every step queued
        // before it, without making this request wait for a disk flush of its own.
        let e = e.clone();
        let step: Step = Box::new(move |tx: &mut rusqlite::Transaction<'_>| {
            let out = append_audit(tx, &e);
            Box::new(move |committed: bool| {
                if let Err(e) = out {
                    tracing::error!(error = %e, "could not append to the audit log");
                } else if !committed {
                    tracing::error!("an audit event was lost with a failed commit");
                }
            })
        });
        self.steps
            .send(step)
            .map_err(|_| unavailable("the store's writer has stopped"))
    }

    async fn audit_log(&self, after: u64, limit: u32) -> StoreResult<Vec<AuditEvent>> {
        // On the writer's queue, so it sees every event queued before it.
        self.tx(move |c| {
            let mut st = c
                .prepare_cached("SELECT seq, json FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                .map_err(unavailable)?;
            let rows = st
                .query_map(
                    params![i64::try_from(after).unwrap_or(i64::MAX), limit],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                )
                .map_err(unavailable)?;
            rows.map(|r| {
                let (seq, s) = r.map_err(unavailable)?;
                let mut e: AuditEvent = from_json(&s)?;
                e.seq = seq as u64;
                Ok(e)
            })
            .collect()
        })
        .await
    }
    async fn publish_names(&self, id: &str, names: &[String]) -> StoreResult<()> {
        let (key, value) = (format!("coordinator-names/{id}"), to_json(&names)?);
        self.tx(move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value.into_bytes()],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn insert_api_key(&self, k: &ApiKeyRecord, e: &AuditEvent) -> StoreResult<bool> {
        self.put_api_key(k, e).await
    }

    async fn api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        self.all_api_keys().await
    }

    async fn revoke_api_key(&self, name: &str, at: u64, e: &AuditEvent) -> StoreResult<bool> {
        self.end_api_key(name, at, e).await
    }

    async fn admin_password(&self) -> StoreResult<Option<Vec<u8>>> {
        self.password_record().await
    }

    async fn set_admin_password(&self, record: &[u8], e: &AuditEvent) -> StoreResult<()> {
        self.put_password_record(record, e).await
    }

    async fn coordinator_names(&self) -> StoreResult<Vec<String>> {
        self.run(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT value FROM meta WHERE key >= 'coordinator-names/' AND key < 'coordinator-names0'",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, Vec<u8>>(0))
                .map_err(unavailable)?;
            let mut all = Vec::new();
            for row in rows {
                let bytes = row.map_err(unavailable)?;
                let names: Vec<String> = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("coordinator names: {e}")))?;
                all.extend(names);
            }
            Ok(all)
        })
        .await
    }
}

/// A reservation row's token, key and row id, as [`ReservationKeys`] files it.
type KeyRow = (String, String, i64);

/// Runs `f` in a savepoint of its own inside the batch's transaction: kept if it succeeds,
/// undone alone if it fails. The statements are prepared once and kept (rusqlite's `Savepoint`
/// parses them again for every step).
fn in_savepoint<T>(
    tx: &Connection,
    f: impl FnOnce(&Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    let run = |sql: &str| {
        tx.prepare_cached(sql)
            .and_then(|mut st| st.execute([]))
            .map_err(unavailable)
    };
    let undo = || {
        let _ = run("ROLLBACK TO step");
        let _ = run("RELEASE step");
    };
    run("SAVEPOINT step")?;
    let out = f(tx).and_then(|v| run("RELEASE step").map(|_| v));
    if out.is_err() {
        undo();
    }
    out
}

#[cfg(test)]
mod tests;
