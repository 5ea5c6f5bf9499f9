//! API errors: one type, one mapping from code to HTTP status, one body shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use muster_protocol::{ApiErrorBody, ErrorCode};

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// On one of ECE's paths, ECE's code for an error of one of the codes in `from`, with
    /// Muster's finer code kept in the message; any other error (credentials, limits, the
    /// store) as it is.
    pub fn as_ece(self, from: &[ErrorCode], to: ErrorCode) -> Self {
        if from.contains(&self.code) {
            ApiError {
                code: to,
                message: format!("{} ({})", self.message, self.code.as_str()),
            }
        } else {
            self
        }
    }
}

/// The HTTP status of each code. The one place this is decided.
pub fn status_for(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        AuthRequired | AuthInvalid => StatusCode::UNAUTHORIZED,
        AuthRateLimited | TokenRateLimited | RequestRateLimited => StatusCode::TOO_MANY_REQUESTS,
        RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        NotFound | ApiKeyNotFound | TokenUnknown | JoinUnknown | NodeUnknown | EceTokenId
        | EceRunnerNotFound => StatusCode::NOT_FOUND,
        TokenMalformed
        | TokenAlgorithm
        | TokenSignature
        | TokenIssuer
        | TokenRevoked
        | TokenExpired
        | TokenNotYetValid
        | TokenUseLimit
        | TokenSource
        | TokenRole
        | TokenEmergencyAllocator
        | JoinProof
        | NodeCertRequired => StatusCode::FORBIDDEN,
        DirectorOnly | FeatureDisabled | RecoveryToken => StatusCode::FORBIDDEN,
        RecoveryRole => StatusCode::BAD_REQUEST,
        RecoveryStore => StatusCode::CONFLICT,
        TokenNotDeletable | HostReplaceRoles | ApiKeyNameTaken => StatusCode::CONFLICT,
        PasswordRequired | CsrfInvalid => StatusCode::FORBIDDEN,
        RequestInvalid | RoleUnknown | CsrInvalid | CsrKeyType | CsrCa | CsrSan
        | EceTokenRequest | EceSetRolesFailed | ApiKeyInvalid => StatusCode::BAD_REQUEST,
        StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_for(self.code);
        let mut resp = (
            status,
            axum::Json(ApiErrorBody::single(self.code, self.message)),
        )
            .into_response();
        // As ECE does: the code in a header too, for clients that read no body.
        if let Ok(v) = axum::http::HeaderValue::from_str(self.code.as_str()) {
            resp.headers_mut().insert("x-cloud-error-codes", v);
        }
        if self.code == ErrorCode::AuthRequired || self.code == ErrorCode::AuthInvalid {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"musterd\""),
            );
        }
        resp
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        ApiError::new(
            ErrorCode::StoreUnavailable,
            "the store is unavailable; retry shortly",
        )
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{e:#}"), "internal error");
        ApiError::new(ErrorCode::Internal, "internal error; see the server log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_deliberate_status() {
        for code in ErrorCode::ALL {
            let s = status_for(*code);
            let internal = matches!(code, ErrorCode::Internal);
            assert_eq!(
                s == StatusCode::INTERNAL_SERVER_ERROR,
                internal,
                "{code:?} -> {s}"
            );
        }
        assert_eq!(status_for(ErrorCode::TokenUseLimit), StatusCode::FORBIDDEN);
        assert_eq!(
            status_for(ErrorCode::RequestTooLarge),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
