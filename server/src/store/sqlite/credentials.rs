//! API keys and the admin password record ([`crate::service::credentials`]) in the sqlite store.

use super::rows::{append_audit, to_json, unavailable};
use super::SqliteStore;
use crate::store::{ApiKeyRecord, StoreError, StoreResult};
use muster_protocol::api::AuditEvent;
use rusqlite::{params, OptionalExtension};

impl SqliteStore {
    pub(super) async fn put_api_key(&self, k: &ApiKeyRecord, e: &AuditEvent) -> StoreResult<bool> {
        let (key, value, e) = (format!("api-key/{}", k.name), to_json(k)?, e.clone());
        self.tx(move |tx| {
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
                    params![key, value.into_bytes()],
                )
                .map_err(unavailable)?;
            if n == 1 {
                append_audit(tx, &e)?;
            }
            Ok(n == 1)
        })
        .await
    }

    pub(super) async fn all_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        self.run(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT value FROM meta WHERE key >= 'api-key/' AND key < 'api-key0' ORDER BY key",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, Vec<u8>>(0))
                .map_err(unavailable)?;
            let mut all = Vec::new();
            for row in rows {
                let bytes = row.map_err(unavailable)?;
                all.push(
                    serde_json::from_slice(&bytes)
                        .map_err(|e| StoreError::Corrupt(format!("API key: {e}")))?,
                );
            }
            Ok(all)
        })
        .await
    }

    pub(super) async fn end_api_key(
        &self,
        name: &str,
        at: u64,
        e: &AuditEvent,
    ) -> StoreResult<bool> {
        let (key, e) = (format!("api-key/{name}"), e.clone());
        self.tx(move |tx| {
            let bytes: Option<Vec<u8>> = tx
                .prepare_cached("SELECT value FROM meta WHERE key = ?1")
                .map_err(unavailable)?
                .query_row(params![key], |r| r.get(0))
                .optional()
                .map_err(unavailable)?;
            let Some(bytes) = bytes else {
                return Ok(false);
            };
            let mut k: ApiKeyRecord = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("API key: {e}")))?;
            if k.revoked.is_some() {
                return Ok(false);
            }
            k.revoked = Some(at);
            tx.execute(
                "UPDATE meta SET value = ?2 WHERE key = ?1",
                params![key, to_json(&k)?.into_bytes()],
            )
            .map_err(unavailable)?;
            append_audit(tx, &e)?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn password_record(&self) -> StoreResult<Option<Vec<u8>>> {
        self.run(|c| {
            c.prepare_cached("SELECT value FROM meta WHERE key = 'admin-password'")
                .map_err(unavailable)?
                .query_row([], |r| r.get(0))
                .optional()
                .map_err(unavailable)
        })
        .await
    }

    pub(super) async fn put_password_record(
        &self,
        record: &[u8],
        e: &AuditEvent,
    ) -> StoreResult<()> {
        let (record, e) = (record.to_vec(), e.clone());
        self.tx(move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('admin-password', ?1)",
                params![record],
            )
            .map_err(unavailable)?;
            append_audit(tx, &e)
        })
        .await
    }
}
