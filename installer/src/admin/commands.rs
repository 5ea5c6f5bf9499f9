//! The `muster admin` commands: each calls the admin API, prints text for people (dates they
//! can read) or returns the JSON for `--output json`.

use super::client::{Api, Settings};
use super::{seconds, AdminCmd, AuditArgs, Conn, HostsCmd, KeysCmd, PasswordArgs, TokensCmd};
use crate::exit::{Exit, Failure, Result};
use crate::output::Output;
use muster_protocol::api::{
    ApiKeyInfo, ApiKeysReply, AuditEvent, AuditReply, CreateApiKeyRequest, CreateTokenReply,
    CreateTokenRequest, ListTokensReply, RoleItem, RunnerInfo, RunnerRolesInfo, RunnersReply,
    TokenInfo, UpdateUserRequest, UserReply, UserSecurity,
};
use muster_protocol::paths;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Runs `cmd` against the coordinator `conn` names.
pub async fn run(conn: &Conn, cmd: &AdminCmd) -> Result<Value> {
    let api = Api::connect(Settings::resolve(conn)?)?;
    let text = conn.output == Output::Text;
    match cmd {
        AdminCmd::Tokens { cmd } => tokens(&api, cmd, text).await,
        AdminCmd::Hosts { cmd } => hosts(&api, cmd, text).await,
        AdminCmd::Keys { cmd } => keys(&api, cmd, text).await,
        AdminCmd::Password(a) => password(&api, a, text).await,
        AdminCmd::Audit(a) => audit(&api, a, text).await,
        AdminCmd::Status { within } => status(&api, seconds("--within", within)?, text).await,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A time people read: `Wed, 02 Dec 2026 18:53:11 GMT`; `-` for none.
fn date(secs: u64) -> String {
    if secs == 0 {
        return "-".into();
    }
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// An id that goes into a path: letters, digits, `-` and `_` only.
fn path_id(what: &str, id: &str) -> Result<String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(id.to_string())
    } else {
        Err(Failure::new(
            Exit::Usage,
            format!("{what} {id:?}: an id is letters, digits, - and _"),
        ))
    }
}

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn roles_text<T: std::fmt::Display>(roles: &[T]) -> String {
    if roles.is_empty() {
        return "-".into();
    }
    roles
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Failure::new(Exit::Other, e.to_string()))
}

fn token_row(t: &TokenInfo) -> Vec<String> {
    let uses = match t.max_uses {
        Some(m) => format!("{}/{m}", t.uses),
        None => t.uses.to_string(),
    };
    vec![
        t.token_id.clone(),
        format!("{:?}", t.kind).to_lowercase(),
        roles_text(&t.roles),
        date(t.created),
        t.expires.map_or("never".into(), date),
        uses,
        t.description.clone().unwrap_or_default(),
    ]
}

async fn tokens(api: &Api, cmd: &TokensCmd, text: bool) -> Result<Value> {
    let header = [
        "ID",
        "KIND",
        "ROLES",
        "CREATED",
        "EXPIRES",
        "USES",
        "DESCRIPTION",
    ];
    match cmd {
        TokensCmd::List => {
            let r: ListTokensReply = api.get(paths::TOKENS).await?;
            if text {
                let rows: Vec<_> = r.tokens.iter().map(token_row).collect();
                table(&header, &rows);
            }
            to_json(&r)
        }
        TokensCmd::Show { id } => {
            let r: ListTokensReply = api.get(paths::TOKENS).await?;
            let t = r
                .tokens
                .into_iter()
                .find(|t| t.token_id == *id)
                .ok_or_else(|| Failure::new(Exit::Refused, format!("no live token has id {id}")))?;
            if text {
                table(&header, &[token_row(&t)]);
                if !t.allowed_sources.is_empty() {
                    println!("allowed sources: {}", t.allowed_sources.join(", "));
                }
            }
            to_json(&t)
        }
        TokensCmd::Create {
            roles,
            persistent,
            validity,
            max_uses,
            allowed_sources,
            description,
        } => {
            let req = CreateTokenRequest {
                persistent: *persistent,
                roles: roles.iter().map(|r| r.trim().to_string()).collect(),
                validity_in_seconds: validity
                    .as_deref()
                    .map(|v| seconds("--validity", v))
                    .transpose()?,
                max_uses: *max_uses,
                allowed_sources: allowed_sources.clone(),
                description: description.clone(),
            };
            let path = format!("{}?install_command=true", paths::TOKENS);
            let r: CreateTokenReply = api.call(Method::POST, &path, Some(&req)).await?;
            if text {
                // The secret, once, on standard output: where it was asked for.
                println!("token id: {}", r.token_id);
                println!("token:    {}", r.token);
                if let Some(line) = &r.install_command {
                    println!("enroll a host with:\n  {line}");
                }
            }
            Ok(
                json!({"token_id": r.token_id, "token": r.token, "install_command": r.install_command}),
            )
        }
        TokensCmd::Revoke { id } => {
            let id = path_id("token id", id)?;
            let _: Value = api
                .call::<(), _>(Method::DELETE, &format!("{}/{id}", paths::TOKENS), None)
                .await?;
            if text {
                println!("revoked {id}");
            }
            Ok(json!({"revoked": id}))
        }
    }
}

