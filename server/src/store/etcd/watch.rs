//! The token watch: every coordinator keeps the revoked token records a watch on `tokens/`
//! delivers, and refuses them without asking etcd again (revocation is final, so such a copy
//! never goes stale).

use super::conn::{decode, prefix_end, read_page};
use crate::store::TokenRecord;
use etcd_client::{Client, EventType, KeyValue, WatchOptions};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The revoked token records, as the watch on `tokens/` delivered them.
#[derive(Default)]
pub(super) struct TokenCopy {
    revoked: RwLock<HashMap<String, TokenRecord>>,
}

impl TokenCopy {
    pub(super) fn get(&self, id: &str) -> Option<TokenRecord> {
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
pub(super) async fn watch_tokens(clients: Vec<Client>, tokens_key: String, copy: Arc<TokenCopy>) {
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
