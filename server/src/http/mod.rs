//! The HTTP layer: routing, and thin handlers that read a request, call a service
//! (`crate::service`) and shape the answer. `admin` holds the ECE-compatible admin API, `node`
//! the node protocol, `ops` health, metrics and downloads.
//!
//! Every admin route sits behind [`require_admin`], laid over the admin router as a whole, so
//! a route added there cannot forget to authenticate.

pub mod admin;
pub mod console;
pub mod node;
pub mod ops;

use crate::app::App;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Router};
use muster_protocol::{paths, ErrorCode};
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the TLS layer knows about a connection, handed to every request.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// DER of the client certificate, when the client authenticated (already chain-checked
    /// against the transport CA by rustls).
    pub peer_cert: Option<Arc<Vec<u8>>>,
    /// The join made on this connection, shared by its requests.
    pub joined: Arc<JoinedHere>,
}

/// The node id of the last reservation a join made on a connection (not one it found from an
/// earlier join of the same key). A commit of that node id on the same connection comes from
/// the peer that made the reservation and was answered its PSK there: the connection binds
/// the commit to the reservation, so its proof of possession is not checked. A commit on any
/// other connection (the installer retrying after a drop) is checked by its proof. This
/// holds because musterd terminates TLS itself (nodes authenticate by client certificate on
/// the same port): one connection is one peer, and a proxy in front may pass TCP through,
/// never end TLS and pool connections (docs/ha.md).
///
/// What the binding gives up: a CSR is not tied to a connection, so whoever holds a roles
/// token and a copy of another host's CSR could register, on the connection of a fresh join,
/// a host carrying that host's public key. Its certificates reach only that connection, whose
/// peer lacks the private key, so they serve no one, and a token holder may register hosts
/// anyway; the reservation of the real host is never bound to another connection.
#[derive(Debug, Default)]
pub struct JoinedHere(std::sync::Mutex<Option<String>>);

impl JoinedHere {
    pub fn set(&self, node_id: &str) {
        if let Ok(mut j) = self.0.lock() {
            *j = Some(node_id.to_owned());
        }
    }

    /// Whether `node_id` is the reservation made on this connection.
    pub fn is(&self, node_id: &str) -> bool {
        self.0.lock().is_ok_and(|j| j.as_deref() == Some(node_id))
    }
}

type S = State<Arc<App>>;
type Conn = Extension<ConnInfo>;
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

pub fn router(app: Arc<App>) -> Router {
    let max = app.config.max_body_bytes;
    let admin = Router::new()
        .route(
            paths::TOKENS,
            post(admin::create_token).get(admin::list_tokens),
        )
        .route(
            &format!("{}/{{token_id}}", paths::TOKENS),
            delete(admin::delete_token),
        )
        .route(paths::AUDIT, get(admin::audit_log))
        .route(paths::ALLOCATORS, get(admin::allocators))
        .route(paths::RUNNERS, get(admin::runners))
        .route(
            &format!("{}/{{runner_id}}", paths::RUNNERS),
            get(admin::runner).delete(admin::remove_runner),
        )
        .route(
            &format!("{}/{{runner_id}}/roles", paths::RUNNERS),
            put(admin::set_runner_roles),
        )
        .route(paths::ES_ENROLL_NODE, get(admin::es_enroll_node))
        .route(
            paths::API_KEYS,
            post(admin::create_api_key).get(admin::list_api_keys),
        )
        .route(
            &format!("{}/{{api_key_id}}", paths::API_KEYS),
            delete(admin::delete_api_key),
        )
        .route(paths::PLATFORM_STATUS, get(admin::platform_status))
        .route(
            paths::CURRENT_USER,
            get(admin::current_user).patch(admin::update_user),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            require_admin,
        ));
    Router::new()
        .merge(admin)
        .merge(console::routes())
        .route(paths::JOIN, post(node::join))
        .route(paths::RECOVER, post(node::recover))
        .route(paths::COMMIT, post(node::commit))
        .route(paths::HEARTBEAT, post(node::heartbeat))
        .route(paths::RENEW, post(node::renew))
        .route(paths::LEAVE, post(node::leave))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route(paths::INSTALL_SCRIPT, get(ops::install_script))
        .route(paths::OPENAPI, get(ops::openapi))
        .route(paths::DOWNLOAD_INSTALLER, get(ops::download_installer))
        .route(
            &format!("{}.sha256", paths::DOWNLOAD_INSTALLER),
            get(ops::download_installer_sha256),
        )
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "that endpoint does not take this method (docs/api.md)",
            )
        })
        .layer(DefaultBodyLimit::max(max))
        .layer(axum::middleware::from_fn_with_state(app.clone(), front))
        .with_state(app)
}

