//! The error body every API answer uses, and the stable machine codes in it.
//!
//! The body is ECE's: `{"errors":[{"code":"…","message":"…"}]}`. Codes are part of the contract:
//! scripts and the installer branch on them, so a code is never renamed or reused.

use serde::{Deserialize, Serialize};

/// One error in an error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorItem {
    pub code: String,
    pub message: String,
}

/// The body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub errors: Vec<ErrorItem>,
}

impl ApiErrorBody {
    pub fn single(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiErrorBody {
            errors: vec![ErrorItem {
                code: code.as_str().to_string(),
                message: message.into(),
            }],
        }
    }

    /// The first error's code, parsed; `None` for a code this build does not know.
    pub fn code(&self) -> Option<ErrorCode> {
        self.errors.first().and_then(|e| ErrorCode::parse(&e.code))
    }

    pub fn message(&self) -> &str {
        self.errors
            .first()
            .map(|e| e.message.as_str())
            .unwrap_or("")
    }
}

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = $s:literal,)*) => {
        /// Stable machine codes of API errors.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode { $($(#[$doc])* $variant,)* }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];
            pub fn as_str(self) -> &'static str { match self { $(ErrorCode::$variant => $s,)* } }
            pub fn parse(s: &str) -> Option<ErrorCode> { match s { $($s => Some(ErrorCode::$variant),)* _ => None } }
        }
    };
}

codes! {
    /// No credentials were given.
    AuthRequired = "auth.required",
    /// The credentials were wrong.
    AuthInvalid = "auth.invalid",
    /// Too many failed logins from this source address; wait and retry.
    AuthRateLimited = "auth.rate_limited",
    /// The request body or query could not be read.
    RequestInvalid = "request.invalid",
    /// The request body is larger than the server accepts.
    RequestTooLarge = "request.too_large",
    /// Nothing is at that path.
    NotFound = "request.not_found",
    /// The path exists, but not with that method (say, `PUT` on the token list).
    MethodNotAllowed = "request.method_not_allowed",
    /// The request took longer than the server gives one (30 s) and was dropped: as with a
    /// lost answer, retry it (every step is safe to repeat).
    RequestTimeout = "request.timeout",
    /// This source address has as many of these requests in flight as it may (installer
    /// downloads); retry once one is done.
    RequestRateLimited = "request.rate_limited",
    /// A role name is not one of allocator, coordinator, proxy, director.
    RoleUnknown = "roles.unknown",
    /// The token is not a well-formed JWT.
    TokenMalformed = "token.malformed",
    /// The token is signed with an algorithm other than the pinned one (including `none`).
    TokenAlgorithm = "token.algorithm_not_allowed",
    /// The token's signature does not verify with this platform's key.
    TokenSignature = "token.bad_signature",
    /// The token was issued by something else than a Muster platform.
    TokenIssuer = "token.wrong_issuer",
    /// The token's id is not known to this platform.
    TokenUnknown = "token.unknown",
    /// The token was revoked.
    TokenRevoked = "token.revoked",
    /// The token has expired.
    TokenExpired = "token.expired",
    /// The token is not valid yet (check the host's clock).
    TokenNotYetValid = "token.not_yet_valid",
    /// The token's use limit is reached.
    TokenUseLimit = "token.use_limit_reached",
    /// Too many refused tokens from this source address; wait and retry.
    TokenRateLimited = "token.rate_limited",
    /// The token may not be used from this source address.
    TokenSource = "token.source_not_allowed",
    /// The token does not grant a requested role.
    TokenRole = "token.role_not_granted",
    /// The emergency token never enrolls an allocator.
    TokenEmergencyAllocator = "token.emergency_allocator",
    /// The emergency token cannot be deleted.
    TokenNotDeletable = "token.not_deletable",
    /// The CSR could not be parsed or its signature is wrong.
    CsrInvalid = "csr.invalid",
    /// The CSR's key type or size is not accepted.
    CsrKeyType = "csr.key_type",
    /// The CSR asks for a CA certificate.
    CsrCa = "csr.ca_requested",
    /// The CSR names a host the requester may not claim.
    CsrSan = "csr.san_not_allowed",
    /// A host of that name is registered with roles the token does not grant: replacing it
    /// takes a token that grants them, or removing it first.
    HostReplaceRoles = "host.replace_needs_roles",
    /// No join reservation with that node id (never made, expired or already removed).
    JoinUnknown = "join.unknown",
    /// The commit's proof of possession or PSK is wrong.
    JoinProof = "join.proof_invalid",
    /// The request needs a client certificate of an enrolled node.
    NodeCertRequired = "node.certificate_required",
    /// The node is not registered (removed, or never committed).
    NodeUnknown = "node.unknown",
    /// The server is in director mode and only answers emergency joins.
    DirectorOnly = "server.director_mode",
    /// Recovery takes the emergency token.
    RecoveryToken = "recovery.emergency_token_required",
    /// Recovery brings up a coordinator: ask for the coordinator role.
    RecoveryRole = "recovery.coordinator_role_required",
    /// This coordinator's store is embedded in its data folder; another cannot share it.
    RecoveryStore = "recovery.embedded_store",
    /// The feature is switched off in the server config.
    FeatureDisabled = "server.feature_disabled",
    /// The store could not be reached; retry.
    StoreUnavailable = "server.store_unavailable",
    /// Something failed inside the server; retry, then report.
    Internal = "server.internal",
    /// ECE's answer to a token request that does not read on `…/enrollment-tokens` (Muster's
    /// finer reason is in the message).
    EceTokenRequest = "enrollment_tokens.invalid_token_request",
    /// ECE's answer to an API key request that does not read.
    ApiKeyInvalid = "api_keys.invalid_input",
    /// ECE's answer for an API key it does not know.
    ApiKeyNotFound = "api_keys.key_not_found",
    /// An API key of that name exists (revoked ones too: names are not reused).
    ApiKeyNameTaken = "api_keys.name_taken",
    /// A change made with the web console's session cookie without its CSRF token.
    CsrfInvalid = "auth.csrf_invalid",
    /// Changing the admin password takes the current one (`security.current_password`).
    PasswordRequired = "auth.password_required",
    /// ECE's answer on `…/enrollment-tokens/{token}` for a token or id it does not know.
    EceTokenId = "enrollment_tokens.invalid_token_id",
    /// ECE's answer on `…/runners/{runner_id}` for a runner it does not know.
    EceRunnerNotFound = "runners.runner_not_found",
    /// ECE's answer when `PUT …/runners/{runner_id}/roles` cannot set the roles asked for.
    EceSetRolesFailed = "runners.runner_set_roles_failed",
}

impl ErrorCode {
    /// Whether retrying the same request can succeed (the installer backs off and retries).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::StoreUnavailable
                | ErrorCode::Internal
                | ErrorCode::RequestTimeout
                | ErrorCode::AuthRateLimited
                | ErrorCode::RequestRateLimited
                | ErrorCode::TokenRateLimited
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {}", c.as_str());
            assert_eq!(ErrorCode::parse(c.as_str()), Some(*c));
        }
        assert_eq!(ErrorCode::parse("no.such"), None);
    }

    #[test]
    fn body_shape_is_ece() {
        let b = ApiErrorBody::single(ErrorCode::TokenExpired, "token expired");
        let v = serde_json::to_value(&b).ok();
        assert_eq!(
            v,
            Some(
                serde_json::json!({"errors":[{"code":"token.expired","message":"token expired"}]})
            )
        );
    }
}
