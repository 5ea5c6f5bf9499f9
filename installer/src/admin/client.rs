//! The admin API's connection: where and as whom (flags, environment, profile, this
//! coordinator's own, in that order for each setting), TLS trusting the platform's CA alone,
//! the API key sent as `Authorization: ApiKey`, and an error answer read into a failure that
//! names its code.

use super::Conn;
use crate::exit::{Exit, Failure, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// A coordinator's own data folder and config, for `muster admin` run on it with no flags.
const LOCAL_DATA: &str = "/var/lib/musterd";
const LOCAL_CONFIG: &str = "/etc/muster/musterd.yaml";
/// musterd's port when its config names none.
const DEFAULT_PORT: u16 = 12443;

/// One profile of the profile file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    coordinator: Option<String>,
    ca_file: Option<PathBuf>,
    api_key_file: Option<PathBuf>,
}

/// Where to go and as whom, resolved.
pub struct Settings {
    /// `https://host:port`, no trailing slash.
    pub base: String,
    ca_file: PathBuf,
    key: Zeroizing<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::new(Exit::Usage, message)
}

/// The profile named (or `default`) from the profile file, if there is one. A file or a
/// profile named on purpose must be there.
fn profile(c: &Conn) -> Result<Profile> {
    let named = c.profile.clone().or_else(|| env("MUSTER_PROFILE"));
    let given = c
        .config
        .clone()
        .or_else(|| env("MUSTER_ADMIN_CONFIG").map(PathBuf::from));
    let file = given
        .clone()
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config/muster/admin.yaml")));
    let Some(file) = file else {
        return Ok(Profile::default());
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound && given.is_none() && named.is_none() =>
        {
            return Ok(Profile::default())
        }
        Err(e) => {
            return Err(usage(format!(
                "reading the profile file {}: {e}",
                file.display()
            )))
        }
    };
    let mut all: BTreeMap<String, Profile> = serde_norway::from_str(&text).map_err(|e| {
        usage(format!(
            "{}: {e} (profiles are `name: {{coordinator, ca_file, api_key_file}}`)",
            file.display()
        ))
    })?;
    let name = named.unwrap_or_else(|| "default".into());
    match all.remove(&name) {
        Some(p) => Ok(p),
        None if c.profile.is_none() && env("MUSTER_PROFILE").is_none() => Ok(Profile::default()),
        None => Err(usage(format!(
            "{} has no profile {name:?} (it has: {})",
            file.display(),
            all.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// This coordinator's own address, from its config's `listen` (any address becomes loopback).
fn local_coordinator() -> Option<String> {
    if !Path::new(LOCAL_DATA).join("ca.pem").is_file() {
        return None;
    }
    #[derive(Deserialize)]
    struct Listen {
        listen: Option<String>,
    }
    let listen = std::fs::read_to_string(LOCAL_CONFIG)
        .ok()
        .and_then(|t| serde_norway::from_str::<Listen>(&t).ok())
        .and_then(|l| l.listen);
    let port = listen
        .as_deref()
        .and_then(|l| l.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(DEFAULT_PORT);
    Some(format!("127.0.0.1:{port}"))
}

/// The API key from `path` ([`read_secret_file`]).
fn read_key_file(path: &Path) -> Result<Zeroizing<String>> {
    read_secret_file(path, "API key")
}

/// The `what` (API key, password) in `path`, trimmed: refused when anyone but its owner may
/// read it or when it belongs to another user (root's files excepted), as ssh refuses a key
/// file. `-` reads the first line of standard input.
pub fn read_secret_file(path: &Path, what: &str) -> Result<Zeroizing<String>> {
    if path == Path::new("-") {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| usage(format!("reading the {what} from standard input: {e}")))?;
        let secret = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_string());
        if secret.is_empty() {
            return Err(usage(format!("no {what} on standard input")));
        }
        return Ok(secret);
    }
    let named =
        |e: std::io::Error| usage(format!("reading the {what} file {}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(named)?;
    if !meta.is_file() {
        return Err(usage(format!("{}: not a file", path.display())));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(usage(format!(
            "the {what} file {} belongs to user {}, not to you: refused",
            path.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(usage(format!(
            "the {what} file {} may be read by others (mode {:o}): chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        )));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(named)?);
    let secret = Zeroizing::new(text.trim().to_string());
    if secret.is_empty() {
        return Err(usage(format!(
            "the {what} file {} is empty",
            path.display()
        )));
    }
    Ok(secret)
}

/// The API key of this coordinator, from its bootstrap secrets (readable by root and the
/// musterd user only).
fn local_key() -> Option<Zeroizing<String>> {
    #[derive(Deserialize)]
    struct Secrets {
        api_key: String,
    }
    let path = Path::new(LOCAL_DATA).join("bootstrap-secrets.json");
    let meta = std::fs::metadata(&path).ok()?;
    if meta.mode() & 0o077 != 0 {
        return None;
    }
    let text = Zeroizing::new(std::fs::read_to_string(&path).ok()?);
    let mut s = serde_json::from_str::<Secrets>(&text).ok()?;
    Some(Zeroizing::new(std::mem::take(&mut s.api_key)))
}

impl Settings {
    pub fn resolve(c: &Conn) -> Result<Settings> {
        let p = profile(c)?;
        let coordinator = c
            .coordinator
            .clone()
            .or_else(|| env("MUSTER_COORDINATOR"))
            .or(p.coordinator)
            .or_else(local_coordinator)
            .ok_or_else(|| {
                usage("which coordinator? pass --coordinator host:port, set MUSTER_COORDINATOR, or a profile's coordinator (docs/admin.md)")
            })?;
        let ca_file = c
            .ca_file
            .clone()
            .or_else(|| env("MUSTER_CA_FILE").map(PathBuf::from))
            .or(p.ca_file)
            .or_else(|| {
                let local = Path::new(LOCAL_DATA).join("ca.pem");
                local.is_file().then_some(local)
            })
            .ok_or_else(|| {
                usage("which CA? pass --ca-file (a coordinator's ca.pem), set MUSTER_CA_FILE, or a profile's ca_file")
            })?;
        let key_file = c
            .api_key_file
            .clone()
            .or_else(|| env("MUSTER_API_KEY_FILE").map(PathBuf::from));
        let key = match key_file {
            Some(f) => read_key_file(&f)?,
            None => match env("MUSTER_API_KEY") {
                Some(k) => Zeroizing::new(k.trim().to_string()),
                None => match p.api_key_file {
                    Some(f) => read_key_file(&f)?,
                    None => local_key().ok_or_else(|| {
                        usage("no API key: pass --api-key-file, set MUSTER_API_KEY_FILE or MUSTER_API_KEY, or a profile's api_key_file")
                    })?,
                },
            },
        };
        let base = coordinator.trim().trim_end_matches('/');
        let base = if base.starts_with("https://") {
            base.to_string()
        } else if base.contains("://") {
            return Err(usage(format!("--coordinator {base}: only https")));
        } else {
            format!("https://{base}")
        };
        Ok(Settings { base, ca_file, key })
    }
}

/// The admin API of one coordinator.
pub struct Api {
    http: reqwest::Client,
    pub base: String,
    key: Zeroizing<String>,
}

/// An error answer: ECE's `{"errors":[{"code","message"}]}`.
#[derive(Deserialize)]
struct Errors {
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    code: String,
    message: String,
}

impl Api {
    pub fn connect(s: Settings) -> Result<Api> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let pem = std::fs::read(&s.ca_file)
            .map_err(|e| usage(format!("reading the CA {}: {e}", s.ca_file.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| usage(format!("{}: {e}", s.ca_file.display())))?;
            roots
                .add(cert)
                .map_err(|e| usage(format!("{}: {e}", s.ca_file.display())))?;
        }
        if roots.is_empty() {
            return Err(usage(format!(
                "{}: no certificate in it (give a coordinator's ca.pem)",
                s.ca_file.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Failure::new(Exit::Other, format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .hickory_dns(true)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("muster-admin/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::new(Exit::Other, format!("HTTP client setup: {e}")))?;
        Ok(Api {
            http,
            base: s.base,
            key: s.key,
        })
    }

    /// `method path` with `body` as JSON; the answer read as `T`.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("Authorization", format!("ApiKey {}", self.key.as_str()));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                why = format!("{why}: {s}");
                src = s.source();
            }
            Failure::new(
                Exit::Unreachable,
                format!("{} did not answer: {why}", self.base),
            )
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            Failure::new(
                Exit::Unreachable,
                format!("{}: reading the answer: {e}", self.base),
            )
        })?;
        if !status.is_success() {
            let (code, message) = match serde_json::from_slice::<Errors>(&bytes) {
                Ok(mut e) if !e.errors.is_empty() => {
                    let first = e.errors.remove(0);
                    (first.code, first.message)
                }
                _ => (
                    String::new(),
                    String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                ),
            };
            let mut f = Failure::new(
                Exit::Refused,
                format!(
                    "{method} {path}: HTTP {} {code}: {message}",
                    status.as_u16()
                ),
            );
            f.code = Some(code).filter(|c| !c.is_empty());
            return Err(f);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Failure::new(
                Exit::Other,
                format!("{method} {path}: the answer does not read: {e}"),
            )
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call::<(), T>(reqwest::Method::GET, path, None).await
    }

    /// `GET path` without credentials, for `/healthz` and `/readyz`: whether it answered 2xx.
    pub async fn probe(&self, path: &str) -> bool {
        let url = format!("{}{path}", self.base);
        self.http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_file_others_may_read_is_refused() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("key");
        std::fs::write(&f, "  the-key\n")?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644))?;
        let refused = read_key_file(&f).err().map(|e| e.message);
        assert!(
            refused
                .as_deref()
                .is_some_and(|m| m.contains("chmod 600") && !m.contains("the-key")),
            "{refused:?}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))?;
        assert_eq!(
            read_key_file(&f).ok().as_deref().map(|k| k.as_str()),
            Some("the-key")
        );
        std::fs::write(&f, "\n")?;
        assert!(read_key_file(&f).is_err(), "empty");
        Ok(())
    }
}
