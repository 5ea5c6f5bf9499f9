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
//! | `audit-seq`, `audit/{seq:020}` | the audit counter and events |
//!
//! Every protocol step is one etcd transaction guarded by the mod revisions of the keys it
//! read: a step that lost a race to another coordinator reads again and retries. So a one-use
//! token is used once across coordinators, and a revoked token is refused by every coordinator
//! from the moment the revocation commits. Reservations have no lease: only the sweeper on a
//! coordinator expires them, returning their token use exactly once (by the same
//! compare-and-swap) and revoking their certificates, however long every coordinator was down.
//! etcd dropping them on its own would do neither.
//!
//! A watch on `tokens/` drops a revoked token on every coordinator at once: each keeps the
//! revoked token records the watch delivers and refuses them without asking etcd again.
//! Revocation is final, so such a record never goes stale; every other token read goes to etcd
//! (linearizable), and the reservation re-reads its token inside its transaction, so a watch
//! event still in flight can never let a revoked token through.

use super::*;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, GetResponse,
    Identity, KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long an expired ephemeral token stays readable (for audit and clear refusals).
const TOKEN_RETENTION_SECS: i64 = 86_400;
/// Compare-and-swap rounds before a step gives up as contended.
const MAX_ROUNDS: u32 = 1000;
/// Records read per request by a scan: etcd-client decodes answers of at most 4 MiB, and a
/// reservation (two certificates) is about 3 KB, a host about 1 KB.
const PAGE: i64 = 256;

pub struct EtcdStore {
    /// One client per endpoint. The one in use changes when its member stops answering:
    /// tonic's balancer keeps sending to a dead member, so failover is done here.
    clients: Vec<Client>,
    current: std::sync::atomic::AtomicUsize,
    prefix: String,
    tokens_seen: Arc<TokenCopy>,
    watcher: tokio::task::JoinHandle<()>,
    /// Tests: how many more transaction answers to lose after etcd applied them, as a member
    /// that dies before it answers does.
    #[cfg(test)]
    lose_answers: std::sync::atomic::AtomicU32,
}

/// What a guarded transaction came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    /// Its guards held and its writes were made.
    Yes,
    /// Its guards did not hold: nothing was written.
    No,
    /// Its guards did not hold on a retry, after an attempt whose answer never came: that
    /// attempt may have made the writes (and so broken the guards). The caller reads again and
    /// tells by what it finds.
    Unsure,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// The revoked token records, as the watch on `tokens/` delivered them.
#[derive(Default)]
struct TokenCopy {
    revoked: RwLock<HashMap<String, TokenRecord>>,
}

impl TokenCopy {
    fn get(&self, id: &str) -> Option<TokenRecord> {
        self.revoked.read().ok()?.get(id).cloned()
    }

    fn set(&self, records: HashMap<String, TokenRecord>) {
        if let Ok(mut r) = self.revoked.write() {
            *r = records;
        }
    }

    fn apply(&self, tokens_key: &str, kind: EventType, kv: &KeyValue) {
        let Some(id) = kv
            .key_str()
            .ok()
            .and_then(|k| k.strip_prefix(tokens_key))
            .map(str::to_string)
        else {
            return;
        };
        let Ok(mut r) = self.revoked.write() else {
            return;
        };
        match kind {
            // An expired ephemeral token's lease ran out: etcd says it is gone.
            EventType::Delete => {
                r.remove(&id);
            }
            EventType::Put => {
                if let Ok(t) = decode::<TokenRecord>(kv) {
                    if t.revoked && !r.contains_key(&id) {
                        tracing::info!(token_id = %id, "token revoked; dropped on this coordinator");
                        r.insert(id, t);
                    }
                }
            }
        }
    }
}

