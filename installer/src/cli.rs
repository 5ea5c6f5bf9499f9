//! The `muster` command line and the config file with the same keys.

use crate::exit::{Exit, Failure, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "muster",
    version,
    about = "Enroll this host into a Muster platform"
)]
#[command(help_expected = true)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

pub use crate::output::Output;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Enroll this host: check the token, join, write certificates and config, commit.
    Install(InstallArgs),
    /// Write shell completions and man pages into a folder (for the packages).
    #[command(hide = true)]
    Generate {
        /// The folder to write them into.
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Show whether this host is enrolled, its node id, roles and certificate expiry.
    Status(CommonArgs),
    /// Work with roles tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Keep the host connected: heartbeats over mutual TLS, renewal before expiry.
    Agent {
        #[command(flatten)]
        common: CommonArgs,
        /// Seconds between heartbeats.
        #[arg(long, default_value_t = 30)]
        interval: u64,
        /// Send this many heartbeats and stop (0: run until stopped).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Renew this host's certificates now (new keys, new certificates).
    Renew(CommonArgs),
    /// Deregister this host and remove what `muster install` wrote.
    Leave {
        #[command(flatten)]
        common: CommonArgs,
        /// Then remove what the one-liner installed too: the agent's unit, the muster user it
        /// made, the binary (a package's files are the package manager's).
        #[arg(long)]
        purge: bool,
    },
    /// Administer the platform from any machine that reaches a coordinator: tokens, hosts,
    /// the audit log, status (docs/admin.md).
    Admin {
        #[command(flatten)]
        conn: crate::admin::Conn,
        #[command(subcommand)]
        cmd: crate::admin::AdminCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Show a token's claims (id, roles, expiry, coordinators, CA pins), never its signature.
    Inspect {
        #[command(flatten)]
        token: TokenArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Args, Clone, Default)]
pub struct TokenArgs {
    /// The roles token. Prefer MUSTER_ROLES_TOKEN or --roles-token-file: muster moves a token
    /// given here out of its argument list at once, but the shell may have logged it.
    #[arg(long, env = "MUSTER_ROLES_TOKEN", hide_env_values = true)]
    pub roles_token: Option<String>,
    /// Read the roles token from this file.
    #[arg(long, env = "MUSTER_ROLES_TOKEN_FILE")]
    pub roles_token_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Root of the host's file tree (a scratch folder for tests).
    #[arg(long, env = "MUSTER_ROOT", default_value = "/")]
    pub root: PathBuf,
    /// Output format.
    #[arg(long, value_enum, env = "MUSTER_OUTPUT", default_value = "text")]
    pub output: Output,
    /// Give up on unreachable coordinators after this long (e.g. 30s, 15m).
    #[arg(long, env = "MUSTER_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Args, Debug, Clone, Default)]
pub struct InstallArgs {
    /// Coordinator to enroll through, HOST[:PORT] (port 12443 by default).
    #[arg(long, env = "MUSTER_COORDINATOR_HOST")]
    pub coordinator_host: Option<String>,
    #[command(flatten)]
    pub token: TokenArgs,
    /// Roles to ask for, comma-separated (default: every role the token grants).
    #[arg(long, env = "MUSTER_ROLES")]
    pub roles: Option<String>,
    /// Availability zone of this host.
    #[arg(long, env = "MUSTER_AVAILABILITY_ZONE")]
    pub availability_zone: Option<String>,
    /// Root of the host's file tree (default /).
    #[arg(long, env = "MUSTER_ROOT")]
    pub root: Option<PathBuf>,
    /// Owner of keys and keystores, USER[:GROUP], looked up in ROOT/etc/passwd (default muster).
    #[arg(long, env = "MUSTER_OWNER")]
    pub owner: Option<String>,
    /// Host name to enroll as (default: this host's name).
    #[arg(long, env = "MUSTER_HOSTNAME")]
    pub hostname: Option<String>,
    /// When this host takes the coordinator role with the emergency token (recovery): the
    /// HOST:PORT its musterd serves at and puts into tokens (default: this host's name, port
    /// 12443).
    #[arg(long, env = "MUSTER_ADVERTISE")]
    pub advertise: Option<String>,
    /// Print what would be written, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Enroll again even if this host is enrolled (new keys; the old record is replaced).
    #[arg(long)]
    pub force: bool,
    /// Give up on unreachable coordinators after this long (default 15m, long enough for a
    /// cloud-init boot).
    #[arg(long, env = "MUSTER_TIMEOUT", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Output format: text for people (stderr), json for automation (stdout).
    #[arg(long, value_enum, env = "MUSTER_OUTPUT")]
    pub output: Option<Output>,
    /// YAML file with the same settings (keys as the flags: coordinator-host, roles, …).
    #[arg(long, env = "MUSTER_CONFIG")]
    pub config: Option<PathBuf>,
}

/// What stands for a secret in Debug output.
const REDACTED: &str = "<redacted>";

impl std::fmt::Debug for TokenArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenArgs")
            .field("roles_token", &self.roles_token.as_ref().map(|_| REDACTED))
            .field("roles_token_file", &self.roles_token_file)
            .finish()
    }
}

pub use muster_protocol::enroll::{parse_file_config, FileConfig, RolesValue};

/// Everything `install` needs, merged from flags, environment and the config file.
#[derive(Clone)]
pub struct Settings {
    pub coordinator_host: Option<String>,
    pub token: zeroize::Zeroizing<String>,
    pub roles: Vec<muster_protocol::Role>,
    pub zone: String,
    pub root: PathBuf,
    pub owner: String,
    pub hostname: Option<String>,
    pub advertise: Option<String>,
    pub dry_run: bool,
    pub force: bool,
    pub timeout: std::time::Duration,
    pub output: Output,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("coordinator_host", &self.coordinator_host)
            .field("token", &REDACTED)
            .field("roles", &self.roles)
            .field("zone", &self.zone)
            .field("root", &self.root)
            .field("owner", &self.owner)
            .field("hostname", &self.hostname)
            .field("advertise", &self.advertise)
            .field("dry_run", &self.dry_run)
            .field("force", &self.force)
            .field("timeout", &self.timeout)
            .field("output", &self.output)
            .finish()
    }
}