fn key_row(k: &ApiKeyInfo) -> Vec<String> {
    vec![
        k.id.clone(),
        k.creation_date.clone(),
        k.created_by.clone().unwrap_or_else(|| "-".into()),
        k.revoked_date.clone().unwrap_or_else(|| "-".into()),
        k.description.clone().unwrap_or_default(),
    ]
}

async fn keys(api: &Api, cmd: &KeysCmd, text: bool) -> Result<Value> {
    match cmd {
        KeysCmd::List => {
            let r: ApiKeysReply = api.get(paths::API_KEYS).await?;
            if text {
                let rows: Vec<_> = r.keys.iter().map(key_row).collect();
                table(&["NAME", "CREATED", "BY", "REVOKED", "DESCRIPTION"], &rows);
            }
            to_json(&r)
        }
        KeysCmd::Create {
            name,
            description,
            key_file,
        } => {
            // Made before the key exists, so a file that cannot be written loses nothing.
            let file = key_file.as_deref().map(new_secret_file).transpose()?;
            let req = CreateApiKeyRequest {
                name: Some(name.clone()),
                description: description.clone(),
                authentication_token: None,
            };
            let r: ApiKeyInfo = api.call(Method::POST, paths::API_KEYS, Some(&req)).await?;
            let key = zeroize::Zeroizing::new(r.key.clone().unwrap_or_default());
            let mut shown = to_json(&ApiKeyInfo {
                key: None,
                ..r.clone()
            })?;
            match (file, key_file) {
                (Some(mut f), Some(path)) => {
                    use std::io::Write;
                    f.write_all(format!("{}\n", key.as_str()).as_bytes())
                        .and_then(|()| f.sync_all())
                        .map_err(|e| {
                            Failure::new(
                                Exit::Other,
                                format!(
                                    "writing {}: {e}; the key {} was made: revoke it",
                                    path.display(),
                                    r.id
                                ),
                            )
                        })?;
                    if text {
                        println!("API key {} written to {}", r.id, path.display());
                    }
                    shown["key_file"] = json!(path.display().to_string());
                }
                _ => {
                    if text {
                        // The secret, once, on standard output: where it was asked for.
                        println!("API key {}: {}", r.id, key.as_str());
                    }
                    shown["key"] = json!(key.as_str());
                }
            }
            Ok(shown)
        }
        KeysCmd::Revoke { name } => {
            let ok = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(Failure::new(
                    Exit::Usage,
                    format!(
                        "API key name {name:?}: a name is 1 to 64 of a-z, 0-9, '.', '_' and '-'"
                    ),
                ));
            }
            let _: Value = api
                .call::<(), _>(Method::DELETE, &format!("{}/{name}", paths::API_KEYS), None)
                .await?;
            if text {
                println!("revoked API key {name}");
            }
            Ok(json!({"revoked": name}))
        }
    }
}

/// A new file for a secret: owner-only from the start, and never over an existing file.
fn new_secret_file(path: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Failure::new(Exit::Usage, format!("{}: {e}", path.display())))
}

async fn password(api: &Api, a: &PasswordArgs, text: bool) -> Result<Value> {
    let current = super::client::read_secret_file(&a.current_password_file, "current password")?;
    let (new, made) = match &a.new_password_file {
        Some(p) => (super::client::read_secret_file(p, "new password")?, false),
        None => {
            use base64::Engine;
            let mut b = zeroize::Zeroizing::new([0u8; 24]);
            rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
            (
                zeroize::Zeroizing::new(
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b[..]),
                ),
                true,
            )
        }
    };
    let req = UpdateUserRequest {
        security: Some(UserSecurity {
            password: Some(new.to_string()),
            current_password: Some(current.to_string()),
        }),
    };
    let r: UserReply = api
        .call(Method::PATCH, paths::CURRENT_USER, Some(&req))
        .await?;
    let mut shown = to_json(&r)?;
    if made {
        shown["password"] = json!(new.as_str());
    }
    if text {
        println!(
            "the password of {} is changed on every coordinator",
            r.user_name
        );
        if made {
            // The secret, once, on standard output: where it was asked for.
            println!("new password: {}", new.as_str());
        }
    }
    Ok(shown)
}

