//! A typed admin client for tests: the admin API through curl (the client operators use), its
//! answers read into Muster's own API types, a refusal returned as its status and code.

use crate::Coordinator;
use anyhow::{bail, Context};
use muster_protocol::api::{
    AllocatorInfo, AllocatorsReply, AuditEvent, AuditReply, CreateTokenReply, CreateTokenRequest,
    ListTokensReply, RunnerInfo, RunnersReply, TokenInfo,
};
use serde_json::Value;

pub const TOKENS: &str = "/api/v1/platform/configuration/security/enrollment-tokens";
pub const AUDIT: &str = "/api/v1/platform/configuration/security/enrollment-tokens/_audit";
pub const RUNNERS: &str = "/api/v1/platform/infrastructure/runners";
pub const ALLOCATORS: &str = "/api/v1/platform/infrastructure/allocators";

/// An API refusal: the HTTP status and the first error code of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub code: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.code)
    }
}

impl std::error::Error for Refused {}

/// The admin API of one coordinator, as its admin user.
pub struct Admin<'a> {
    c: &'a Coordinator,
}

impl Coordinator {
    /// The typed admin client of this coordinator.
    pub fn admin(&self) -> Admin<'_> {
        Admin { c: self }
    }
}

impl Admin<'_> {
    /// A call whose 2xx answer reads as `T`; any other status is a [`Refused`] error.
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<T> {
        let (status, v) = self.c.api(method, path, body)?;
        if !(200..300).contains(&status) {
            let code = v["errors"][0]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            return Err(Refused { status, code }.into());
        }
        serde_json::from_value(v.clone()).with_context(|| format!("{method} {path}: {v}"))
    }

    pub fn create_token(&self, req: &CreateTokenRequest) -> anyhow::Result<CreateTokenReply> {
        self.call("POST", TOKENS, Some(&serde_json::to_string(req)?))
    }

    /// A token for `roles` (ephemeral unless `persistent`): the token and its id.
    pub fn token(&self, roles: &[&str], persistent: bool) -> anyhow::Result<(String, String)> {
        let reply = self.create_token(&CreateTokenRequest {
            persistent,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        })?;
        Ok((reply.token, reply.token_id))
    }

    /// The live tokens.
    pub fn tokens(&self) -> anyhow::Result<Vec<TokenInfo>> {
        Ok(self.call::<ListTokensReply>("GET", TOKENS, None)?.tokens)
    }

    pub fn revoke(&self, token_or_id: &str) -> anyhow::Result<()> {
        self.call::<Value>("DELETE", &format!("{TOKENS}/{token_or_id}"), None)?;
        Ok(())
    }

    pub fn runners(&self) -> anyhow::Result<Vec<RunnerInfo>> {
        Ok(self.call::<RunnersReply>("GET", RUNNERS, None)?.runners)
    }

    pub fn runner(&self, id: &str) -> anyhow::Result<RunnerInfo> {
        self.call("GET", &format!("{RUNNERS}/{id}"), None)
    }

    /// Every allocator, the zones flattened.
    pub fn allocators(&self) -> anyhow::Result<Vec<AllocatorInfo>> {
        let reply: AllocatorsReply = self.call("GET", ALLOCATORS, None)?;
        Ok(reply.zones.into_iter().flat_map(|z| z.allocators).collect())
    }

    /// Sets a runner's roles (`bless` as ECE's `?bless=`): the roles granted.
    pub fn set_roles(&self, id: &str, roles: &[&str], bless: bool) -> anyhow::Result<Vec<String>> {
        let body = serde_json::json!({ "roles": roles }).to_string();
        let path = format!("{RUNNERS}/{id}/roles?bless={bless}");
        let v: Value = self.call("PUT", &path, Some(&body))?;
        Ok(v["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["role_name"].as_str().map(str::to_string))
            .collect())
    }

    pub fn remove_runner(&self, id: &str) -> anyhow::Result<()> {
        self.call::<Value>("DELETE", &format!("{RUNNERS}/{id}"), None)?;
        Ok(())
    }

    /// The whole audit log, oldest first.
    pub fn audit(&self) -> anyhow::Result<Vec<AuditEvent>> {
        Ok(self.call::<AuditReply>("GET", AUDIT, None)?.events)
    }

    /// The audit events of `kind` (`created`, `used`, `committed`, `refused`, …).
    pub fn audit_of(&self, kind: &str) -> anyhow::Result<Vec<AuditEvent>> {
        Ok(self
            .audit()?
            .into_iter()
            .filter(|e| e.event == kind)
            .collect())
    }
}

/// The [`Refused`] inside an error from [`Admin`], if it was a refusal.
pub fn refused(e: &anyhow::Error) -> Option<&Refused> {
    e.downcast_ref::<Refused>()
}

/// Fails unless `r` was refused with `status` and `code`.
pub fn expect_refused<T: std::fmt::Debug>(
    r: anyhow::Result<T>,
    status: u16,
    code: &str,
) -> anyhow::Result<()> {
    match r {
        Err(e) if refused(&e).is_some_and(|r| r.status == status && r.code == code) => Ok(()),
        other => bail!("expected HTTP {status} {code}, got {other:?}"),
    }
}
