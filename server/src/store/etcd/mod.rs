//! The etcd backend: several coordinators share one etcd cluster.
//!
//! Records are the same JSON values SQLite keeps, one key each, under a prefix (default
//! `/muster/`):
//!
//! | key | value |
//! | --- | --- |
//! | `platform` | the platform record |
//! | `tokens/{id}` | [`TokenRecord`]; ephemeral ones under a lease that outlives their expiry |
//! | `resv/{node_id}` | [`Reservation`] |
//! | `resv-key/{token_id}/{key_hash}` | the node id holding that key's reservation |
//! | `hosts/{node_id}` | [`HostRecord`] |
//! | `hostname/{hostname}` | the node id registered under that hostname |
//! | `revoked/{serial}` | empty: a revoked certificate |
//! | `token-uses/{token_id}/{node_id}` | empty: a join counted against a token with no use limit |
//! | `audit-new/{txn}/{i}` | an audit event as its transaction wrote it, until filed |
//! | `audit/{seq:020}` | an audit event filed under its number |
//!
//! No key is written by every enrollment. An audit event is written under its transaction's
//! own key and numbered by the transaction's revision (`txn::waiting_event`); the sweep files it
//! by number once it is [`sweep::FILE_AFTER_SECS`] old. A token with no use limit counts its
//! joins under keys of their own, so a fleet booting with one token writes no key in common.
//! (Platforms made before kept an `audit-seq` counter and numbered events from 1; their
//! events keep their numbers, all below the new ones.)
//!
//! Every protocol step is one etcd transaction guarded by the mod revisions of the keys it
//! read: a step that lost a race to another coordinator reads again and retries. The usual
//! join and commit read nothing before their transaction: they guard on what this coordinator
//! last saw ([`hints`]: a token with no use limit, the reservation it just wrote) and on the
//! key and host name being free, and read only when a guard fails. So a one-use
//! token is used once across coordinators, and a revoked token is refused by every coordinator
//! from the moment the revocation commits. Reservations have no lease: only the sweeper on a
//! coordinator expires them, returning their token use exactly once (by the same
//! compare-and-swap) and revoking their certificates, however long every coordinator was down.
//! etcd dropping them on its own would do neither.
//!
//! A watch on `tokens/` drops a revoked token on every coordinator at once: each keeps the
//! revoked token records the watch delivers and refuses them without asking etcd again. A
//! watch on `hostname/` keeps the registered names, so a join under a new name asks nothing.
//! Revocation is final, so such a record never goes stale. Every other token record a step
//! decides on is either read from etcd (linearizable) or guarded by its mod revision in the
//! step's transaction, so a watch event still in flight can never let a revoked token through.
//!
//! The store itself is here; the rest is split by concern, each part using only those listed
//! before it: [`conn`] connects and fails over, [`txn`] runs guarded transactions and tells a
//! lost answer, [`watch`] keeps the revoked tokens and the host names, [`hints`] what the next step may skip
//! reading, [`sweep`] expires reservations. Every
//! decision of a step is one of [`rules`](crate::store::rules), as for SQLite.

mod conn;
mod credentials;
mod hints;
mod sweep;

#[cfg(test)]
mod tests;
mod txn;
mod watch;

use super::rules::{self, CommitDecision, CommitStop, ReserveDecision};
use super::*;
use conn::{decode, json, Conn};
use etcd_client::{GetOptions, TxnOp};
use std::sync::Arc;
use txn::{audit_key, contended, Ran, AUDIT_WAITING, MAX_ROUNDS};
use watch::{watch, NameCopy, TokenCopy};

/// Where a token with no use limit counts the join of `node_id`.
fn use_key(token_id: &str, node_id: &str) -> String {
    format!("token-uses/{token_id}/{node_id}")
}

/// How long an expired ephemeral token stays readable (for audit and clear refusals).
const TOKEN_RETENTION_SECS: i64 = 86_400;

pub struct EtcdStore {
    conn: Conn,
    hints: hints::Hints,
    tokens_seen: Arc<TokenCopy>,
    names_seen: Arc<NameCopy>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
    }
}

