//! API keys and the admin password record ([`crate::service::credentials`]) in the etcd store.

use super::txn::{contended, MAX_ROUNDS};
use super::EtcdStore;
use crate::store::{ApiKeyRecord, StoreResult};
use etcd_client::TxnOp;
use muster_protocol::api::AuditEvent;

impl EtcdStore {
    pub(super) async fn put_api_key(&self, k: &ApiKeyRecord, e: &AuditEvent) -> StoreResult<bool> {
        let rest = format!("api-key/{}", k.name);
        let op = self.conn.put(&rest, k, 0)?;
        let guard = self.conn.unchanged(&rest, None);
        self.conn
            .txn_audited(vec![guard], vec![op], std::slice::from_ref(e))
            .await
    }

    pub(super) async fn all_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        self.conn.list("api-key/").await
    }

    pub(super) async fn end_api_key(
        &self,
        name: &str,
        at: u64,
        e: &AuditEvent,
    ) -> StoreResult<bool> {
        let rest = format!("api-key/{name}");
        for _ in 0..MAX_ROUNDS {
            let Some(mut k) = self.conn.get::<ApiKeyRecord>(&rest).await? else {
                return Ok(false);
            };
            if k.value.revoked.is_some() {
                return Ok(false);
            }
            k.value.revoked = Some(at);
            let op = self.conn.put(&rest, &k.value, 0)?;
            let guard = self.conn.unchanged(&rest, Some(k.rev));
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

    pub(super) async fn password_record(&self) -> StoreResult<Option<Vec<u8>>> {
        let resp = self.conn.range("admin-password", None).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    pub(super) async fn put_password_record(
        &self,
        record: &[u8],
        e: &AuditEvent,
    ) -> StoreResult<()> {
        let op = TxnOp::put(self.conn.key("admin-password"), record, None);
        if self
            .conn
            .txn_audited(vec![], vec![op], std::slice::from_ref(e))
            .await?
        {
            return Ok(());
        }
        Err(contended())
    }
}