/// Every request's way in, as one layer: its deadline ([`within_time`]), the
/// refusal of a body declared too large ([`refuse_declared_oversize`]) and the access log.
/// (Three layers of their own cost each request about ten more allocations: axum boxes a
/// route again for each layer and clones it for each request.)
///
/// The access log: a line per request at target `musterd::access` with its method, its
/// route's pattern (`…/enrollment-tokens/{token_id}`, never the path itself, which may hold a
/// token; `-` for a path no route has), status (408 for a request past its deadline), time
/// taken and source address. The node protocol's steps are timed into `muster_step_seconds`
/// here too.
async fn front(
    State(app): S,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("-", |p| p.as_str())
        .to_string();
    let source = req.extensions().get::<ConnInfo>().map(|c| c.remote.ip());
    let start = std::time::Instant::now();
    let max = app.config.max_body_bytes;
    let resp = within_time(refuse_oversize_or_run(max, req, next)).await;
    let took = start.elapsed();
    let step = match route.as_str() {
        paths::JOIN => Some("join"),
        paths::COMMIT => Some("commit"),
        paths::RENEW => Some("renew"),
        paths::HEARTBEAT => Some("heartbeat"),
        _ => None,
    };
    if let Some(step) = step {
        app.metrics.step(step, took);
    }
    tracing::info!(
        target: "musterd::access",
        %method,
        route,
        status = resp.status().as_u16(),
        ms = took.as_secs_f64() * 1000.0,
        source = source.map_or_else(|| "-".to_string(), |s| s.to_string()),
        "request"
    );
    resp
}

/// Checks admin credentials (HTTP Basic or `Authorization: ApiKey KEY`, failures held off per
/// source) before any admin handler runs, and hands the handler who it was
/// ([`crate::service::auth::Credential`]).
async fn require_admin(
    State(app): S,
    Extension(c): Conn,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The console's page asks without a Basic challenge: the browser's own password prompt
    // would stand in front of it.
    let from_console = req.headers().contains_key("x-muster-console");
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| zeroize::Zeroizing::new(v.to_string()));
    // Without an Authorization header, the console's session cookie, its credentials checked
    // again; a change also needs the session's CSRF token.
    let authorization = match given {
        Some(a) => Some(a),
        None => match console_session(&app, &req) {
            Ok(a) => a,
            Err(e) => {
                drain(req.into_body()).await;
                return e.into_response();
            }
        },
    };
    match app
        .auth
        .check(
            authorization.as_deref().map(|a| a.as_str()),
            c.remote.ip(),
            app.now(),
        )
        .await
    {
        Ok(who) => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Err(e) => {
            // Read the body first (it is bounded by `DefaultBodyLimit`), as a handler would
            // have: answering with it unread would reset the connection under the client
            // before it reads the refusal.
            drain(req.into_body()).await;
            let mut r = e.into_response();
            if from_console {
                r.headers_mut().remove(header::WWW_AUTHENTICATE);
            }
            r
        }
    }
}

