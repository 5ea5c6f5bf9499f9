//! `musterd serve --config FILE`: YAML, every key with a default, unknown keys refused.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Mode {
    Coordinator,
    Director,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Backend {
    Sqlite,
    Etcd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub tls: Option<EtcdTls>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            prefix: "/muster/".into(),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: Backend,
    pub etcd: EtcdConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::Sqlite,
            etcd: EtcdConfig::default(),
        }
    }
}

/// The server config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Version of this file's schema.
    pub version: u32,
    pub listen: String,
    /// Addresses (`host:port`) put into tokens and bundles. Default: this host's name.
    pub advertise: Vec<String>,
    pub mode: Mode,
    pub store: StoreConfig,
    /// Serve `GET /_security/enroll/node`, which hands out the HTTP CA key. Off by default.
    pub es_enroll_node: bool,
    /// Seconds a join may stay uncommitted.
    pub reservation_seconds: u64,
    /// Lifetime of node certificates, in days.
    pub cert_validity_days: u32,
    /// Seconds without a heartbeat after which a host shows `connected: false`.
    pub heartbeat_timeout_seconds: u64,
    /// Zone for hosts that name none.
    pub default_zone: String,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Failed admin logins from one address allowed per minute.
    pub login_failures_per_minute: u32,
    /// Refused roles tokens (bad signature, unknown, revoked, expired…) from one address
    /// allowed per minute; past it, that address's joins are answered 429 until the minute ends.
    pub token_failures_per_minute: u32,
    /// Path of the static installer served at `/download/muster-x86_64`.
    pub installer_path: Option<PathBuf>,
    /// Open connections at once, in all (lowered to fit the process's file limit); past it,
    /// new connections are closed at once.
    pub max_connections: usize,
    /// Open connections at once from one source address (an IPv6 /64 counts as one).
    pub max_connections_per_source: usize,
    /// Seconds a connection may move no byte before it is closed (an idle keep-alive, a
    /// client that finished TLS and sends nothing, an HTTP/2 client that stopped reading).
    pub idle_timeout_seconds: u64,
    /// The file this was read from (not a key of the file).
    #[serde(skip)]
    source: Option<PathBuf>,
}

/// The config every `musterd` command reads when `--config` (or `MUSTERD_CONFIG`) names none
/// and this file exists: the one the packages install.
pub const DEFAULT_PATH: &str = "/etc/muster/musterd.yaml";

/// The embedded store's file in the data folder.
pub const SQLITE_FILE: &str = "muster.db";

impl Default for Config {
    fn default() -> Self {
        Config {
            version: 1,
            listen: format!("0.0.0.0:{}", muster_protocol::DEFAULT_PORT),
            advertise: vec![],
            mode: Mode::Coordinator,
            store: StoreConfig::default(),
            es_enroll_node: false,
            reservation_seconds: muster_protocol::node::DEFAULT_RESERVATION_SECS,
            cert_validity_days: 90,
            heartbeat_timeout_seconds: 90,
            default_zone: "zone-1".into(),
            max_body_bytes: 64 * 1024,
            login_failures_per_minute: 10,
            token_failures_per_minute: 30,
            installer_path: None,
            max_connections: 4096,
            max_connections_per_source: 256,
            idle_timeout_seconds: 60,
            source: None,
        }
    }
}