/// The host named by node id or (in any letter case) by name.
async fn find_host(api: &Api, host: &str) -> Result<RunnerInfo> {
    let r: RunnersReply = api.get(paths::RUNNERS).await?;
    r.runners
        .into_iter()
        .find(|h| h.runner_id == host || h.public_hostname.eq_ignore_ascii_case(host))
        .ok_or_else(|| {
            Failure::new(
                Exit::Refused,
                format!("no host has node id or name {host:?}"),
            )
        })
}

fn host_row(h: &RunnerInfo) -> Vec<String> {
    let roles: Vec<_> = h.roles.iter().map(|r| r.role_name).collect();
    vec![
        h.runner_id.clone(),
        h.public_hostname.clone(),
        roles_text(&roles),
        h.zone.clone(),
        if h.connected { "yes" } else { "no" }.into(),
        date(h.last_heartbeat),
        h.agent_version.clone().unwrap_or_else(|| "-".into()),
        date(h.certificate_not_after),
    ]
}

const HOST_HEADER: [&str; 8] = [
    "NODE ID",
    "NAME",
    "ROLES",
    "ZONE",
    "CONNECTED",
    "LAST HEARTBEAT",
    "AGENT",
    "CERTIFICATE EXPIRES",
];

async fn hosts(api: &Api, cmd: &HostsCmd, text: bool) -> Result<Value> {
    match cmd {
        HostsCmd::List => {
            let r: RunnersReply = api.get(paths::RUNNERS).await?;
            if text {
                let rows: Vec<_> = r.runners.iter().map(host_row).collect();
                table(&HOST_HEADER, &rows);
            }
            to_json(&r)
        }
        HostsCmd::Show { host } => {
            let h = find_host(api, host).await?;
            if text {
                table(&HOST_HEADER, &[host_row(&h)]);
                if !h.pending_roles.is_empty() {
                    println!("pending roles: {}", roles_text(&h.pending_roles));
                }
                println!("enrolled with token {}", h.token_id);
            }
            to_json(&h)
        }
        HostsCmd::Remove { host } => {
            let h = find_host(api, host).await?;
            let id = path_id("node id", &h.runner_id)?;
            let _: Value = api
                .call::<(), _>(Method::DELETE, &format!("{}/{id}", paths::RUNNERS), None)
                .await?;
            if text {
                println!(
                    "removed {} ({id}); its certificates are revoked",
                    h.public_hostname
                );
            }
            Ok(json!({"removed": id, "hostname": h.public_hostname}))
        }
        HostsCmd::Roles { host, set, pending } => {
            let h = find_host(api, host).await?;
            let id = path_id("node id", &h.runner_id)?;
            let body = RunnerRolesInfo {
                roles: set
                    .iter()
                    .map(|r| RoleItem::Named {
                        role_name: r.trim().to_string(),
                    })
                    .collect(),
            };
            let path = format!("{}/{id}/roles?bless={}", paths::RUNNERS, !pending);
            let r: RunnerRolesInfo = api.call(Method::PUT, &path, Some(&body)).await?;
            let granted: Vec<&str> = r.roles.iter().map(RoleItem::name).collect();
            if text {
                println!("{}: roles {}", h.public_hostname, roles_text(&granted));
                if *pending {
                    println!("asked for (pending): {}", set.join(","));
                }
            }
            Ok(json!({"node_id": id, "roles": granted}))
        }
    }
}

/// Whether `e` passes the filters (`host` matched by node id or name, any letter case).
fn wanted(e: &AuditEvent, a: &AuditArgs, since: Option<u64>) -> bool {
    a.kind.as_ref().is_none_or(|k| e.event == *k)
        && a.token
            .as_ref()
            .is_none_or(|t| e.token_id.as_deref() == Some(t.as_str()))
        && a.host.as_ref().is_none_or(|h| {
            e.node_id.as_deref() == Some(h.as_str())
                || e.hostname
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(h))
        })
        && since.is_none_or(|s| e.at >= s)
}

