//! The connection to the etcd cluster: a client per member, failing over to the next member
//! when one cannot be reached, and the reads every part of the store makes (one key, or every
//! key under a prefix a page at a time).

use crate::store::{StoreError, StoreResult};
use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, GetResponse, Identity, KeyValue, TlsOptions,
    Txn, TxnOp, TxnOpResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Records read per request by a scan: etcd-client decodes answers of at most 4 MiB, and a
/// reservation (two certificates) is about 3 KB, a host about 1 KB.
const PAGE: i64 = 256;

/// The cluster's members, and the prefix every key of the store is under.
pub(super) struct Conn {
    /// One client per endpoint. The one in use changes when its member stops answering:
    /// tonic's balancer keeps sending to a dead member, so failover is done here.
    pub(super) clients: Vec<Client>,
    current: std::sync::atomic::AtomicUsize,
    prefix: String,
    /// Tests: how many more transaction answers to lose after etcd applied them, as a member
    /// that dies before it answers does.
    #[cfg(test)]
    pub(super) lose_answers: std::sync::atomic::AtomicU32,
    /// Guarded transactions whose guards did not hold (each step then reads again and goes
    /// round once more): how contended the store is.
    pub(super) retries: std::sync::atomic::AtomicU64,
}

/// A value read with what its transaction must guard on.
#[derive(Clone)]
pub(super) struct Got<T> {
    pub(super) value: T,
    pub(super) rev: i64,
    pub(super) lease: i64,
}

/// A value read is what the store's decisions look at ([`rules`](crate::store::rules)); what
/// it was read with stays for the transaction.
impl<T> std::borrow::Borrow<T> for Got<T> {
    fn borrow(&self) -> &T {
        &self.value
    }
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

/// Whether the member could not be reached (so another may answer), rather than refusing.
pub(super) fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ),
        _ => false,
    }
}

/// A record read by [`Conn::get_many`], decoded with what its transaction guards on.
pub(super) fn got<T: DeserializeOwned>(kv: Option<&KeyValue>) -> StoreResult<Option<Got<T>>> {
    kv.map(|kv| {
        Ok(Got {
            value: decode(kv)?,
            rev: kv.mod_revision(),
            lease: kv.lease(),
        })
    })
    .transpose()
}

pub(super) fn decode<T: DeserializeOwned>(kv: &KeyValue) -> StoreResult<T> {
    serde_json::from_slice(kv.value())
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", String::from_utf8_lossy(kv.key()))))
}

/// Up to [`PAGE`] keys from `start` to before `end`, read at revision `rev` (0: the latest);
/// with the revision read at and where the next page starts (empty after the last).
pub(super) async fn read_page(
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
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
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

pub(super) fn json<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Conn {
    /// Connects to `cfg.endpoints` (TLS when `cfg.tls` is set), a client per member; nothing
    /// is asked of the cluster yet.
    pub(super) async fn connect(cfg: &crate::config::EtcdConfig) -> anyhow::Result<Conn> {
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
        Ok(Conn {
            clients,
            current: 0.into(),
            prefix,
            #[cfg(test)]
            lose_answers: 0.into(),
            retries: 0.into(),
        })
    }

    /// Runs one etcd request, moving on to the next member when one cannot be reached. A
    /// request retried this way may have been applied already; every step reads again and
    /// guards its writes, so it then finds its own result.
    pub(super) async fn call<T, F, Fut>(&self, f: F) -> StoreResult<T>
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

    pub(super) fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// One read of `rest` (under the prefix) with `opts`.
    pub(super) async fn range(
        &self,
        rest: &str,
        opts: Option<GetOptions>,
    ) -> StoreResult<GetResponse> {
        let key = self.key(rest);
        self.call(|mut c| {
            let (key, opts) = (key.clone(), opts.clone());
            async move { c.get(key, opts).await }
        })
        .await
    }

    /// Several keys under the prefix read in one round trip, at one revision (a transaction of
    /// reads only, which etcd answers without a proposal): each key's record, if there.
    pub(super) async fn get_many(&self, rests: &[&str]) -> StoreResult<Vec<Option<KeyValue>>> {
        let ops: Vec<TxnOp> = rests
            .iter()
            .map(|r| TxnOp::get(self.key(r), None))
            .collect();
        let txn = Txn::new().and_then(ops);
        let resp = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            })
            .collect())
    }

    /// The number of keys under `rest`.
    pub(super) async fn count(&self, rest: &str) -> StoreResult<u64> {
        let opts = GetOptions::new().with_prefix().with_count_only();
        let resp = self.range(rest, Some(opts)).await?;
        Ok(u64::try_from(resp.count()).unwrap_or(0))
    }

    /// The key of a record read, without the store's prefix.
    pub(super) fn rest_of<'a>(&self, kv: &'a KeyValue) -> Option<&'a str> {
        kv.key_str().ok()?.strip_prefix(self.prefix.as_str())
    }

    pub(super) async fn get<T: DeserializeOwned>(&self, rest: &str) -> StoreResult<Option<Got<T>>> {
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
    pub(super) async fn list<T: DeserializeOwned>(&self, rest: &str) -> StoreResult<Vec<T>> {
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
    pub(super) async fn scan(
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

    pub(super) async fn lease(&self, ttl_secs: i64) -> StoreResult<i64> {
        let resp = self
            .call(|mut c| async move { c.lease_grant(ttl_secs.max(1), None).await })
            .await?;
        Ok(resp.id())
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
}
