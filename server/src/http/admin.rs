//! The admin API, ECE-compatible: roles tokens, the audit log, allocators and runners, and
//! Elasticsearch's enroll-node. [`super::require_admin`] has checked the credentials before any
//! of these runs.

use super::{parse_json, query_invalid, Body, Conn, S};
use crate::error::ApiError;
use crate::pki::Leaf;
use crate::service::auth::Credential;
use crate::service::issuance::time_of;
use crate::service::{registry, tokens};
use crate::store::{event, TokenRecord};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use muster_protocol::api::*;
use muster_protocol::token::TokenKind;
use muster_protocol::{ErrorCode, Role};
use std::net::{IpAddr, SocketAddr};

/// `?install_command=true` adds the ready-to-paste install line to the answer.
#[derive(serde::Deserialize)]
pub struct CreateTokenQuery {
    #[serde(default)]
    install_command: bool,
}

pub async fn create_token(
    State(app): S,
    Extension(c): Conn,
    Extension(who): Extension<Credential>,
    query: Result<Query<CreateTokenQuery>, QueryRejection>,
    body: Body,
) -> Result<Json<CreateTokenReply>, ApiError> {
    let made = async {
        let Query(query) = query.map_err(query_invalid)?;
        let req: CreateTokenRequest = parse_json(body)?;
        let mut reply = app
            .create_token(&req, &who.actor(), Some(c.remote.ip()))
            .await?;
        if !query.install_command {
            reply.install_command = None;
        }
        Ok(Json(reply))
    };
    made.await.map_err(|e: ApiError| {
        e.as_ece(
            &[ErrorCode::RequestInvalid, ErrorCode::RoleUnknown],
            ErrorCode::EceTokenRequest,
        )
    })
}

fn token_info(t: &TokenRecord) -> TokenInfo {
    TokenInfo {
        token_id: t.id.clone(),
        roles: t.roles.clone(),
        persistent: t.kind != TokenKind::Ephemeral,
        kind: t.kind,
        created: t.created,
        expires: t.expires,
        max_uses: t.max_uses,
        uses: t.uses,
        allowed_sources: t.allowed_sources.clone(),
        description: t.description.clone(),
    }
}

pub async fn list_tokens(State(app): S) -> Result<Json<ListTokensReply>, ApiError> {
    let tokens = app
        .store
        .tokens()
        .await?
        .iter()
        .filter(|t| !t.revoked)
        .map(token_info)
        .collect();
    Ok(Json(ListTokensReply { tokens }))
}

/// `DELETE …/enrollment-tokens/{token}`: `{token}` is the token's id or, as ECE takes it, the
/// token itself.
pub async fn delete_token(
    State(app): S,
    Extension(c): Conn,
    Extension(who): Extension<Credential>,
    Path(given): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let source = c.remote.ip().to_string();
    let store = app.store.as_ref();
    let id = tokens::revoke(store, &given, &who.actor(), &source, app.now()).await?;
    app.admission.forget(&id);
    Ok(Json(serde_json::json!({})))
}

/// `POST /api/v1/users/auth/keys`: a new named API key, shown this once (201, as ECE).
pub async fn create_api_key(
    State(app): S,
    Extension(c): Conn,
    Extension(who): Extension<Credential>,
    body: Body,
) -> Result<(axum::http::StatusCode, Json<ApiKeyInfo>), ApiError> {
    let req: CreateApiKeyRequest = parse_json(body).map_err(|e| {
        if e.code == ErrorCode::RequestInvalid {
            ApiError::new(ErrorCode::ApiKeyInvalid, e.message)
        } else {
            e
        }
    })?;
    let source = c.remote.ip().to_string();
    let made = app
        .keys()
        .create(&req, &who.actor(), &source, app.now())
        .await?;
    Ok((axum::http::StatusCode::CREATED, Json(made)))
}

/// `GET /api/v1/users/auth/keys`: every key, revoked ones too; never a key itself.
pub async fn list_api_keys(State(app): S) -> Result<Json<ApiKeysReply>, ApiError> {
    Ok(Json(ApiKeysReply {
        keys: app.keys().list().await?,
    }))
}