impl EtcdStore {
    /// Connects to `cfg.endpoints` (TLS when `cfg.tls` is set) and checks the cluster answers.
    pub async fn connect(cfg: &crate::config::EtcdConfig) -> anyhow::Result<EtcdStore> {
        let conn = Conn::connect(cfg).await?;
        let tokens_seen = Arc::new(TokenCopy::default());
        let names_seen = Arc::new(NameCopy::default());
        let watchers = vec![
            tokio::spawn(watch(
                conn.clients.clone(),
                conn.key("tokens/"),
                tokens_seen.clone(),
            )),
            tokio::spawn(watch(
                conn.clients.clone(),
                conn.key("hostname/"),
                names_seen.clone(),
            )),
        ];
        let store = EtcdStore {
            conn,
            hints: hints::Hints::default(),
            tokens_seen,
            names_seen,
            watchers,
        };
        store
            .conn
            .call(|mut c| async move { c.status().await })
            .await
            .map_err(|e| anyhow::anyhow!("etcd at {:?} does not answer: {e}", cfg.endpoints))?;
        Ok(store)
    }

    /// Reads a host, changes it with `f`, writes it back if nobody changed it meanwhile, with
    /// event `e` about it if there is one.
    async fn update_host(
        &self,
        node_id: &str,
        mut f: impl FnMut(&mut HostRecord) -> Vec<String>,
        e: Option<&AuditEvent>,
    ) -> StoreResult<Option<HostRecord>> {
        let rest = format!("hosts/{node_id}");
        for _ in 0..MAX_ROUNDS {
            let Some(mut h) = self.conn.get::<HostRecord>(&rest).await? else {
                return Ok(None);
            };
            let revoke = f(&mut h.value);
            let mut ops = vec![self.conn.put(&rest, &h.value, 0)?];
            ops.extend(self.conn.revoke_ops(&revoke)?);
            let guards = vec![self.conn.unchanged(&rest, Some(h.rev))];
            let ran = match e {
                Some(e) => {
                    let events = [about_host(e, &h.value)];
                    self.conn.txn_audited(guards, ops, &events).await?
                }
                None => self.conn.txn(guards, ops).await?,
            };
            if ran {
                return Ok(Some(h.value));
            }
        }
        Err(contended())
    }

    /// A token's record as stored (its `uses` counting only what it counted itself).
    async fn token_record(&self, id: &str) -> StoreResult<Option<conn::Got<TokenRecord>>> {
        self.conn.get::<TokenRecord>(&format!("tokens/{id}")).await
    }

    /// A token with its uses as the API counts them: a token with no use limit counts each
    /// join under a key of its own ([`use_key`]), not in its record, so joins do not contend
    /// over that one record.
    async fn with_counted_uses(&self, mut t: TokenRecord) -> StoreResult<TokenRecord> {
        if t.max_uses.is_none() {
            let counted = self.conn.count(&format!("token-uses/{}/", t.id)).await?;
            t.uses = t
                .uses
                .saturating_add(u32::try_from(counted).unwrap_or(u32::MAX));
        }
        Ok(t)
    }

