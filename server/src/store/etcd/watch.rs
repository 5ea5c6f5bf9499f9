//! The watches: every coordinator keeps, from a watch on a prefix, what lets it skip asking
//! etcd. [`TokenCopy`]: the revoked token records (revocation is final, so such a copy never
//! goes stale). [`NameCopy`]: the registered host names, so a join under a new name asks etcd
//! nothing before its reservation (a name registered meanwhile on another coordinator is
//! caught by the commit's guard, as before).

use super::conn::{decode, prefix_end, read_page};
use crate::store::TokenRecord;
use etcd_client::{Client, EventType, KeyValue, WatchOptions};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What a watch keeps: everything under its prefix loaded at one revision, then each change.
pub(super) trait Watched: Send + Sync {
    /// Replaces what was kept with `kvs`, every key under `prefix`.
    fn load(&self, prefix: &str, kvs: &[KeyValue]);
    /// Applies one change.
    fn apply(&self, prefix: &str, kind: EventType, kv: &KeyValue);
}

/// The key of `kv` without `prefix`.
fn rest<'a>(prefix: &str, kv: &'a KeyValue) -> Option<&'a str> {
    kv.key_str().ok().and_then(|k| k.strip_prefix(prefix))
}

/// The revoked token records, as the watch on `tokens/` delivered them.
#[derive(Default)]
pub(super) struct TokenCopy {
    revoked: RwLock<HashMap<String, TokenRecord>>,
}

impl TokenCopy {
    pub(super) fn get(&self, id: &str) -> Option<TokenRecord> {
        self.revoked.read().ok()?.get(id).cloned()
    }
}

impl Watched for TokenCopy {
    fn load(&self, _prefix: &str, kvs: &[KeyValue]) {
        let records = kvs
            .iter()
            .filter_map(|kv| decode::<TokenRecord>(kv).ok())
            .filter(|t| t.revoked)
            .map(|t| (t.id.clone(), t))
            .collect();
        if let Ok(mut r) = self.revoked.write() {
            *r = records;
        }
    }

    fn apply(&self, prefix: &str, kind: EventType, kv: &KeyValue) {
        let Some(id) = rest(prefix, kv).map(str::to_string) else {
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

/// The registered host names, as the watch on `hostname/` delivered them; none known until
/// the watch has loaded them.
#[derive(Default)]
pub(super) struct NameCopy {
    names: RwLock<Option<HashSet<String>>>,
}

impl NameCopy {
    /// Whether a host is registered under `name`, as far as the watch has heard (`None`
    /// before it has loaded).
    pub(super) fn has(&self, name: &str) -> Option<bool> {
        self.names.read().ok()?.as_ref().map(|n| n.contains(name))
    }

    /// Notes a name this coordinator has just registered, before its watch event comes: a
    /// read right after the write must find it. (A name noted that is gone again costs a read
    /// of etcd, which answers for it.)
    pub(super) fn wrote(&self, name: &str) {
        if let Ok(mut n) = self.names.write() {
            if let Some(n) = n.as_mut() {
                n.insert(name.to_string());
            }
        }
    }
}

impl Watched for NameCopy {
    fn load(&self, prefix: &str, kvs: &[KeyValue]) {
        let names = kvs
            .iter()
            .filter_map(|kv| rest(prefix, kv).map(str::to_string))
            .collect();
        if let Ok(mut n) = self.names.write() {
            *n = Some(names);
        }
    }

    fn apply(&self, prefix: &str, kind: EventType, kv: &KeyValue) {
        let Some(name) = rest(prefix, kv).map(str::to_string) else {
            return;
        };
        if let Ok(mut n) = self.names.write() {
            if let Some(n) = n.as_mut() {
                match kind {
                    EventType::Put => n.insert(name),
                    EventType::Delete => n.remove(&name),
                };
            }
        }
    }
}

/// Keeps `copy` current with what is under `prefix`: reads it all, then watches from the next
/// revision, so no change falls between the two; starts over on the next member when the
/// stream breaks.
pub(super) async fn watch(clients: Vec<Client>, prefix: String, copy: Arc<dyn Watched>) {
    let mut attempt = 0usize;
    loop {
        let mut c = clients[attempt % clients.len()].clone();
        attempt += 1;
        let run = async {
            // A page at a time, at the first page's revision: a day of ephemeral tokens, or a
            // large fleet's names, can outgrow one answer.
            let end = prefix_end(prefix.as_bytes());
            let mut start = prefix.clone().into_bytes();
            let mut rev = 0;
            let mut all = Vec::new();
            loop {
                let (kvs, at, next) = read_page(&mut c, start, end.clone(), rev).await?;
                rev = at;
                all.extend(kvs);
                if next.is_empty() {
                    break;
                }
                start = next;
            }
            copy.load(&prefix, &all);
            drop(all);
            let mut stream = c
                .watch(
                    prefix.clone(),
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
                        copy.apply(&prefix, ev.event_type(), kv);
                    }
                }
            }
            Ok::<(), etcd_client::Error>(())
        };
        match run.await {
            Ok(()) => tracing::debug!(%prefix, "watch ended; starting it again"),
            Err(e) => tracing::debug!(%prefix, error = %e, "watch broke; starting it again"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
