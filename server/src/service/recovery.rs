//! Recovery with the emergency token: a new coordinator asks for the sealed platform and where
//! the shared store is. Needs no secret, so coordinators and directors answer it alike.

use super::admission::{rate_limited, refusal_logged, verify_token, Refusal};
use super::cache::VerifiedTokens;
use crate::config::{Backend, Config};
use crate::error::ApiError;
use crate::limit::FailureLimiter;
use crate::platform::PublicPlatform;
use crate::store::Store;
use muster_protocol::node::{RecoverRequest, Recovery, StoreSettings};
use muster_protocol::token::{self, TokenKind};
use muster_protocol::{ErrorCode, Role};
use std::net::IpAddr;

/// Where the shared store is, as a recovering coordinator should reach it; `None` for the
/// embedded store, which no other host can share.
pub fn store_settings(config: &Config) -> Option<StoreSettings> {
    match config.store.backend {
        Backend::Sqlite => None,
        Backend::Etcd => Some(StoreSettings {
            endpoints: config.store.etcd.endpoints.clone(),
            prefix: config.store.etcd.prefix.clone(),
            tls: config.store.etcd.tls.is_some(),
        }),
    }
}

/// What answers a recovery: the store, the server's config, and the limiter and signature
/// cache of refused and verified tokens.
pub struct Recoverer<'a> {
    pub store: &'a dyn Store,
    pub config: &'a Config,
    pub failures: &'a FailureLimiter,
    pub verified: &'a VerifiedTokens,
}

impl Recoverer<'_> {
    /// Answers a recovery request (`request` reads it, after a source over its budget of
    /// refused tokens is held off): the emergency token, the coordinator role among those
    /// asked, a shared store. Refusals and successes are audited.
    pub async fn recover(
        &self,
        request: impl FnOnce() -> Result<RecoverRequest, ApiError>,
        source: IpAddr,
        now: u64,
    ) -> Result<Recovery, ApiError> {
        let (store, limiter) = (self.store, self.failures);
        if let Some(wait) = limiter.blocked(source, now) {
            return Err(rate_limited(source, wait));
        }
        let req = request()?;
        let public = PublicPlatform::load(store).await?;
        let refuse = |r: Refusal| async move {
            limiter.failed(source, now);
            refusal_logged(store, &r, source, now).await;
            ApiError::new(r.code, r.message)
        };
        let verified = verify_token(
            store,
            &public.verify_key,
            self.verified,
            &req.token,
            source,
            now,
        )
        .await?;
        let (claims, rec) = match verified {
            Ok(ok) => ok,
            Err(r) => return Err(refuse(r).await),
        };
        if rec.kind != TokenKind::Emergency || rec.id != public.emergency_token_id {
            return Err(refuse(Refusal {
                code: ErrorCode::RecoveryToken,
                message: "recovery takes the platform's emergency token; this is a roles token"
                    .into(),
                token_id: Some(rec.id),
            })
            .await);
        }
        let checked = token::Claims {
            roles: rec.roles.clone(),
            kind: rec.kind,
            ..claims
        };
        let granted = match token::grant_roles(&checked, &req.roles) {
            Ok(g) => g,
            Err(e) => {
                return Err(refuse(Refusal {
                    code: e.code(),
                    message: e.to_string(),
                    token_id: Some(rec.id),
                })
                .await)
            }
        };
        if !granted.contains(&Role::Coordinator) {
            return Err(refuse(Refusal {
                code: ErrorCode::RecoveryRole,
                message: "recovery brings up a coordinator: ask for the coordinator role \
                          (--roles coordinator,director,proxy)"
                    .into(),
                token_id: Some(rec.id),
            })
            .await);
        }
        let Some(settings) = store_settings(self.config) else {
            return Err(ApiError::new(
                ErrorCode::RecoveryStore,
                "this coordinator keeps the platform in its own data folder (sqlite), which no \
                 other host can share; recover a single host with `musterd backup` and `musterd restore`",
            ));
        };
        let by = crate::store::actor::token(&rec.id);
        let from = source.to_string();
        let e = crate::store::event(now, "recovery", &by, Some(&rec.id), None, Some(&from), None);
        super::audit(store, &e).await;
        tracing::warn!(%source, "emergency recovery: handed the sealed platform to a new coordinator");
        Ok(public.recovery(settings))
    }
}