    async fn already_committed(&self, node_id: &str) -> StoreResult<CommitOutcome> {
        let host = self
            .conn
            .get::<HostRecord>(&format!("hosts/{node_id}"))
            .await?;
        Ok(rules::already_committed(host.map(|h| h.value)))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn init_platform(&self, record: &[u8]) -> StoreResult<bool> {
        match self
            .conn
            .txn_ran(
                vec![self.conn.unchanged("platform", None)],
                vec![TxnOp::put(self.conn.key("platform"), record, None)],
            )
            .await?
        {
            Ran::Yes => Ok(true),
            Ran::No => Ok(false),
            // The record there is this one: written by the attempt whose answer was lost.
            Ran::Unsure => Ok(self.platform().await?.as_deref() == Some(record)),
        }
    }

    async fn platform(&self) -> StoreResult<Option<Vec<u8>>> {
        let resp = self.conn.range("platform", None).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn insert_token(&self, t: &TokenRecord, created: Option<&AuditEvent>) -> StoreResult<()> {
        let lease = match t.expires {
            Some(e) => {
                let ttl = e.saturating_sub(t.created) as i64
                    + muster_protocol::token::LEEWAY_SECS as i64
                    + TOKEN_RETENTION_SECS;
                self.conn.lease(ttl).await?
            }
            None => 0,
        };
        let op = self.conn.put(&format!("tokens/{}", t.id), t, lease)?;
        let Some(e) = created else {
            self.conn.txn(vec![], vec![op]).await?;
            return Ok(());
        };
        for _ in 0..MAX_ROUNDS {
            let events = std::slice::from_ref(e);
            if self
                .conn
                .txn_audited(vec![], vec![op.clone()], events)
                .await?
            {
                return Ok(());
            }
        }
        Err(contended())
    }

    async fn token(&self, id: &str) -> StoreResult<Option<TokenRecord>> {
        let t = match self.tokens_seen.get(id) {
            Some(t) => t,
            None => match self.token_record(id).await? {
                Some(t) => t.value,
                None => return Ok(None),
            },
        };
        Ok(Some(self.with_counted_uses(t).await?))
    }

    async fn tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let mut all = Vec::new();
        for t in self.conn.list::<TokenRecord>("tokens/").await? {
            all.push(self.with_counted_uses(t).await?);
        }
        all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(all)
    }

    async fn revoke_token(&self, id: &str, e: &AuditEvent) -> StoreResult<bool> {
        let rest = format!("tokens/{id}");
        for _ in 0..MAX_ROUNDS {
            let Some(mut t) = self.conn.get::<TokenRecord>(&rest).await? else {
                return Ok(false);
            };
            if t.value.revoked {
                return Ok(false);
            }
            t.value.revoked = true;
            let op = self.conn.put(&rest, &t.value, t.lease)?;
            let guard = self.conn.unchanged(&rest, Some(t.rev));
            if self
                .conn
                .txn_audited(vec![guard], vec![op], std::slice::from_ref(e))
                .await?
            {
                return Ok(true);
            }
        }
        Err(contended())
    }

    async fn reserve(&self, r: &Reservation, now: u64) -> StoreResult<ReserveOutcome> {
        let token_key = format!("tokens/{}", r.token_id);
        let index_key = format!("resv-key/{}/{}", r.token_id, r.key_hash);
        // The usual join reads nothing first: its token as last read (one with no use limit
        // changes only when revoked), its key holding no reservation yet. Both are guarded, so
        // if either is wrong the transaction does not run and the next round reads.
        let mut hinted = self.hints.token(&r.token_id);
        for _ in 0..MAX_ROUNDS {
            let (t, index) = match hinted.take() {
                Some(t) => (t, None),
                None => {
                    // The token and the key's reservation index, in one round trip.
                    let read = self.conn.get_many(&[&token_key, &index_key]).await?;
                    let t = match rules::reserve_token(conn::got::<TokenRecord>(read[0].as_ref())?)
                    {
                        Ok(t) => t,
                        Err(refused) => {
                            self.hints.forget_token(&r.token_id);
                            return Ok(refused);
                        }
                    };
                    self.hints.keep_token(&t);
                    (
                        t,
                        conn::got::<String>(read.get(1).and_then(Option::as_ref))?,
                    )
                }
            };
            let existing = match &index {
                Some(ix) => self
                    .conn
                    .get::<Reservation>(&format!("resv/{}", ix.value))
                    .await?
                    .map(|existing| existing.value),
                None => None,
            };
            let token = match rules::reserve_decision(&t.value, existing, now) {
                ReserveDecision::Answer(outcome) => return Ok(outcome),
                ReserveDecision::Reserve(token) => token,
            };
            // A token with a use limit counts the use in its record, which the guard keeps
            // exact across coordinators. One without counts it under a key of this join's own
            // (with the token's lease, so it goes with the token): joins of one token then
            // write no key in common, and the token's guard still catches a revocation.
            let count_use = if t.value.max_uses.is_some() {
                self.conn.put(&token_key, &token, t.lease)?
            } else {
                self.conn
                    .put(&use_key(&r.token_id, &r.node_id), &(), t.lease)?
            };
            let guards = vec![
                self.conn.unchanged(&token_key, Some(t.rev)),
                self.conn
                    .unchanged(&index_key, index.as_ref().map(|i| i.rev)),
            ];
            let mut ops = vec![
                count_use,
                self.conn.put(&format!("resv/{}", r.node_id), r, 0)?,
                self.conn.put(&index_key, &r.node_id, 0)?,
            ];
            ops.extend(self.conn.audit_ops(&[used_event(r, now)])?.1);
            // An attempt whose answer was lost is found by the next round as this join's own
            // reservation (`Existing` with this node id), its use and event written with it.
            match self.conn.txn_at(guards, ops).await? {
                (Ran::Yes, rev) => {
                    self.hints.keep_reservation(r, rev);
                    return Ok(ReserveOutcome::Reserved);
                }
                _ => self.hints.forget_token(&r.token_id),
            }
        }
        Err(contended())
    }

    async fn reservation(&self, node_id: &str) -> StoreResult<Option<Reservation>> {
        Ok(self
            .conn
            .get::<Reservation>(&format!("resv/{node_id}"))
            .await?
            .map(|g| g.value))
    }

    async fn commit(&self, node_id: &str, now: u64, source: &str) -> StoreResult<CommitOutcome> {
        let resv_key = format!("resv/{node_id}");
        // The usual commit reads nothing first either: the reservation as this coordinator
        // wrote it at the join, its token as last read, its host name free. Each is guarded;
        // a round that was wrong about one runs nothing, and the next reads them all.
        let mut hinted = self.hints.take_reservation(node_id);
        for _ in 0..MAX_ROUNDS {
            let (resv, first) = match hinted.take() {
                Some(r) => (Some(r), true),
                None => (self.conn.get::<Reservation>(&resv_key).await?, false),
            };
            let mut r = match rules::commit_reservation(resv, now) {
                Ok(r) => r,
                Err(CommitStop::Already) => return self.already_committed(node_id).await,
                Err(CommitStop::Answer(outcome)) => return Ok(outcome),
            };
            let name_key = format!("hostname/{}", r.value.host.hostname);
            let token_key = format!("tokens/{}", r.value.token_id);
            let token_hint = first.then(|| self.hints.token(&r.value.token_id)).flatten();
            let (token, index) = match token_hint {
                Some(t) => (Some(t), None),
                None => {
                    // Read with the host name's index, in one round trip.
                    let read = self.conn.get_many(&[&token_key, &name_key]).await?;
                    let token = conn::got::<TokenRecord>(read[0].as_ref())?;
                    if let Some(t) = &token {
                        self.hints.keep_token(t);
                    }
                    let index = conn::got::<String>(read.get(1).and_then(Option::as_ref))?;
                    (token, index)
                }
            };
            let seen = self.tokens_seen.get(&r.value.token_id);
            let checked = seen.as_ref().or(token.as_ref().map(|t| &t.value));
            if let Some(revoked) = rules::commit_token(&r.value, checked, now) {
                return Ok(revoked);
            }
            let old = match &index {
                Some(ix) if ix.value != node_id => {
                    self.conn
                        .get::<HostRecord>(&format!("hosts/{}", ix.value))
                        .await?
                }
                _ => None,
            };
            let (host, revoke) =
                match rules::commit_decision(&r.value, old.as_ref().map(|o| &o.value), now) {
                    CommitDecision::Answer(outcome) => return Ok(outcome),
                    CommitDecision::Commit { host, revoke } => (host, revoke),
                };
            r.value.committed = true;
            let mut guards = vec![
                self.conn.unchanged(&resv_key, Some(r.rev)),
                self.conn
                    .unchanged(&name_key, index.as_ref().map(|i| i.rev)),
            ];
            // A token with no use limit changes only when revoked, so its guard catches a
            // revocation committing during this commit. One with a limit is not guarded (every
            // join of it changes its record): a revocation committing during this commit may
            // let it through, as if it had come first.
            if let Some(t) = token.as_ref().filter(|t| t.value.max_uses.is_none()) {
                guards.push(self.conn.unchanged(&token_key, Some(t.rev)));
            }
            let mut ops = vec![
                self.conn.put(&format!("hosts/{node_id}"), &host, 0)?,
                self.conn.put(&name_key, &node_id.to_string(), 0)?,
                self.conn.put(&resv_key, &r.value, r.lease)?,
            ];
            if let Some(o) = &old {
                let old_key = format!("hosts/{}", o.value.node_id);
                guards.push(self.conn.unchanged(&old_key, Some(o.rev)));
                ops.push(self.conn.delete(&old_key));
                ops.extend(self.conn.revoke_ops(&revoke)?);
            }
            // An attempt whose answer was lost is known by its events.
            let events = commit_events(&host, old.as_ref().map(|o| &o.value), now, source);
            if self.conn.txn_audited(guards, ops, &events).await? {
                self.names_seen.wrote(&host.host.hostname);
                return Ok(CommitOutcome::Committed {
                    host,
                    replaced: old.map(|o| Box::new(o.value)),
                });
            }
            self.hints.forget_token(&r.value.token_id);
        }
        Err(contended())
    }

    async fn expire_reservations(&self, now: u64) -> StoreResult<Vec<Reservation>> {
        if let Err(e) = sweep::file_events(&self.conn, now).await {
            tracing::warn!(error = %e, "filing audit events failed; the next sweep files them");
        }
        sweep::expire_reservations(&self.conn, now).await
    }

    fn retries(&self) -> u64 {
        self.conn.retries.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn hosts(&self) -> StoreResult<Vec<HostRecord>> {
        let mut all: Vec<HostRecord> = self.conn.list("hosts/").await?;
        all.sort_by(|a, b| a.host.hostname.cmp(&b.host.hostname));
        Ok(all)
    }

    async fn host(&self, node_id: &str) -> StoreResult<Option<HostRecord>> {
        Ok(self
            .conn
            .get::<HostRecord>(&format!("hosts/{node_id}"))
            .await?
            .map(|g| g.value))
    }

    async fn host_named(&self, hostname: &str) -> StoreResult<Option<HostRecord>> {
        // A name the watch never heard of is not asked about: a join under a new name reads
        // nothing here. (Registered meanwhile elsewhere, it is caught by the commit's guard on
        // the name, and refused there if it may not be replaced.)
        if self.names_seen.has(hostname) == Some(false) {
            return Ok(None);
        }
        match self
            .conn
            .get::<String>(&format!("hostname/{hostname}"))
            .await?
        {
            Some(id) => self.host(&id.value).await,
            None => Ok(None),
        }
    }

    async fn heartbeat(
        &self,
        node_id: &str,
        now: u64,
        memory_used_mb: u64,
        agent_version: Option<&str>,
    ) -> StoreResult<Option<HostRecord>> {
        let beat = |h: &mut HostRecord| {
            h.last_heartbeat = now;
            h.memory_used_mb = memory_used_mb;
            h.agent_version = agent_version.map(str::to_string);
            vec![]
        };
        self.update_host(node_id, beat, None).await
    }

    async fn set_roles(
        &self,
        node_id: &str,
        roles: &[Role],
        pending: &[Role],
        e: &AuditEvent,
    ) -> StoreResult<Option<HostRecord>> {
        let set = |h: &mut HostRecord| {
            h.roles = roles.to_vec();
            h.pending_roles = pending.to_vec();
            vec![]
        };
        self.update_host(node_id, set, Some(e)).await
    }

    async fn replace_certs(
        &self,
        node_id: &str,
        serials: &[String],
        keep: &[String],
        not_after: u64,
    ) -> StoreResult<Option<HostRecord>> {
        self.update_host(
            node_id,
            |h| {
                let (kept, gone) = rules::split_serials(&h.serials, serials, keep);
                h.cert_not_after = not_after;
                h.serials = serials.iter().cloned().chain(kept).collect();
                gone
            },
            None,
        )
        .await
    }

    async fn lowercase_host_name(&self, node_id: &str) -> StoreResult<bool> {
        let host_key = format!("hosts/{node_id}");
        for _ in 0..MAX_ROUNDS {
            let Some(mut h) = self.conn.get::<HostRecord>(&host_key).await? else {
                return Ok(false);
            };
            let old = h.value.host.hostname.clone();
            let lower = old.to_ascii_lowercase();
            if lower == old {
                return Ok(false);
            }
            let new_key = format!("hostname/{lower}");
            if self.conn.get::<String>(&new_key).await?.is_some() {
                return Ok(false);
            }
            let old_key = format!("hostname/{old}");
            let index = self.conn.get::<String>(&old_key).await?;
            h.value.host.hostname = lower.clone();
            let mut guards = vec![
                self.conn.unchanged(&host_key, Some(h.rev)),
                self.conn.unchanged(&new_key, None),
            ];
            let mut ops = vec![
                self.conn.put(&host_key, &h.value, 0)?,
                self.conn.put(&new_key, &node_id.to_string(), 0)?,
            ];
            if let Some(ix) = index.filter(|ix| ix.value == node_id) {
                guards.push(self.conn.unchanged(&old_key, Some(ix.rev)));
                ops.push(self.conn.delete(&old_key));
            }
            if self.conn.txn(guards, ops).await? {
                self.names_seen.wrote(&lower);
                return Ok(true);
            }
        }
        Err(contended())
    }

    async fn remove_host(&self, node_id: &str, e: &AuditEvent) -> StoreResult<Option<HostRecord>> {
        let host_key = format!("hosts/{node_id}");
        for _ in 0..MAX_ROUNDS {
            let Some(h) = self.conn.get::<HostRecord>(&host_key).await? else {
                return Ok(None);
            };
            let name_key = format!("hostname/{}", h.value.host.hostname);
            let mut guards = vec![self.conn.unchanged(&host_key, Some(h.rev))];
            let mut ops = vec![self.conn.delete(&host_key)];
            if let Some(ix) = self.conn.get::<String>(&name_key).await? {
                if ix.value == node_id {
                    guards.push(self.conn.unchanged(&name_key, Some(ix.rev)));
                    ops.push(self.conn.delete(&name_key));
                }
            }
            ops.extend(self.conn.revoke_ops(&h.value.serials)?);
            let event = about_host(e, &h.value);
            if self
                .conn
                .txn_audited(guards, ops, std::slice::from_ref(&event))
                .await?
            {
                return Ok(Some(h.value));
            }
        }
        Err(contended())
    }

    async fn is_revoked(&self, serial: &str) -> StoreResult<bool> {
        let resp = self
            .conn
            .range(
                &format!("revoked/{serial}"),
                Some(GetOptions::new().with_count_only()),
            )
            .await?;
        Ok(resp.count() > 0)
    }

    async fn audit(&self, e: &AuditEvent) -> StoreResult<()> {
        for _ in 0..MAX_ROUNDS {
            if self
                .conn
                .txn_audited(vec![], vec![], std::slice::from_ref(e))
                .await?
            {
                return Ok(());
            }
        }
        Err(contended())
    }

    async fn audit_log(&self, after: u64, limit: u32) -> StoreResult<Vec<AuditEvent>> {
        // The events not filed yet (a few seconds' worth), then the filed ones at the same
        // revision: an event the sweep files between the two reads is seen once, not lost.
        let mut events = Vec::new();
        let mut page = None;
        let mut at = 0;
        while let Some(kvs) = self.conn.scan(AUDIT_WAITING, &mut page).await? {
            at = page.as_ref().map_or(at, |(rev, _)| *rev);
            for kv in &kvs {
                let e = txn::waiting_event(kv)?;
                if e.seq > after {
                    events.push(e);
                }
            }
        }
        // "audit0" is the first key after every "audit/…" key.
        let opts = GetOptions::new()
            .with_range(self.conn.key("audit0"))
            .with_limit(i64::from(limit.max(1)))
            .with_revision(at);
        let resp = self
            .conn
            .range(&audit_key(after.saturating_add(1)), Some(opts))
            .await?;
        for kv in resp.kvs() {
            events.push(decode(kv)?);
        }
        events.sort_by_key(|e| e.seq);
        events.truncate(limit.max(1) as usize);
        Ok(events)
    }

    async fn publish_names(&self, id: &str, names: &[String]) -> StoreResult<()> {
        let (key, value) = (
            self.conn.key(&format!("coordinator-names/{id}")),
            json(&names)?,
        );
        self.conn
            .call(|mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move { c.put(key, value, None).await }
            })
            .await?;
        Ok(())
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
        let lists: Vec<Vec<String>> = self.conn.list("coordinator-names/").await?;
        Ok(lists.into_iter().flatten().collect())
    }
}