/// Parses `30s`, `15m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        _ => (s, 1),
    };
    let n = num
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 15m, 1h)"))?;
    n.checked_mul(mult)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long a duration"))
}

/// Reads a token from its sources: the flag or environment, else the file.
pub fn read_token(
    args: &TokenArgs,
    file_token: Option<&str>,
    file_token_path: Option<&PathBuf>,
) -> Result<zeroize::Zeroizing<String>> {
    if let Some(t) = &args.roles_token {
        return Ok(zeroize::Zeroizing::new(t.trim().to_string()));
    }
    if let Some(p) = args.roles_token_file.as_ref().or(file_token_path) {
        let t = std::fs::read_to_string(p).map_err(|e| {
            Failure::new(
                Exit::Usage,
                format!("reading --roles-token-file {}: {e}", p.display()),
            )
        })?;
        return Ok(zeroize::Zeroizing::new(t.trim().to_string()));
    }
    if let Some(t) = file_token {
        return Ok(zeroize::Zeroizing::new(t.trim().to_string()));
    }
    Err(Failure::new(Exit::Usage, "no roles token: pass --roles-token-file FILE, set MUSTER_ROLES_TOKEN, or put roles-token in the --config file"))
}

impl InstallArgs {
    /// Merges flags over the config file.
    pub fn settings(&self) -> Result<Settings> {
        let file: FileConfig = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Failure::new(
                        Exit::Usage,
                        format!("reading --config {}: {e}", p.display()),
                    )
                })?;
                parse_file_config(&text).map_err(|e| {
                    Failure::new(Exit::Usage, format!("--config {}: {e}", p.display()))
                })?
            }
            None => FileConfig::default(),
        };
        let token = read_token(
            &self.token,
            file.roles_token.as_deref(),
            file.roles_token_file.as_ref(),
        )?;
        let roles = match (&self.roles, &file.roles) {
            (Some(r), _) | (None, Some(RolesValue::One(r))) => r.clone(),
            (None, Some(RolesValue::Many(v))) => v.join(","),
            (None, None) => String::new(),
        };
        let roles = muster_protocol::role::parse_role_list(&roles)
            .map_err(|e| Failure::new(Exit::Usage, format!("--roles: {e}")))?;
        let timeout = match (self.timeout, &file.timeout) {
            (Some(t), _) => t,
            (None, Some(t)) => {
                parse_duration(t).map_err(|e| Failure::new(Exit::Usage, format!("timeout: {e}")))?
            }
            (None, None) => std::time::Duration::from_secs(15 * 60),
        };
        Ok(Settings {
            coordinator_host: self.coordinator_host.clone().or(file.coordinator_host),
            token,
            roles,
            zone: self
                .availability_zone
                .clone()
                .or(file.availability_zone)
                .unwrap_or_default(),
            root: self
                .root
                .clone()
                .or(file.root)
                .unwrap_or_else(|| PathBuf::from("/")),
            owner: self
                .owner
                .clone()
                .or(file.owner)
                .unwrap_or_else(|| "muster".into()),
            hostname: self.hostname.clone().or(file.hostname),
            advertise: self.advertise.clone().or(file.advertise),
            dry_run: self.dry_run,
            force: self.force || file.force.unwrap_or(false),
            timeout,
            output: self
                .output
                .or(file.output.map(|o| match o {
                    muster_protocol::enroll::Output::Text => Output::Text,
                    muster_protocol::enroll::Output::Json => Output::Json,
                }))
                .unwrap_or(Output::Text),
        })
    }
}