/// Keeps `copy` current: reads every token record, then watches from the next revision, so no
/// change falls between the two; starts over on the next member when the stream breaks.
async fn watch_tokens(clients: Vec<Client>, tokens_key: String, copy: Arc<TokenCopy>) {
    let mut attempt = 0usize;
    loop {
        let mut c = clients[attempt % clients.len()].clone();
        attempt += 1;
        let run = async {
            // A page at a time, at the first page's revision: a day of ephemeral tokens can
            // outgrow one answer.
            let end = prefix_end(tokens_key.as_bytes());
            let mut start = tokens_key.clone().into_bytes();
            let mut rev = 0;
            let mut records = HashMap::new();
            loop {
                let (kvs, at, next) = read_page(&mut c, start, end.clone(), rev).await?;
                rev = at;
                for kv in &kvs {
                    if let Ok(t) = decode::<TokenRecord>(kv) {
                        if t.revoked {
                            records.insert(t.id.clone(), t);
                        }
                    }
                }
                if next.is_empty() {
                    break;
                }
                start = next;
            }
            copy.set(records);
            let mut stream = c
                .watch(
                    tokens_key.clone(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(rev + 1),
                    ),
                )
                .await?;
            while let Some(resp) = stream.message().await? {
                if resp.canceled() {
                    break;
                }
                for ev in resp.events() {
                    if let Some(kv) = ev.kv() {
                        copy.apply(&tokens_key, ev.event_type(), kv);
                    }
                }
            }
            Ok::<(), etcd_client::Error>(())
        };
        match run.await {
            Ok(()) => tracing::debug!("token watch ended; starting it again"),
            Err(e) => tracing::debug!(error = %e, "token watch broke; starting it again"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A value read with what its transaction must guard on.
struct Got<T> {
    value: T,
    rev: i64,
    lease: i64,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

/// Whether the member could not be reached (so another may answer), rather than refusing.
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ),
        _ => false,
    }
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> StoreResult<T> {
    serde_json::from_slice(kv.value())
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", String::from_utf8_lossy(kv.key()))))
}

/// Up to [`PAGE`] keys from `start` to before `end`, read at revision `rev` (0: the latest);
/// with the revision read at and where the next page starts (empty after the last).
async fn read_page(
    c: &mut Client,
    start: Vec<u8>,
    end: Vec<u8>,
    rev: i64,
) -> Result<(Vec<KeyValue>, i64, Vec<u8>), etcd_client::Error> {
    let opts = GetOptions::new()
        .with_range(end)
        .with_limit(PAGE)
        .with_revision(rev);
    let mut resp = c.get(start, Some(opts)).await?;
    let rev = match rev {
        0 => resp.header().map_or(0, |h| h.revision()),
        r => r,
    };
    let more = resp.more();
    let kvs = resp.take_kvs();
    // Just past this page's last key.
    let next = match (more, kvs.last()) {
        (true, Some(last)) => [last.key(), &[0]].concat(),
        _ => Vec::new(),
    };
    Ok((kvs, rev, next))
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix):
/// the prefix with its last byte below 0xff raised by one and what follows dropped.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes (or nothing): every key from here on, as etcd spells it.
    vec![0]
}

fn json<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl EtcdStore {
    /// Connects to `cfg.endpoints` (TLS when `cfg.tls` is set) and checks the cluster answers.
    pub async fn connect(cfg: &crate::config::EtcdConfig) -> anyhow::Result<EtcdStore> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some(tls) = &cfg.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca {
                let pem = std::fs::read(ca)
                    .map_err(|e| anyhow::anyhow!("reading etcd CA {}: {e}", ca.display()))?;
                t = t.ca_certificate(Certificate::from_pem(pem));
            }
            match (&tls.cert, &tls.key) {
                (Some(c), Some(k)) => {
                    let cert = std::fs::read(c)
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", c.display()))?;
                    let key = zeroize::Zeroizing::new(
                        std::fs::read(k)
                            .map_err(|e| anyhow::anyhow!("reading {}: {e}", k.display()))?,
                    );
                    t = t.identity(Identity::from_pem(cert, key.as_slice()));
                }
                (None, None) => {}
                _ => anyhow::bail!("store.etcd.tls needs both cert and key, or neither"),
            }
            opts = opts.with_tls(t);
        }
        anyhow::ensure!(!cfg.endpoints.is_empty(), "store.etcd.endpoints is empty");
        let mut clients = Vec::new();
        for ep in &cfg.endpoints {
            // Connections are made lazily: a member that is down now is tried when needed.
            clients.push(
                Client::connect([ep], Some(opts.clone()))
                    .await
                    .map_err(|e| anyhow::anyhow!("etcd endpoint {ep}: {e}"))?,
            );
        }
        let mut prefix = cfg.prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let tokens_seen = Arc::new(TokenCopy::default());
        let watcher = tokio::spawn(watch_tokens(
            clients.clone(),
            format!("{prefix}tokens/"),
            tokens_seen.clone(),
        ));
        let store = EtcdStore {
            clients,
            current: 0.into(),
            prefix,
            tokens_seen,
            watcher,
            #[cfg(test)]
            lose_answers: 0.into(),
        };
        store
            .call(|mut c| async move { c.status().await })
            .await
            .map_err(|e| anyhow::anyhow!("etcd at {:?} does not answer: {e}", cfg.endpoints))?;
        Ok(store)
    }

    /// Runs one etcd request, moving on to the next member when one cannot be reached. A
    /// request retried this way may have been applied already; every step reads again and
    /// guards its writes, so it then finds its own result.
    async fn call<T, F, Fut>(&self, f: F) -> StoreResult<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let mut last = None;
        for _ in 0..2 * n {
            let i = self.current.load(Ordering::Relaxed) % n;
            match f(self.clients[i].clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if unreachable(&e) => {
                    let _ = self.current.compare_exchange(
                        i,
                        (i + 1) % n,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    last = Some(e);
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(unavailable(last.map(|e| e.to_string()).unwrap_or_default()))
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// One read of `rest` (under the prefix) with `opts`.
    async fn range(&self, rest: &str, opts: Option<GetOptions>) -> StoreResult<GetResponse> {
        let key = self.key(rest);
        self.call(|mut c| {
            let (key, opts) = (key.clone(), opts.clone());
            async move { c.get(key, opts).await }
        })
        .await
    }

    async fn get<T: DeserializeOwned>(&self, rest: &str) -> StoreResult<Option<Got<T>>> {
        let resp = self.range(rest, None).await?;
        match resp.kvs().first() {
            Some(kv) => Ok(Some(Got {
                value: decode(kv)?,
                rev: kv.mod_revision(),
                lease: kv.lease(),
            })),
            None => Ok(None),
        }
    }

    /// Every record under `rest`, in key order.
    async fn list<T: DeserializeOwned>(&self, rest: &str) -> StoreResult<Vec<T>> {
        let mut all = Vec::new();
        let mut page = None;
        while let Some(kvs) = self.scan(rest, &mut page).await? {
            for kv in &kvs {
                all.push(decode(kv)?);
            }
        }
        Ok(all)
    }

    /// The next page of the keys under `rest`, in key order, or `None` past the last one. Every
    /// page is read at the first one's revision, so the pages make one consistent snapshot;
    /// `at` (start with `None`) carries the revision and where to go on from.
    async fn scan(
        &self,
        rest: &str,
        at: &mut Option<(i64, Vec<u8>)>,
    ) -> StoreResult<Option<Vec<KeyValue>>> {
        let prefix = self.key(rest).into_bytes();
        let (rev, start) = match at.take() {
            Some((_, start)) if start.is_empty() => return Ok(None),
            Some((rev, start)) => (rev, start),
            None => (0, prefix.clone()),
        };
        let end = prefix_end(&prefix);
        let (kvs, rev, next) = self
            .call(|mut c| {
                let (start, end) = (start.clone(), end.clone());
                async move { read_page(&mut c, start, end, rev).await }
            })
            .await?;
        *at = Some((rev, next));
        Ok(Some(kvs))
    }

    /// Expires the reservations of one page that are past `now`, each in a transaction
    /// guarded by what it read. A record that does not decode is named in the log and left:
    /// one bad record must not stop every later reservation from expiring.
    async fn expire_page(
        &self,
        kvs: &[KeyValue],
        now: u64,
        expired: &mut Vec<Reservation>,
    ) -> StoreResult<()> {
        for kv in kvs {
            let mut r: Reservation = match decode(kv) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "store: a reservation record does not read; left for an operator");
                    continue;
                }
            };
            let resv_key = format!("resv/{}", r.node_id);
            let mut rev = kv.mod_revision();
            let mut rounds = 0;
            while r.expires_at <= now {
                rounds += 1;
                if rounds > MAX_ROUNDS {
                    tracing::warn!(node_id = %r.node_id, "store: a reservation kept changing while it expired; left for the next sweep");
                    break;
                }
                if self.expire_one(&r, rev, now).await? == Ran::Yes {
                    if !r.committed {
                        expired.push(r);
                    }
                    break;
                }
                // Changed since it was read (committed, say), or the audit log grew meanwhile:
                // go again with what is there now. Gone: another coordinator's sweep ended it
                // (and audited it), or this one's lost attempt at a committed reservation did.
                match self.get::<Reservation>(&resv_key).await {
                    Ok(Some(again)) => (r, rev) = (again.value, again.rev),
                    Ok(None) | Err(StoreError::Corrupt(_)) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// One expired reservation `r`, read at revision `rev`, removed; its use given back and
    /// audited if it was not committed (and then a lost answer is known by its event).
    async fn expire_one(&self, r: &Reservation, rev: i64, now: u64) -> StoreResult<Ran> {
        let resv_key = format!("resv/{}", r.node_id);
        let index_key = format!("resv-key/{}/{}", r.token_id, r.key_hash);
        let mut guards = vec![self.unchanged(&resv_key, Some(rev))];
        let mut ops = vec![self.delete(&resv_key)];
        // The key's index goes only if it still points here: the same key may have joined
        // again since, and its new reservation keeps its index.
        if let Some(ix) = self.get::<String>(&index_key).await? {
            if ix.value == r.node_id {
                guards.push(self.unchanged(&index_key, Some(ix.rev)));
                ops.push(self.delete(&index_key));
            }
        }
        if !r.committed {
            // Give the use back in the same transaction; if another coordinator expires
            // this reservation first, the guard fails and the use is not given twice.
            let token_key = format!("tokens/{}", r.token_id);
            match self.get::<TokenRecord>(&token_key).await {
                Ok(Some(mut t)) => {
                    t.value.uses = t.value.uses.saturating_sub(1);
                    guards.push(self.unchanged(&token_key, Some(t.rev)));
                    ops.push(self.put(&token_key, &t.value, t.lease)?);
                }
                Ok(None) => {}
                // Its certificates are still revoked and the reservation still ends.
                Err(StoreError::Corrupt(e)) => {
                    tracing::warn!(token_id = %r.token_id, error = %e, "store: a token record does not read; its use is not given back")
                }
                Err(e) => return Err(e),
            }
            ops.extend(self.revoke_ops(&r.serials)?);
            let events = [super::returned_event(r, now)];
            let ran = self.txn_audited(guards, ops, &events).await?;
            return Ok(if ran { Ran::Yes } else { Ran::No });
        }
        self.txn_ran(guards, ops).await
    }

    /// The guard that `rest` is as it was read: same mod revision, or still absent.
    fn unchanged(&self, rest: &str, rev: Option<i64>) -> Compare {
        match rev {
            Some(r) => Compare::mod_revision(self.key(rest), CompareOp::Equal, r),
            None => Compare::version(self.key(rest), CompareOp::Equal, 0),
        }
    }

    fn put<T: Serialize>(&self, rest: &str, v: &T, lease: i64) -> StoreResult<TxnOp> {
        let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        Ok(TxnOp::put(self.key(rest), json(v)?, opts))
    }

    fn delete(&self, rest: &str) -> TxnOp {
        TxnOp::delete(self.key(rest), None)
    }

    /// Runs `ops` if every guard holds; whether it ran. A step that must tell its own earlier
    /// attempt from somebody else's change uses [`EtcdStore::txn_ran`].
    async fn txn(&self, guards: Vec<Compare>, ops: Vec<TxnOp>) -> StoreResult<bool> {
        Ok(self.txn_ran(guards, ops).await? == Ran::Yes)
    }

    /// Runs `ops` if every guard holds: whether it ran, did not, or may have on an attempt
    /// whose answer was lost.
    async fn txn_ran(&self, guards: Vec<Compare>, ops: Vec<TxnOp>) -> StoreResult<Ran> {
        let txn = Txn::new().when(guards).and_then(ops);
        let lost = std::sync::atomic::AtomicBool::new(false);
        let resp = self
            .call(|mut c| {
                let txn = txn.clone();
                let lost = &lost;
                async move {
                    let answer = c.txn(txn).await;
                    #[cfg(test)]
                    let answer = match answer {
                        Ok(_) if self.lose_answer() => Err(etcd_client::Error::IoError(
                            std::io::Error::other("answer lost (test)"),
                        )),
                        other => other,
                    };
                    if answer.as_ref().is_err_and(unreachable) {
                        lost.store(true, Ordering::Relaxed);
                    }
                    answer
                }
            })
            .await?;
        Ok(if resp.succeeded() {
            Ran::Yes
        } else if lost.load(Ordering::Relaxed) {
            Ran::Unsure
        } else {
            Ran::No
        })
    }

    /// Tests: whether to lose this answer.
    #[cfg(test)]
    fn lose_answer(&self) -> bool {
        self.lose_answers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    async fn lease(&self, ttl_secs: i64) -> StoreResult<i64> {
        let resp = self
            .call(|mut c| async move { c.lease_grant(ttl_secs.max(1), None).await })
            .await?;
        Ok(resp.id())
    }

    /// Where the next audit events go: the guard that nobody appended meanwhile, and the
    /// number of the first.
    async fn audit_slot(&self) -> StoreResult<(Compare, u64)> {
        let last = self.get::<u64>(AUDIT_SEQ).await?;
        let guard = self.unchanged(AUDIT_SEQ, last.as_ref().map(|s| s.rev));
        Ok((guard, last.map_or(0, |s| s.value) + 1))
    }

    /// The writes appending `events`, numbered from `first` on (from [`Self::audit_slot`],
    /// whose guard goes with them).
    fn audit_ops(&self, first: u64, events: &[AuditEvent]) -> StoreResult<Vec<TxnOp>> {
        let mut ops = Vec::with_capacity(events.len() + 1);
        let mut seq = first;
        for e in events {
            let e = AuditEvent { seq, ..e.clone() };
            ops.push(self.put(&audit_key(seq), &e, 0)?);
            seq += 1;
        }
        if seq > first {
            ops.push(self.put(AUDIT_SEQ, &(seq - 1), 0)?);
        }
        Ok(ops)
    }

    /// Runs `ops` if every guard holds and nobody appended to the audit log meanwhile,
    /// appending `events` (at least one: they are what tells a lost answer) in the same
    /// transaction; whether it ran. An attempt whose answer was lost ran if its first event is
    /// there under the number it was given: only a transaction guarded as this one writes that
    /// number, so it is this attempt, or another step making the same change at the same second
    /// from the same source (the same event, and the same outcome).
    async fn txn_audited(
        &self,
        mut guards: Vec<Compare>,
        mut ops: Vec<TxnOp>,
        events: &[AuditEvent],
    ) -> StoreResult<bool> {
        debug_assert!(!events.is_empty(), "a lost answer is told by its event");
        let (guard, seq) = self.audit_slot().await?;
        guards.push(guard);
        ops.extend(self.audit_ops(seq, events)?);
        Ok(match self.txn_ran(guards, ops).await? {
            Ran::Yes => true,
            Ran::No => false,
            Ran::Unsure => match events.first() {
                Some(e) => self
                    .get::<AuditEvent>(&audit_key(seq))
                    .await?
                    .is_some_and(|there| there.value == AuditEvent { seq, ..e.clone() }),
                None => false,
            },
        })
    }

    fn revoke_ops(&self, serials: &[String]) -> StoreResult<Vec<TxnOp>> {
        serials
            .iter()
            .map(|s| self.put(&format!("revoked/{s}"), &(), 0))
            .collect()
    }

    /// Reads a host, changes it with `f`, writes it back if nobody changed it meanwhile.
    async fn update_host(
        &self,
        node_id: &str,
        mut f: impl FnMut(&mut HostRecord) -> Vec<String>,
    ) -> StoreResult<Option<HostRecord>> {
        let rest = format!("hosts/{node_id}");
        for _ in 0..MAX_ROUNDS {
            let Some(mut h) = self.get::<HostRecord>(&rest).await? else {
                return Ok(None);
            };
            let revoke = f(&mut h.value);
            let mut ops = vec![self.put(&rest, &h.value, 0)?];
            ops.extend(self.revoke_ops(&revoke)?);
            if self
                .txn(vec![self.unchanged(&rest, Some(h.rev))], ops)
                .await?
            {
                return Ok(Some(h.value));
            }
        }
        Err(contended())
    }

    async fn already_committed(&self, node_id: &str) -> StoreResult<CommitOutcome> {
        Ok(
            match self.get::<HostRecord>(&format!("hosts/{node_id}")).await? {
                Some(h) => CommitOutcome::AlreadyCommitted(Box::new(h.value)),
                None => CommitOutcome::Unknown,
            },
        )
    }
}

/// The last audit event's number.
const AUDIT_SEQ: &str = "audit-seq";

/// Where audit event `seq` is kept: zero-padded, so the keys sort as the numbers do.
fn audit_key(seq: u64) -> String {
    format!("audit/{seq:020}")
}

fn contended() -> StoreError {
    StoreError::Unavailable("etcd: too many concurrent changes to the same records; retry".into())
}

#[async_trait]
impl Store for EtcdStore {
    async fn init_platform(&self, record: &[u8]) -> StoreResult<bool> {
        match self
            .txn_ran(
                vec![self.unchanged("platform", None)],
                vec![TxnOp::put(self.key("platform"), record, None)],
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
        let resp = self.range("platform", None).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn insert_token(&self, t: &TokenRecord, created: Option<&AuditEvent>) -> StoreResult<()> {
        let lease = match t.expires {
            Some(e) => {
                let ttl = e.saturating_sub(t.created) as i64
                    + muster_protocol::token::LEEWAY_SECS as i64
                    + TOKEN_RETENTION_SECS;
                self.lease(ttl).await?
            }
            None => 0,
        };
        let op = self.put(&format!("tokens/{}", t.id), t, lease)?;
        let Some(e) = created else {
            self.txn(vec![], vec![op]).await?;
            return Ok(());
        };
        for _ in 0..MAX_ROUNDS {
            let events = std::slice::from_ref(e);
            if self.txn_audited(vec![], vec![op.clone()], events).await? {
                return Ok(());
            }
        }
        Err(contended())
    }

    async fn token(&self, id: &str) -> StoreResult<Option<TokenRecord>> {
        if let Some(t) = self.tokens_seen.get(id) {
            return Ok(Some(t));
        }
        Ok(self
            .get::<TokenRecord>(&format!("tokens/{id}"))
            .await?
            .map(|g| g.value))
    }

    async fn tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let mut all: Vec<TokenRecord> = self.list("tokens/").await?;
        all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(all)
    }

    async fn revoke_token(&self, id: &str, e: &AuditEvent) -> StoreResult<bool> {
        let rest = format!("tokens/{id}");
        for _ in 0..MAX_ROUNDS {
            let Some(mut t) = self.get::<TokenRecord>(&rest).await? else {
                return Ok(false);
            };
            if t.value.revoked {
                return Ok(false);
            }
            t.value.revoked = true;
            let op = self.put(&rest, &t.value, t.lease)?;
            let guard = self.unchanged(&rest, Some(t.rev));
            if self
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
        for _ in 0..MAX_ROUNDS {
            let Some(mut t) = self.get::<TokenRecord>(&token_key).await? else {
                return Ok(ReserveOutcome::UnknownToken);
            };
            if t.value.revoked {
                return Ok(ReserveOutcome::Revoked);
            }
            let index = self.get::<String>(&index_key).await?;
            if let Some(ix) = &index {
                if let Some(existing) = self
                    .get::<Reservation>(&format!("resv/{}", ix.value))
                    .await?
                {
                    if existing.value.expires_at > now {
                        return Ok(ReserveOutcome::Existing(Box::new(existing.value)));
                    }
                }
            }
            if t.value.max_uses.is_some_and(|max| t.value.uses >= max) {
                return Ok(ReserveOutcome::UseLimitReached);
            }
            t.value.uses += 1;
            let (audit_guard, seq) = self.audit_slot().await?;
            let guards = vec![
                self.unchanged(&token_key, Some(t.rev)),
                self.unchanged(&index_key, index.as_ref().map(|i| i.rev)),
                audit_guard,
            ];
            let mut ops = vec![
                self.put(&token_key, &t.value, t.lease)?,
                self.put(&format!("resv/{}", r.node_id), r, 0)?,
                self.put(&index_key, &r.node_id, 0)?,
            ];
            ops.extend(self.audit_ops(seq, &[super::used_event(r, now)])?);
            // An attempt whose answer was lost is found by the next round as this join's own
            // reservation (`Existing` with this node id), its use and event written with it.
            if self.txn(guards, ops).await? {
                return Ok(ReserveOutcome::Reserved);
            }
        }
        Err(contended())
    }

    async fn reservation(&self, node_id: &str) -> StoreResult<Option<Reservation>> {
        Ok(self
            .get::<Reservation>(&format!("resv/{node_id}"))
            .await?
            .map(|g| g.value))
    }

    async fn commit(&self, node_id: &str, now: u64, source: &str) -> StoreResult<CommitOutcome> {
        let resv_key = format!("resv/{node_id}");
        for _ in 0..MAX_ROUNDS {
            let mut r = match self.get::<Reservation>(&resv_key).await? {
                Some(r) if !r.value.committed => r,
                _ => return self.already_committed(node_id).await,
            };
            if r.value.expires_at <= now {
                return Ok(CommitOutcome::Unknown);
            }
            // Not guarded (every join of the token changes its record, and would break the
            // commit's guard): a revocation committing during this commit may let it through,
            // as if it had come first.
            if self
                .token(&r.value.token_id)
                .await?
                .is_some_and(|t| super::revoked_before_commit(&t, now))
            {
                return Ok(CommitOutcome::TokenRevoked(r.value.token_id));
            }
            let name_key = format!("hostname/{}", r.value.host.hostname);
            let index = self.get::<String>(&name_key).await?;
            let old = match &index {
                Some(ix) if ix.value != node_id => {
                    self.get::<HostRecord>(&format!("hosts/{}", ix.value))
                        .await?
                }
                _ => None,
            };
            if let Some(o) = old
                .as_ref()
                .filter(|o| !super::may_replace(&o.value, &r.value.roles))
            {
                return Ok(CommitOutcome::ReplaceRefused(Box::new(o.value.clone())));
            }
            let v = &r.value;
            let host = HostRecord {
                node_id: v.node_id.clone(),
                token_id: v.token_id.clone(),
                host: v.host.clone(),
                roles: v.roles.clone(),
                pending_roles: v.pending_roles.clone(),
                spki_der: v.spki_der.clone(),
                serials: v.serials.clone(),
                cert_not_after: v.cert_not_after,
                registered_at: now,
                last_heartbeat: now,
                memory_used_mb: 0,
            };
            r.value.committed = true;
            let mut guards = vec![
                self.unchanged(&resv_key, Some(r.rev)),
                self.unchanged(&name_key, index.as_ref().map(|i| i.rev)),
            ];
            let mut ops = vec![
                self.put(&format!("hosts/{node_id}"), &host, 0)?,
                self.put(&name_key, &node_id.to_string(), 0)?,
                self.put(&resv_key, &r.value, r.lease)?,
            ];
            if let Some(o) = &old {
                let old_key = format!("hosts/{}", o.value.node_id);
                guards.push(self.unchanged(&old_key, Some(o.rev)));
                ops.push(self.delete(&old_key));
                ops.extend(self.revoke_ops(&o.value.serials)?);
            }
            // An attempt whose answer was lost is known by its events.
            let events = super::commit_events(&host, old.as_ref().map(|o| &o.value), now, source);
            if self.txn_audited(guards, ops, &events).await? {
                return Ok(CommitOutcome::Committed {
                    host: Box::new(host),
                    replaced: old.map(|o| Box::new(o.value)),
                });
            }
        }
        Err(contended())
    }

    async fn expire_reservations(&self, now: u64) -> StoreResult<Vec<Reservation>> {
        let mut expired = Vec::new();
        let mut page = None;
        loop {
            let step = match self.scan("resv/", &mut page).await {
                Ok(Some(kvs)) => self.expire_page(&kvs, now, &mut expired).await,
                Ok(None) => break,
                Err(e) => Err(e),
            };
            match step {
                Ok(()) => {}
                // What expired is done (uses given back, certificates revoked and audited): it
                // is answered for the metrics and the log; the rest waits for the next sweep
                // (say, the first page's revision was compacted meanwhile).
                Err(e) if !expired.is_empty() => {
                    tracing::warn!(error = %e, "reservation sweep stopped part-way; the rest waits for the next one");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(expired)
    }

    async fn hosts(&self) -> StoreResult<Vec<HostRecord>> {
        let mut all: Vec<HostRecord> = self.list("hosts/").await?;
        all.sort_by(|a, b| a.host.hostname.cmp(&b.host.hostname));
        Ok(all)
    }

    async fn host(&self, node_id: &str) -> StoreResult<Option<HostRecord>> {
        Ok(self
            .get::<HostRecord>(&format!("hosts/{node_id}"))
            .await?
            .map(|g| g.value))
    }

    async fn host_named(&self, hostname: &str) -> StoreResult<Option<HostRecord>> {
        match self.get::<String>(&format!("hostname/{hostname}")).await? {
            Some(id) => self.host(&id.value).await,
            None => Ok(None),
        }
    }

    async fn heartbeat(
        &self,
        node_id: &str,
        now: u64,
        memory_used_mb: u64,
    ) -> StoreResult<Option<HostRecord>> {
        self.update_host(node_id, |h| {
            h.last_heartbeat = now;
            h.memory_used_mb = memory_used_mb;
            vec![]
        })
        .await
    }

    async fn set_roles(
        &self,
        node_id: &str,
        roles: &[Role],
        pending: &[Role],
    ) -> StoreResult<Option<HostRecord>> {
        self.update_host(node_id, |h| {
            h.roles = roles.to_vec();
            h.pending_roles = pending.to_vec();
            vec![]
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
        self.update_host(node_id, |h| {
            let (kept, gone) = super::split_serials(&h.serials, serials, keep);
            h.cert_not_after = not_after;
            h.serials = serials.iter().cloned().chain(kept).collect();
            gone
        })
        .await
    }

    async fn lowercase_host_name(&self, node_id: &str) -> StoreResult<bool> {
        let host_key = format!("hosts/{node_id}");
        for _ in 0..MAX_ROUNDS {
            let Some(mut h) = self.get::<HostRecord>(&host_key).await? else {
                return Ok(false);
            };
            let old = h.value.host.hostname.clone();
            let lower = old.to_ascii_lowercase();
            if lower == old {
                return Ok(false);
            }
            let new_key = format!("hostname/{lower}");
            if self.get::<String>(&new_key).await?.is_some() {
                return Ok(false);
            }
            let old_key = format!("hostname/{old}");
            let index = self.get::<String>(&old_key).await?;
            h.value.host.hostname = lower;
            let mut guards = vec![
                self.unchanged(&host_key, Some(h.rev)),
                self.unchanged(&new_key, None),
            ];
            let mut ops = vec![
                self.put(&host_key, &h.value, 0)?,
                self.put(&new_key, &node_id.to_string(), 0)?,
            ];
            if let Some(ix) = index.filter(|ix| ix.value == node_id) {
                guards.push(self.unchanged(&old_key, Some(ix.rev)));
                ops.push(self.delete(&old_key));
            }
            if self.txn(guards, ops).await? {
                return Ok(true);
            }
        }
        Err(contended())
    }

    async fn remove_host(&self, node_id: &str, e: &AuditEvent) -> StoreResult<Option<HostRecord>> {
        let host_key = format!("hosts/{node_id}");
        for _ in 0..MAX_ROUNDS {
            let Some(h) = self.get::<HostRecord>(&host_key).await? else {
                return Ok(None);
            };
            let name_key = format!("hostname/{}", h.value.host.hostname);
            let mut guards = vec![self.unchanged(&host_key, Some(h.rev))];
            let mut ops = vec![self.delete(&host_key)];
            if let Some(ix) = self.get::<String>(&name_key).await? {
                if ix.value == node_id {
                    guards.push(self.unchanged(&name_key, Some(ix.rev)));
                    ops.push(self.delete(&name_key));
                }
            }
            ops.extend(self.revoke_ops(&h.value.serials)?);
            let event = super::about_host(e, &h.value);
            if self
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
                .txn_audited(vec![], vec![], std::slice::from_ref(e))
                .await?
            {
                return Ok(());
            }
        }
        Err(contended())
    }

    async fn audit_log(&self, after: u64, limit: u32) -> StoreResult<Vec<AuditEvent>> {
        // "audit0" is the first key after every "audit/…" key.
        let opts = GetOptions::new()
            .with_range(self.key("audit0"))
            .with_limit(i64::from(limit.max(1)));
        let resp = self
            .range(&audit_key(after.saturating_add(1)), Some(opts))
            .await?;
        resp.kvs().iter().map(decode).collect()
    }

    async fn publish_names(&self, id: &str, names: &[String]) -> StoreResult<()> {
        let (key, value) = (self.key(&format!("coordinator-names/{id}")), json(&names)?);
        self.call(|mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await }
        })
        .await?;
        Ok(())
    }

    async fn coordinator_names(&self) -> StoreResult<Vec<String>> {
        let lists: Vec<Vec<String>> = self.list("coordinator-names/").await?;
        Ok(lists.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_where_etcd_says() {
        assert_eq!(prefix_end(b"/muster/resv/"), b"/muster/resv0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    /// A store on the testkit's etcd (a real member on loopback ports, answering before it
    /// returns), under `prefix`.
    async fn store_on(etcd: &muster_tests::Etcd, prefix: &str) -> anyhow::Result<EtcdStore> {
        let cfg = crate::config::EtcdConfig {
            endpoints: etcd.client_urls.clone(),
            prefix: prefix.into(),
            tls: None,
        };
        EtcdStore::connect(&cfg).await
    }

    #[tokio::test]
    async fn etcd_passes_conformance() -> anyhow::Result<()> {
        let etcd = muster_tests::Etcd::start(1)?;
        let store = store_on(&etcd, "/conformance/").await?;
        crate::store::conformance::run(&store).await
    }

    /// A member that makes a transaction's writes and dies before it answers: the step's
    /// retry finds its guards broken by its own lost attempt and must tell that from somebody
    /// else's change, or a commit is answered "already committed" and never audited, a removal
    /// "no such host", a revocation "already revoked", an audit event appended twice, `init`
    /// refused over its own platform, an expired reservation never audited.
    #[tokio::test]
    async fn a_step_whose_answer_was_lost_knows_its_own_writes() -> anyhow::Result<()> {
        use crate::store::conformance::{reservation, token};
        let etcd = muster_tests::Etcd::start(1)?;
        let store = store_on(&etcd, "/lost/").await?;
        let lose_next = || store.lose_answers.store(1, Ordering::Relaxed);

        lose_next();
        anyhow::ensure!(
            store.init_platform(b"record").await?,
            "init over its own record"
        );
        anyhow::ensure!(!store.init_platform(b"other").await?, "init twice");

        store.insert_token(&token("t", None), None).await?;
        // The join's own reservation, found by the retry (the join takes it as new).
        let r1 = reservation("n1", "t", "k1", "h1", 100);
        lose_next();
        let reserved = store.reserve(&r1, 50).await?;
        anyhow::ensure!(
            reserved == ReserveOutcome::Existing(Box::new(r1)),
            "reserve: {reserved:?}"
        );
        let uses = store.token("t").await?.map(|t| t.uses);
        anyhow::ensure!(uses == Some(1), "one use spent: {uses:?}");
        lose_next();
        let committed = store.commit("n1", 60, "10.0.0.9").await?;
        anyhow::ensure!(
            matches!(committed, CommitOutcome::Committed { .. }),
            "commit: {committed:?}"
        );
        anyhow::ensure!(matches!(
            store.commit("n1", 61, "10.0.0.9").await?,
            CommitOutcome::AlreadyCommitted(_)
        ));

        let e = AuditEvent {
            seq: 0,
            at: 60,
            event: "used".into(),
            token_id: Some("t".into()),
            node_id: Some("n1".into()),
            hostname: Some("h1".into()),
            source: None,
            reason: None,
        };
        lose_next();
        store.audit(&e).await?;
        // The use and the commit were written by the attempts whose answers were lost, with
        // their events, once each.
        let log: Vec<_> = store
            .audit_log(0, 10)
            .await?
            .into_iter()
            .map(|e| (e.seq, e.event))
            .collect();
        let want = [(1, "used"), (2, "committed"), (3, "used")].map(|(n, e)| (n, e.to_string()));
        anyhow::ensure!(log == want, "appended once each: {log:?}");

        // A token's creation whose answer was lost: one token, one event.
        let created = super::super::event(69, "created", Some("t0"), None, None, None);
        lose_next();
        store
            .insert_token(&token("t0", None), Some(&created))
            .await?;
        let found = store.audit_log(3, 10).await?;
        anyhow::ensure!(
            found.len() == 1 && found[0].event == "created" && store.token("t0").await?.is_some(),
            "created once: {found:?}"
        );

        let revoked = super::super::event(70, "revoked", Some("t"), None, None, None);
        let left = super::super::event(71, "host_left", None, None, Some("10.0.0.9"), None);
        lose_next();
        anyhow::ensure!(
            store.revoke_token("t", &revoked).await?,
            "revoked by the lost attempt"
        );
        anyhow::ensure!(
            !store.revoke_token("t", &revoked).await?,
            "not revoked twice"
        );

        lose_next();
        let removed = store.remove_host("n1", &left).await?;
        anyhow::ensure!(
            removed.is_some_and(|h| h.node_id == "n1"),
            "removed by the lost attempt"
        );
        anyhow::ensure!(store.remove_host("n1", &left).await?.is_none());
        // Each audited once, with the change.
        let log: Vec<_> = store
            .audit_log(4, 10)
            .await?
            .into_iter()
            .map(|e| (e.event, e.node_id))
            .collect();
        let want = [
            ("revoked".to_string(), None),
            ("host_left".to_string(), Some("n1".to_string())),
        ];
        anyhow::ensure!(log == want, "revocation and removal audited once: {log:?}");

        // n1's committed reservation goes first, so the lost answer below is n2's expiry.
        anyhow::ensure!(store.expire_reservations(200).await?.is_empty());
        anyhow::ensure!(store
            .range("resv/", Some(GetOptions::new().with_prefix()))
            .await?
            .kvs()
            .is_empty());
        store.insert_token(&token("t2", None), None).await?;
        anyhow::ensure!(
            store
                .reserve(&reservation("n2", "t2", "k2", "h2", 300), 250)
                .await?
                == ReserveOutcome::Reserved
        );
        lose_next();
        let expired = store.expire_reservations(400).await?;
        anyhow::ensure!(
            expired
                .iter()
                .map(|r| r.node_id.as_str())
                .collect::<Vec<_>>()
                == ["n2"],
            "expired: {expired:?}"
        );
        let uses = store.token("t2").await?.map(|t| t.uses);
        anyhow::ensure!(uses == Some(0), "the use given back once: {uses:?}");
        let returned = store.audit_log(0, 100).await?;
        let returned: Vec<_> = returned.iter().filter(|e| e.event == "returned").collect();
        anyhow::ensure!(
            returned.len() == 1 && returned[0].node_id.as_deref() == Some("n2"),
            "the use given back audited once: {returned:?}"
        );
        Ok(())
    }

    /// A reservation stays until a sweep expires it, however long every coordinator was
    /// down: etcd dropping it on its own (a lease running out) would keep its token use spent
    /// and its certificates unrevoked.
    #[tokio::test]
    async fn only_the_sweep_ends_a_reservation() -> anyhow::Result<()> {
        use crate::store::conformance::{reservation, token};
        let etcd = muster_tests::Etcd::start(1)?;
        let store = store_on(&etcd, "/leases/").await?;
        store.insert_token(&token("t", Some(1)), None).await?;
        let r = reservation("n1", "t", "k1", "h1", 100);
        anyhow::ensure!(store.reserve(&r, 50).await? == ReserveOutcome::Reserved);
        for key in ["resv/n1", "resv-key/t/k1"] {
            let got = store.range(key, None).await?;
            let leases: Vec<i64> = got.kvs().iter().map(|kv| kv.lease()).collect();
            anyhow::ensure!(leases == [0], "{key}: leases {leases:?}");
        }
        let expired = store.expire_reservations(1_000_000).await?;
        anyhow::ensure!(expired.len() == 1);
        anyhow::ensure!(store.token("t").await?.map(|t| t.uses) == Some(0));
        for serial in &r.serials {
            anyhow::ensure!(store.is_revoked(serial).await?, "{serial} revoked");
        }
        Ok(())
    }

    /// More records than one etcd answer may hold (etcd-client decodes at most 4 MiB): they
    /// are listed and expired a page at a time, and a record that does not read stops nothing.
    #[tokio::test]
    async fn records_past_one_answers_size_are_read_in_pages() -> anyhow::Result<()> {
        use crate::store::conformance::{reservation, token};
        let etcd = muster_tests::Etcd::start(1)?;
        let store = store_on(&etcd, "/pages/").await?;
        store.insert_token(&token("t", None), None).await?;
        // About 6 KB each, as two real certificates make a reservation about 3 KB: 5 MB.
        let n = 850;
        let pem = "x".repeat(3000);
        for i in 0..n {
            let mut r = reservation(
                &format!("n{i:04}"),
                "t",
                &format!("k{i}"),
                &format!("h{i}"),
                100,
            );
            r.transport_cert_pem = pem.clone();
            r.http_cert_pem = pem.clone();
            anyhow::ensure!(store.reserve(&r, 50).await? == ReserveOutcome::Reserved);
        }
        let listed: Vec<Reservation> = store.list("resv/").await?;
        anyhow::ensure!(listed.len() == n, "listed {} of {n}", listed.len());
        let bad = store.key("resv/n9999-unreadable");
        store
            .call(|mut c| {
                let k = bad.clone();
                async move { c.put(k, "not json", None).await }
            })
            .await?;
        let expired = store.expire_reservations(200).await?;
        anyhow::ensure!(expired.len() == n, "expired {} of {n}", expired.len());
        let uses = store.token("t").await?.map(|t| t.uses);
        anyhow::ensure!(uses == Some(0), "every use given back: {uses:?}");
        Ok(())
    }
}