impl Config {
    /// The file given, or else [`DEFAULT_PATH`] when it exists (a packaged coordinator's), or
    /// else the defaults. [`Config::source`] says which.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let default = Path::new(DEFAULT_PATH);
        match path {
            Some(p) => Config::load_file(p),
            None if default.exists() => Config::load_file(default),
            None => Ok(Config::default()),
        }
    }

    /// The config file read, if any: for messages that must say where a setting came from.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Where the store is, as a person would look for it: the backend, where it lives, and the
    /// config file that said so.
    pub fn describe_store(&self, data_dir: &Path) -> String {
        let place = match self.store.backend {
            Backend::Sqlite => format!(
                "the embedded SQLite store {}",
                data_dir.join(SQLITE_FILE).display()
            ),
            Backend::Etcd => format!(
                "etcd at {} under {}",
                self.store.etcd.endpoints.join(","),
                self.store.etcd.prefix
            ),
        };
        match self.source() {
            Some(f) => format!("{place} (config {})", f.display()),
            None => format!("{place} (no config file: not given, and {DEFAULT_PATH} is absent)"),
        }
    }

    fn load_file(path: &Path) -> anyhow::Result<Config> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let mut cfg: Config = serde_norway::from_str(&text)
            .with_context(|| format!("parsing config {}", path.display()))?;
        cfg.check()
            .with_context(|| format!("in config {}", path.display()))?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// The ranges the numbers must be in: each is added to the clock somewhere, and a
    /// certificate cannot outlive the year 9999.
    pub fn check(&self) -> anyhow::Result<()> {
        let within = |name: &str, v: u64, lo: u64, hi: u64| {
            anyhow::ensure!(
                (lo..=hi).contains(&v),
                "{name} must be from {lo} to {hi}, not {v}"
            );
            Ok(())
        };
        within("reservation_seconds", self.reservation_seconds, 1, 86_400)?;
        within(
            "cert_validity_days",
            self.cert_validity_days.into(),
            1,
            3_650,
        )?;
        within(
            "heartbeat_timeout_seconds",
            self.heartbeat_timeout_seconds,
            1,
            30 * 86_400,
        )?;
        within("max_connections", self.max_connections as u64, 1, 1_000_000)?;
        within(
            "max_connections_per_source",
            self.max_connections_per_source as u64,
            1,
            self.max_connections as u64,
        )?;
        within("idle_timeout_seconds", self.idle_timeout_seconds, 1, 3_600)?;
        for a in &self.advertise {
            muster_protocol::addr::check_host_port(a)
                .map_err(|e| anyhow::anyhow!("advertise: {e}"))?;
        }
        self.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            anyhow::anyhow!(
                "listen: {:?} is not ADDRESS:PORT (0.0.0.0:12443)",
                self.listen
            )
        })?;
        Ok(())
    }

    /// Advertised addresses, defaulting to this host's name on the default port.
    pub fn advertise_or_default(&self) -> Vec<String> {
        if !self.advertise.is_empty() {
            return self.advertise.clone();
        }
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        vec![format!("{host}:{}", muster_protocol::DEFAULT_PORT)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_design_example_and_refuses_unknown_keys() {
        let yaml = "listen: 0.0.0.0:12443\nadvertise: [coordinator-1.example.net:12443]\nmode: coordinator\nstore:\n  backend: sqlite\n  etcd:\n    endpoints: [https://127.0.0.1:2379]\n    prefix: /muster/\nes_enroll_node: false\n";
        let c: Result<Config, _> = serde_norway::from_str(yaml);
        assert_eq!(
            c.ok().map(|c| c.advertise),
            Some(vec!["coordinator-1.example.net:12443".to_string()])
        );
        let bad: Result<Config, _> = serde_norway::from_str("listne: 1.2.3.4:1\n");
        assert!(bad.is_err_and(|e| e.to_string().contains("listne")));
    }

    #[test]
    fn numbers_out_of_range_are_refused_by_name() -> anyhow::Result<()> {
        assert!(Config::default().check().is_ok());
        for (yaml, name) in [
            ("cert_validity_days: 3000000\n", "cert_validity_days"),
            ("reservation_seconds: 0\n", "reservation_seconds"),
            (
                "heartbeat_timeout_seconds: 18446744073709551615\n",
                "heartbeat_timeout_seconds",
            ),
        ] {
            let c: Config = serde_norway::from_str(yaml)?;
            let e = c.check().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(name), "{yaml}: {e:?}");
        }
        Ok(())
    }
}