/// Moves a token given as `--roles-token` out of the process's argument list: returns the
/// arguments without it and the token, for a re-exec with the token in the environment.
/// Arguments as the OS gives them: one that is not UTF-8 (a path in another encoding) passes
/// through untouched.
pub fn scrub_token_args(
    args: &[std::ffi::OsString],
) -> Option<(Vec<std::ffi::OsString>, std::ffi::OsString)> {
    let mut out = Vec::with_capacity(args.len());
    let mut token = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--roles-token" {
            token = it.next().cloned();
        } else if let Some(t) = a.to_str().and_then(|a| a.strip_prefix("--roles-token=")) {
            token = Some(t.into());
        } else {
            out.push(a.clone());
        }
    }
    token.map(|t| (out, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// Debug output (a log line, a panic message) never shows the token, wherever it sits.
    #[test]
    fn debug_output_never_shows_the_token() {
        use clap::Parser;
        let cli = Cli::parse_from(["muster", "install", "--roles-token", "SECRET-TOKEN"]);
        let file: FileConfig =
            serde_norway::from_str("roles-token: SECRET-TOKEN\n").unwrap_or_default();
        let settings = Settings {
            coordinator_host: None,
            token: zeroize::Zeroizing::new("SECRET-TOKEN".into()),
            roles: vec![],
            zone: String::new(),
            root: "/".into(),
            owner: String::new(),
            hostname: None,
            advertise: None,
            dry_run: false,
            force: false,
            timeout: std::time::Duration::from_secs(1),
            output: Output::Text,
        };
        for shown in [
            format!("{cli:?}"),
            format!("{file:?}"),
            format!("{settings:?}"),
        ] {
            assert!(!shown.contains("SECRET-TOKEN"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
    }

    #[test]
    fn scrubs_the_token_from_argv() {
        let a = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let got = scrub_token_args(&a(&[
            "muster",
            "install",
            "--roles-token",
            "SECRET",
            "--roles",
            "proxy",
        ]));
        assert_eq!(
            got,
            Some((
                a(&["muster", "install", "--roles", "proxy"]),
                "SECRET".into()
            ))
        );
        let got = scrub_token_args(&a(&["muster", "install", "--roles-token=SECRET"]));
        assert_eq!(got, Some((a(&["muster", "install"]), "SECRET".into())));
        assert_eq!(scrub_token_args(&a(&["muster", "status"])), None);
        // A path that is not UTF-8 beside the token: the token still goes, the path stays.
        use std::os::unix::ffi::OsStringExt;
        let latin1 = std::ffi::OsString::from_vec(b"/tmp/caf\xe9".to_vec());
        let mut args = a(&["muster", "install", "--roles-token", "SECRET", "--root"]);
        args.push(latin1.clone());
        let mut want = a(&["muster", "install", "--root"]);
        want.push(latin1);
        assert_eq!(scrub_token_args(&args), Some((want, "SECRET".into())));
    }

    #[test]
    fn config_file_has_the_flags_keys() {
        let c = parse_file_config("version: 1\ncoordinator-host: c1:12443\nroles: [allocator, proxy]\navailability-zone: z1\ntimeout: 5m\n");
        let c = c.unwrap_or_default();
        assert_eq!(c.coordinator_host.as_deref(), Some("c1:12443"));
        assert!(matches!(c.roles, Some(RolesValue::Many(ref v)) if v.len() == 2));
        // snake_case, as musterd's config; the kebab-case of earlier versions still reads.
        let c = parse_file_config(
            "coordinator_host: c2\nroles_token_file: /t\navailability_zone: z2\n",
        );
        let c = c.unwrap_or_default();
        assert_eq!(c.coordinator_host.as_deref(), Some("c2"));
        assert_eq!(c.availability_zone.as_deref(), Some("z2"));
        let bad = parse_file_config("coordinator_hots: x\n");
        assert!(bad.is_err_and(|e| e.contains("coordinator_hots")));
        assert!(parse_file_config("version: 2\n").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("15m"),
            Ok(std::time::Duration::from_secs(900))
        );
        assert_eq!(parse_duration("45"), Ok(std::time::Duration::from_secs(45)));
        assert!(parse_duration("soon").is_err());
        assert!(
            parse_duration("18446744073709551615h").is_err(),
            "overflows"
        );
    }
}