/// `DELETE /api/v1/users/auth/keys/{api_key_id}`: revokes the key on every coordinator.
pub async fn delete_api_key(
    State(app): S,
    Extension(c): Conn,
    Extension(who): Extension<Credential>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let source = c.remote.ip().to_string();
    app.keys()
        .revoke(&name, &who.actor(), &source, app.now())
        .await?;
    Ok(Json(serde_json::json!({})))
}

/// `GET /api/v1/user`: who the credentials are.
pub async fn current_user(
    State(app): S,
    Extension(who): Extension<Credential>,
) -> Json<serde_json::Value> {
    let (kind, name) = match &who {
        Credential::User(u) => ("user", u.clone()),
        Credential::ApiKey(k) => ("api_key", k.clone()),
    };
    Json(serde_json::json!({
        "user_name": app.platform.admin_user,
        "authenticated_with": {"kind": kind, "name": name},
    }))
}

/// `PATCH /api/v1/user` with `{"security": {"password": …, "current_password": …}}`: changes
/// the admin password. The current one is asked for whatever the credentials, so an API key or
/// a borrowed session cannot take the admin account over.
pub async fn update_user(
    State(app): S,
    Extension(c): Conn,
    Extension(who): Extension<Credential>,
    body: Body,
) -> Result<Json<UserReply>, ApiError> {
    let req: UpdateUserRequest = parse_json(body)?;
    let security = req.security.unwrap_or_default();
    let Some(password) = security.password else {
        return Err(ApiError::new(
            ErrorCode::RequestInvalid,
            "nothing to change: give security.password",
        ));
    };
    crate::service::credentials::check_password(&password)?;
    app.auth
        .confirm_password(
            security.current_password.as_deref().unwrap_or_default(),
            c.remote.ip(),
            app.now(),
        )
        .await?;
    let source = c.remote.ip().to_string();
    let rec = crate::service::credentials::change_password(
        app.store.as_ref(),
        &app.platform.credential_key(),
        &app.platform.admin_user,
        &password,
        &who.actor(),
        &source,
        app.now(),
    )
    .await?;
    Ok(Json(UserReply {
        user_name: rec.user,
        password_changed: Some(crate::service::credentials::rfc3339(rec.changed)),
    }))
}

/// `GET /api/v1/platform/_status` (Muster's): the platform at a glance, for the console's
/// platform page and `muster admin status`: this coordinator and every coordinator's published
/// names, the store and whether it answers, the CAs' pins, the install line's parts, hosts
/// registered and connected, and the certificates that expire within 14 days.
pub async fn platform_status(State(app): S) -> Json<serde_json::Value> {
    let view = app.view();
    let now = app.now();
    let store_ok = matches!(app.store.platform().await, Ok(Some(_)));
    let coordinators = app.store.coordinator_names().await.unwrap_or_default();
    let hosts = app.store.hosts().await.unwrap_or_default();
    let soon = now + 14 * 86_400;
    let mut expiring: Vec<serde_json::Value> = hosts
        .iter()
        .filter(|h| h.cert_not_after > 0 && h.cert_not_after <= soon)
        .map(|h| {
            serde_json::json!({
                "runner_id": h.node_id,
                "public_hostname": h.host.hostname,
                "certificate_not_after": h.cert_not_after,
            })
        })
        .collect();
    expiring.sort_by_key(|e| e["certificate_not_after"].as_u64());
    let (kind, members) = match app.config.store.backend {
        crate::config::Backend::Sqlite => ("sqlite", vec![]),
        crate::config::Backend::Etcd => ("etcd", app.config.store.etcd.endpoints.clone()),
    };
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now": now,
        "roles": muster_protocol::Role::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "coordinator": {
            "advertise": app.advertise,
            "mode": "coordinator",
        },
        "coordinators": coordinators,
        "store": {"kind": kind, "members": members, "healthy": store_ok},
        "ca": {
            "http_ca_pin": app.platform.http_ca.pin(),
            "transport_ca_pin": app.platform.transport_ca.pin(),
            "serving_key_curl_pin": app.serving_key.curl_pin(),
        },
        "hosts": {
            "registered": hosts.len(),
            "connected": hosts.iter().filter(|h| view.connected(h)).count(),
        },
        "expiring_within_14_days": expiring,
    }))
}