/// The `Authorization` value of the console session a request's cookie names, if any; a
/// change (any method but GET and HEAD) without the session's CSRF token is refused.
fn console_session(
    app: &App,
    req: &axum::extract::Request,
) -> Result<Option<zeroize::Zeroizing<String>>, ApiError> {
    use crate::service::sessions;
    let Some(id) = console::cookie_of(req.headers()) else {
        return Ok(None);
    };
    let Some((authorization, csrf, _)) = app.sessions.get(&id, app.now()) else {
        return Ok(None);
    };
    let safe = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let sent = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok());
    if !safe && !sessions::csrf_ok(sent, &csrf) {
        return Err(console::csrf_refused());
    }
    Ok(Some(authorization))
}

/// Reads a JSON body, answering our error shape for bad or oversized bodies.
pub fn parse_json<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::RequestTooLarge, "request body is too large")
        } else {
            ApiError::new(ErrorCode::RequestInvalid, format!("reading the body: {e}"))
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::RequestInvalid, format!("request body: {e}")))
}

/// A query string that does not read, answered like any other bad request (after the
/// credentials are checked: no answer tells an unauthenticated caller more than 401).
fn query_invalid(e: QueryRejection) -> ApiError {
    ApiError::new(
        ErrorCode::RequestInvalid,
        format!("query string: {}", e.body_text()),
    )
}

/// How long a request may take, its body's arrival included.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A request gets [`REQUEST_TIMEOUT`]; past it, it is dropped and the answer is
/// `408 request.timeout`, in the error body every other refusal has. The coordinator's router
/// gives every request this deadline in its front layer ([`front`]), the director's in
/// [`request_deadline`].
pub(crate) async fn within_time(request: impl std::future::Future<Output = Response>) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request took longer than {} s and was dropped; retry it",
                REQUEST_TIMEOUT.as_secs()
            ),
        )
        .into_response(),
    }
}

/// [`within_time`] as a layer of its own: `axum::middleware::from_fn(request_deadline)`.
pub(crate) async fn request_deadline(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    within_time(next.run(req)).await
}

/// Middleware that refuses a request whose declared `Content-Length` is over `max` with 413,
/// so that the client reads the 413: one that asked first (`Expect: 100-continue`) is answered
/// before it sends the body; from one that sends it unasked, a body of up to [`DRAIN_MAX`] is
/// read to its end and dropped first (answering and closing with the body unread would reset
/// the connection under the client before it reads the answer). Bodies of unknown length are
/// cut off at `max` by [`DefaultBodyLimit`]. Use with
/// `axum::middleware::from_fn_with_state(max, refuse_declared_oversize)`.
pub async fn refuse_declared_oversize(
    State(max): State<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    refuse_oversize_or_run(max, req, next).await
}

/// [`refuse_declared_oversize`]'s work, for a layer that does more.
async fn refuse_oversize_or_run(
    max: usize,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|n| *n > max as u64) else {
        return next.run(req).await;
    };
    let asked_first = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !asked_first && declared <= DRAIN_MAX {
        drain(req.into_body()).await;
    }
    ApiError::new(ErrorCode::RequestTooLarge, "request body is too large").into_response()
}

/// Reads a body to its end (at most [`DRAIN_MAX`] bytes, for at most [`DRAIN_TIMEOUT`]) and
/// drops it.
async fn drain(mut body: axum::body::Body) {
    use axum::body::HttpBody;
    let mut read = 0u64;
    let drain = std::future::poll_fn(|cx| loop {
        match std::pin::Pin::new(&mut body).poll_frame(cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > DRAIN_MAX {
                    return std::task::Poll::Ready(());
                }
            }
            std::task::Poll::Ready(_) => return std::task::Poll::Ready(()),
            std::task::Poll::Pending => return std::task::Poll::Pending,
        }
    });
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
}

/// The largest refused body read (and dropped) so that its sender gets its 413.
const DRAIN_MAX: u64 = 1024 * 1024;

/// How long a refused body may take to arrive before the connection is closed anyway.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