fn print_event(e: &AuditEvent, text: bool) {
    if !text {
        if let Ok(line) = serde_json::to_string(e) {
            println!("{line}");
        }
        return;
    }
    let mut fields = vec![
        date(e.at),
        e.event.clone(),
        e.actor.clone().unwrap_or_else(|| "-".into()),
    ];
    for (k, v) in [
        ("token", &e.token_id),
        ("node", &e.node_id),
        ("host", &e.hostname),
        ("source", &e.source),
        ("reason", &e.reason),
        ("about", &e.target),
    ] {
        if let Some(v) = v {
            fields.push(format!("{k}={v}"));
        }
    }
    println!("{}", fields.join("  "));
}

/// Every event after `after` (paging through the log), oldest first.
async fn events_after(api: &Api, mut after: u64) -> Result<Vec<AuditEvent>> {
    const PAGE: usize = 1000;
    let mut all = Vec::new();
    loop {
        let path = format!("{}?after={after}&limit={PAGE}", paths::AUDIT);
        let r: AuditReply = api.get(&path).await?;
        let n = r.events.len();
        if let Some(last) = r.events.last() {
            after = last.seq;
        }
        all.extend(r.events);
        if n < PAGE {
            return Ok(all);
        }
    }
}

async fn audit(api: &Api, a: &AuditArgs, text: bool) -> Result<Value> {
    let since = a
        .since
        .as_deref()
        .map(|s| seconds("--since", s).map(|d| now().saturating_sub(d)))
        .transpose()?;
    let events = events_after(api, 0).await?;
    let mut last = events.last().map_or(0, |e| e.seq);
    let shown: Vec<AuditEvent> = events.into_iter().filter(|e| wanted(e, a, since)).collect();
    if !a.follow {
        if text {
            for e in &shown {
                print_event(e, true);
            }
        }
        return Ok(json!({ "events": shown }));
    }
    // One event a line as they come (JSON lines with --output json), until stopped.
    for e in &shown {
        print_event(e, text);
    }
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for e in events_after(api, last).await? {
            last = last.max(e.seq);
            if wanted(&e, a, since) {
                print_event(&e, text);
            }
        }
    }
}

async fn status(api: &Api, within: u64, text: bool) -> Result<Value> {
    let healthy = api.probe("/healthz").await;
    let ready = api.probe("/readyz").await;
    let r: RunnersReply = api.get(paths::RUNNERS).await?;
    let connected = r.runners.iter().filter(|h| h.connected).count();
    // The platform's coordinators, as enrolled hosts with the role.
    let coordinators: Vec<&RunnerInfo> = r
        .runners
        .iter()
        .filter(|h| {
            h.roles
                .iter()
                .any(|x| x.role_name == muster_protocol::Role::Coordinator)
        })
        .collect();
    let by = now().saturating_add(within);
    let mut expiring: Vec<&RunnerInfo> = r
        .runners
        .iter()
        .filter(|h| h.certificate_not_after != 0 && h.certificate_not_after <= by)
        .collect();
    expiring.sort_by_key(|h| h.certificate_not_after);
    if text {
        println!(
            "coordinator {}: {}, {}",
            api.base,
            if healthy {
                "up"
            } else {
                "NOT answering /healthz"
            },
            if ready {
                "store reachable"
            } else {
                "store NOT reachable"
            }
        );
        for h in &coordinators {
            let state = if h.connected {
                "connected"
            } else {
                "NOT heard from"
            };
            println!(
                "coordinator host {} ({}): {state}",
                h.public_hostname, h.runner_id
            );
        }
        println!(
            "hosts: {} registered, {} connected, {} not heard from",
            r.runners.len(),
            connected,
            r.runners.len() - connected
        );
        if expiring.is_empty() {
            println!(
                "certificates: none expires within {}",
                humantime::format_duration(Duration::from_secs(within))
            );
        } else {
            println!(
                "certificates expiring within {}:",
                humantime::format_duration(Duration::from_secs(within))
            );
            for h in &expiring {
                println!(
                    "  {}  {}  {}",
                    h.public_hostname,
                    h.runner_id,
                    date(h.certificate_not_after)
                );
            }
        }
    }
    Ok(json!({
        "coordinator": api.base,
        "healthy": healthy,
        "ready": ready,
        "hosts": r.runners.len(),
        "connected": connected,
        "coordinators": coordinators.iter().map(|h| json!({
            "node_id": h.runner_id,
            "hostname": h.public_hostname,
            "connected": h.connected,
        })).collect::<Vec<_>>(),
        "expiring": expiring.iter().map(|h| json!({
            "node_id": h.runner_id,
            "hostname": h.public_hostname,
            "certificate_not_after": h.certificate_not_after,
        })).collect::<Vec<_>>(),
    }))
}