#[derive(serde::Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<u32>,
}

pub async fn audit_log(
    State(app): S,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditReply>, ApiError> {
    let Query(q) = q.map_err(query_invalid)?;
    let events = app
        .store
        .audit_log(q.after, q.limit.unwrap_or(1000).clamp(1, 10_000))
        .await?;
    Ok(Json(AuditReply { events }))
}

/// `q`, `size`, `from` and `sort` on ECE's lists (docs/api.md): typed, so `size=-1`,
/// `size=abc` or `size=null` is refused.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    q: Option<String>,
    size: Option<u32>,
    from: Option<u32>,
    sort: Option<String>,
}

/// What `q` and `sort` may name in an allocator.
const ALLOCATOR_FIELDS: &[&str] = &[
    "allocator_id",
    "zone_id",
    "host_ip",
    "public_hostname",
    "status.connected",
    "status.healthy",
    "status.maintenance_mode",
    "status.last_heartbeat",
    "capacity.memory.total",
    "capacity.memory.used",
    "features",
    "instances",
];

/// What `q` may name in a runner.
const RUNNER_FIELDS: &[&str] = &[
    "runner_id",
    "public_hostname",
    "host_ip",
    "connected",
    "healthy",
    "roles.role_name",
    "zone",
    "pending_roles",
    "token_id",
];

/// `items` filtered by `q`, ordered by `sort` (then `key`), cut to `from`/`size`.
fn listed<T: serde::Serialize>(
    items: Vec<T>,
    q: &ListQuery,
    fields: &[&str],
    key: &str,
) -> Result<Vec<T>, ApiError> {
    let invalid = |e: crate::query::Invalid| ApiError::new(ErrorCode::RequestInvalid, e.0);
    let query =
        crate::query::Query::parse(q.q.as_deref().unwrap_or(""), fields).map_err(invalid)?;
    let sort = crate::query::Sort::parse(
        &q.sort
            .as_deref()
            .map_or(key.to_string(), |s| format!("{s},{key}")),
        fields,
    )
    .map_err(invalid)?;
    let (from, size) = crate::query::window(q.from, q.size).map_err(invalid)?;
    let mut kept: Vec<(serde_json::Value, T)> = items
        .into_iter()
        .filter_map(|i| {
            let v = serde_json::to_value(&i).ok()?;
            query.matches(&v, fields).then_some((v, i))
        })
        .collect();
    kept.sort_by(|a, b| sort.compare(&a.0, &b.0));
    Ok(kept
        .into_iter()
        .skip(from)
        .take(size)
        .map(|(_, i)| i)
        .collect())
}

pub async fn allocators(
    State(app): S,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<AllocatorsReply>, ApiError> {
    let Query(q) = q.map_err(query_invalid)?;
    let view = app.view();
    let all = app
        .store
        .hosts()
        .await?
        .iter()
        .filter_map(|h| view.allocator(h))
        .collect();
    let zones = registry::zones(listed(all, &q, ALLOCATOR_FIELDS, "allocator_id")?);
    Ok(Json(AllocatorsReply { zones }))
}

/// `q` on the runners (ECE takes no `size`, `from` or `sort` there; Muster does, as on the
/// allocators, and answers every runner unless `size` says otherwise).
pub async fn runners(
    State(app): S,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<RunnersReply>, ApiError> {
    let Query(mut q) = q.map_err(query_invalid)?;
    let view = app.view();
    let all: Vec<RunnerInfo> = app
        .store
        .hosts()
        .await?
        .iter()
        .map(|h| view.runner(h))
        .collect();
    q.size = Some(q.size.unwrap_or(10_000));
    let runners = listed(all, &q, RUNNER_FIELDS, "runner_id")?;
    Ok(Json(RunnersReply { runners }))
}

fn runner_not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::EceRunnerNotFound,
        format!("no runner with id {id}"),
    )
}

pub async fn runner(State(app): S, Path(id): Path<String>) -> Result<Json<RunnerInfo>, ApiError> {
    match app.store.host(&id).await? {
        Some(h) => Ok(Json(app.view().runner(&h))),
        None => Err(runner_not_found(&id)),
    }
}

