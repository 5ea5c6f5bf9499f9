//! What operators and new hosts fetch without credentials: readiness, metrics, the OpenAPI
//! document, `install.sh` and the installer binary.

use super::{Conn, ConnInfo, S};
use crate::app::{App, MAX_DOWNLOADS_PER_SOURCE};
use crate::error::ApiError;
use crate::metrics::Registered;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use muster_protocol::ErrorCode;
use std::sync::Arc;

/// This API as an OpenAPI 3 document, the one kept in the repository.
const OPENAPI_YAML: &str = include_str!("../../../docs/openapi.yaml");

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML).into_response()
}

pub async fn readyz(State(app): S) -> Response {
    match app.store.platform().await {
        Ok(Some(_)) => (StatusCode::OK, "ready\n").into_response(),
        _ => ApiError::new(ErrorCode::StoreUnavailable, "store not ready").into_response(),
    }
}

pub async fn metrics(State(app): S) -> Response {
    let view = app.view();
    let registered = app.store.hosts().await.ok().map(|hosts| Registered {
        hosts: hosts.len(),
        connected: hosts.iter().filter(|h| view.connected(h)).count(),
        earliest_expiry: hosts.iter().map(|h| h.cert_not_after).min(),
    });
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        app.metrics.render(app.store.retries(), registered),
    )
        .into_response()
}

/// The chunk a download reads and sends at a time.
const DOWNLOAD_CHUNK: usize = 64 * 1024;

/// The installer file, opened, with its length.
async fn installer_file(app: &App) -> Result<(tokio::fs::File, u64), ApiError> {
    let path = app
        .config
        .installer_path
        .clone()
        .unwrap_or_else(|| "/usr/lib/muster/muster-x86_64".into());
    let missing = || {
        ApiError::new(
            ErrorCode::NotFound,
            "no installer binary on this coordinator (set installer_path in the server config)",
        )
    };
    let f = tokio::fs::File::open(&path).await.map_err(|_| missing())?;
    let m = f.metadata().await.map_err(|_| missing())?;
    if !m.is_file() {
        return Err(missing());
    }
    Ok((f, m.len()))
}

/// `hooks/install.sh`, as served: musterd fills in the address it was reached at, its serving
/// key's pin and the HTTP CA, so the script fetches the installer over the same pinned TLS.
const INSTALL_SH: &str = include_str!("../../../hooks/install.sh");

pub async fn install_script(State(app): S, headers: HeaderMap) -> Response {
    // The address the client used, when it is a plain host[:port]; it ends up inside a
    // single-quoted shell string, so anything else falls back to the advertised address.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_string)
        .or_else(|| app.advertise.first().cloned())
        .unwrap_or_default();
    let script = render_install_script(
        &host,
        &app.serving_key.curl_pin(),
        &app.platform.http_ca.cert_pem,
    );
    (
        [(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")],
        script,
    )
        .into_response()
}

/// Fills the served values into `install.sh`.
pub fn render_install_script(coordinator: &str, curl_pin: &str, ca_pem: &str) -> String {
    INSTALL_SH
        .replacen("@COORDINATOR@", coordinator, 1)
        .replacen("@PIN@", curl_pin, 1)
        .replacen("@CA_PEM@", ca_pem.trim_end(), 1)
}

/// A download slot of the client's address, or `429 request.rate_limited`.
fn download_slot(app: &Arc<App>, c: &ConnInfo) -> Result<crate::limit::Slot, ApiError> {
    app.downloads.take(c.remote.ip()).ok_or_else(|| {
        ApiError::new(
            ErrorCode::RequestRateLimited,
            format!(
                "{} has {MAX_DOWNLOADS_PER_SOURCE} installer downloads in flight; retry once one is done",
                c.remote.ip()
            ),
        )
    })
}

pub async fn download_installer(State(app): S, Extension(c): Conn) -> Result<Response, ApiError> {
    let permit = download_slot(&app, &c)?;
    let (file, len) = installer_file(&app).await?;
    // The permit rides with the body: it is given back when the last chunk is sent, or the
    // client goes away.
    use futures_util::StreamExt;
    let chunks =
        tokio_util::io::ReaderStream::with_capacity(file, DOWNLOAD_CHUNK).map(move |chunk| {
            let _held = &permit;
            chunk
        });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response())
}

pub async fn download_installer_sha256(
    State(app): S,
    Extension(c): Conn,
) -> Result<Response, ApiError> {
    use sha2::Digest;
    use tokio::io::AsyncReadExt;
    let _permit = download_slot(&app, &c)?;
    let (mut file, _) = installer_file(&app).await?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; DOWNLOAD_CHUNK];
    loop {
        let n = file.read(&mut buf).await.map_err(|e| {
            ApiError::new(ErrorCode::Internal, format!("reading the installer: {e}"))
        })?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(format!("{}  muster-x86_64\n", hex::encode(hash.finalize())).into_response())
}
