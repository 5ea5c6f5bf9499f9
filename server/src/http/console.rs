//! The web console at `/console/`: its page, script and style (inside the binary, nothing
//! fetched at run time), and its sessions. The page drives the admin API with the session
//! cookie ([`super::require_admin`] takes it, with `X-CSRF-Token` on every change); it renders
//! every value as text, and its Content-Security-Policy allows no inline script or style and
//! nothing from elsewhere.

use super::{parse_json, Body, Conn, S};
use crate::error::ApiError;
use crate::service::sessions::{self, COOKIE, LIFETIME_SECS};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::Engine;
use muster_protocol::ErrorCode;
use std::sync::Arc;

const INDEX: &str = include_str!("../../console/index.html");
const DIRECTOR: &str = include_str!("../../console/director.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");

/// What the console's pages may load and do: their own script, style and API, nothing else;
/// no frames, no inline script or style, no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                       base-uri 'none'";

/// The console's routes on a coordinator.
pub fn routes() -> Router<Arc<crate::app::App>> {
    pages(INDEX)
        .route(
            "/console/console.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/session",
            get(session).post(sign_in).delete(sign_out),
        )
}

/// The console on a director: one page that says what a director is for.
pub fn director_routes<T: Clone + Send + Sync + 'static>() -> Router<T> {
    pages(DIRECTOR)
}

/// `/console/` with this page and the style sheet, on a coordinator and a director alike.
fn pages<T: Clone + Send + Sync + 'static>(index: &'static str) -> Router<T> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(move || async move { asset(index, "text/html; charset=utf-8") }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

/// The headers every console answer carries.
pub fn harden(headers: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(headers, "content-security-policy", CSP);
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "x-frame-options", "DENY");
    set(headers, "referrer-policy", "no-referrer");
    set(headers, "cache-control", "no-store");
    set(headers, "cross-origin-opener-policy", "same-origin");
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    harden(r.headers_mut());
    r
}

/// A sign-in: the admin user and password, or an API key.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    api_key: Option<String>,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignIn { .. }")
    }
}

/// The session id the request's cookie carries, if any.
pub fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| sessions::cookie(h, COOKIE).map(str::to_string))
}

fn set_cookie(value: &str, max_age: u64) -> HeaderValue {
    let v =
        format!("{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict");
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

fn answer(status: StatusCode, body: serde_json::Value, cookie: Option<HeaderValue>) -> Response {
    let mut r = (status, Json(body)).into_response();
    if let Some(c) = cookie {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    harden(r.headers_mut());
    r
}

/// `POST /console/session`: checks the credentials as the API does (the same failed-login
/// limit per source) and opens a session.
async fn sign_in(State(app): S, Extension(c): Conn, body: Body) -> Response {
    let opened = async {
        let req: SignIn = parse_json(body)?;
        let authorization =
            zeroize::Zeroizing::new(match (&req.user, &req.password, &req.api_key) {
                (Some(u), Some(p), None) => {
                    let pair = zeroize::Zeroizing::new(format!("{u}:{p}"));
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
                    )
                }
                (None, None, Some(k)) => format!("ApiKey {k}"),
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::RequestInvalid,
                        "sign in with user and password, or with api_key",
                    ))
                }
            });
        let now = app.now();
        let who = app
            .auth
            .check(Some(&authorization), c.remote.ip(), now)
            .await?;
        let (id, csrf) = app.sessions.open(&authorization, now);
        tracing::info!(actor = %who.actor(), source = %c.remote.ip(), "console sign-in");
        Ok::<_, ApiError>((id, csrf, who.actor(), now + LIFETIME_SECS))
    };
    match opened.await {
        Ok((id, csrf, actor, expires)) => answer(
            StatusCode::OK,
            serde_json::json!({"csrf": csrf, "actor": actor, "expires": expires}),
            Some(set_cookie(&id, LIFETIME_SECS)),
        ),
        Err(e) => unchallenged(e),
    }
}

/// `GET /console/session`: the session the cookie names (its CSRF token, who, until when),
/// checked with its credentials again; 401 when there is none.
async fn session(State(app): S, Extension(c): Conn, headers: HeaderMap) -> Response {
    let now = app.now();
    let found = match cookie_of(&headers).and_then(|id| app.sessions.get(&id, now)) {
        Some((authorization, csrf, expires)) => app
            .auth
            .check(Some(&authorization), c.remote.ip(), now)
            .await
            .ok()
            .map(|who| (who.actor(), csrf, expires)),
        None => None,
    };
    match found {
        Some((actor, csrf, expires)) => answer(
            StatusCode::OK,
            serde_json::json!({"csrf": csrf, "actor": actor, "expires": expires}),
            None,
        ),
        None => unchallenged(ApiError::new(
            ErrorCode::AuthRequired,
            "not signed in to the console",
        )),
    }
}

/// `DELETE /console/session`: signs out (with the session's CSRF token).
async fn sign_out(State(app): S, headers: HeaderMap) -> Response {
    let now = app.now();
    let Some(id) = cookie_of(&headers) else {
        return answer(StatusCode::OK, serde_json::json!({}), None);
    };
    if let Some((_, csrf, _)) = app.sessions.get(&id, now) {
        let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
        if !sessions::csrf_ok(sent, &csrf) {
            let mut r = csrf_refused().into_response();
            harden(r.headers_mut());
            return r;
        }
        app.sessions.close(&id);
    }
    answer(
        StatusCode::OK,
        serde_json::json!({}),
        Some(set_cookie("", 0)),
    )
}

/// A refusal for the page: without the Basic challenge (the browser's own password prompt
/// would stand in front of the page), under the console's headers.
fn unchallenged(e: ApiError) -> Response {
    let mut r = e.into_response();
    r.headers_mut().remove(header::WWW_AUTHENTICATE);
    harden(r.headers_mut());
    r
}

/// The refusal of a change sent with the session cookie but without its CSRF token.
pub fn csrf_refused() -> ApiError {
    ApiError::new(
        ErrorCode::CsrfInvalid,
        "a change made with the console's session needs its X-CSRF-Token",
    )
}