/// `?bless=` on `PUT …/roles`: typed, so `bless=notabool` is refused.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlessQuery {
    bless: Option<bool>,
}

/// Sets a runner's roles ([`registry::roles_set`]).
pub async fn set_runner_roles(
    State(app): S,
    Extension(c): Conn,
    Extension(who): Extension<Credential>,
    Path(id): Path<String>,
    q: Result<Query<BlessQuery>, QueryRejection>,
    body: Body,
) -> Result<Json<RunnerRolesInfo>, ApiError> {
    let bad = [ErrorCode::RequestInvalid, ErrorCode::RoleUnknown];
    let to_ece = |e: ApiError| e.as_ece(&bad, ErrorCode::EceSetRolesFailed);
    let Query(q) = q.map_err(query_invalid).map_err(to_ece)?;
    let req: RunnerRolesInfo = parse_json(body).map_err(to_ece)?;
    let names: Vec<String> = req.roles.iter().map(|r| r.name().to_string()).collect();
    let asked = tokens::parse_roles(&names).map_err(to_ece)?;
    let Some(host) = app.store.host(&id).await? else {
        return Err(runner_not_found(&id));
    };
    let (granted, pending): (Vec<Role>, Vec<Role>) =
        registry::roles_set(&host, asked, q.bless.unwrap_or(true));
    let source = c.remote.ip().to_string();
    let e = event(
        app.now(),
        "roles_set",
        &who.actor(),
        None,
        None,
        Some(&source),
        None,
    );
    app.store
        .set_roles(&id, &granted, &pending, &e)
        .await?
        .ok_or_else(|| runner_not_found(&id))?;
    Ok(Json(RunnerRolesInfo {
        roles: granted
            .iter()
            .map(|r| RoleItem::Named {
                role_name: r.to_string(),
            })
            .collect(),
    }))
}

pub async fn remove_runner(
    State(app): S,
    Extension(c): Conn,
    Extension(who): Extension<Credential>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let source = c.remote.ip().to_string();
    let e = event(
        app.now(),
        "host_removed",
        &who.actor(),
        None,
        None,
        Some(&source),
        None,
    );
    match app.store.remove_host(&id, &e).await? {
        Some(gone) => {
            app.names.forget_addresses(&gone);
            Ok(Json(serde_json::json!({})))
        }
        None => Err(runner_not_found(&id)),
    }
}

/// Elasticsearch's transport port, where `nodes_addresses` says the enrolled hosts listen.
const ES_TRANSPORT_PORT: u16 = 9300;

pub async fn es_enroll_node(State(app): S) -> Result<Response, ApiError> {
    if !app.config.es_enroll_node {
        return Err(ApiError::new(ErrorCode::FeatureDisabled, "the enroll-node API is off (es_enroll_node: true in the server config turns it on; it hands out the HTTP CA key)"));
    }
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let node_id = uuid::Uuid::new_v4().to_string();
    let leaf = Leaf {
        common_name: node_id,
        sans: vec![],
        coordinator: false,
        validity: time::Duration::days(app.config.cert_validity_days.into()),
    };
    let cert = app
        .platform
        .transport_ca
        .sign(&key, &leaf, time_of(app.now())?)?;
    // As Elasticsearch answers: the transport addresses of the nodes already there (the
    // registered hosts), for the new node's discovery.
    let nodes_addresses = app
        .store
        .hosts()
        .await?
        .iter()
        .filter_map(|h| h.host.addresses.first())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, ES_TRANSPORT_PORT).to_string())
        .collect();
    let mut resp = Json(EsEnrollNodeReply {
        http_ca_key: b64(&app.platform.http_ca.key_der()),
        http_ca_cert: b64(&app.platform.http_ca.cert_der),
        transport_ca_cert: b64(&app.platform.transport_ca.cert_der),
        transport_key: b64(&key.serialize_der()),
        transport_cert: b64(&cert.der),
        nodes_addresses,
    })
    .into_response();
    // Elastic's clients check that they talk to Elasticsearch by this header.
    resp.headers_mut().insert(
        "x-elastic-product",
        axum::http::HeaderValue::from_static("Elasticsearch"),
    );
    Ok(resp)
}
