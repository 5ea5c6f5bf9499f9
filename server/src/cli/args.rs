//! `musterd`'s commands, flags and their help, as clap reads them.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "musterd",
    version,
    about = "Muster enrollment server: roles tokens, node certificates, host registry"
)]
#[command(help_expected = true)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
    /// How log lines on standard error look: text for people, or json (one object a line) for
    /// a log pipeline. What is logged: MUSTERD_LOG (info by default; debug, warn, or per
    /// target, as `info,musterd::access=off`).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "MUSTERD_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: crate::logging::LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// Data folder (the embedded store and bootstrap secrets live here).
    #[arg(long, env = "MUSTERD_DATA_DIR", default_value = "/var/lib/musterd")]
    pub data_dir: PathBuf,
    /// Server config file (YAML); every key has a default.
    #[arg(long, env = "MUSTERD_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Write shell completions and man pages into a folder (for the packages).
    #[command(hide = true)]
    Generate {
        /// The folder to write them into.
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Work with the server config file.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Create the platform once: CAs, signing key, admin password, emergency and initial tokens.
    Init {
        #[command(flatten)]
        data: DataArgs,
        /// Coordinator addresses (host:port) to put into tokens; overrides `advertise` in the config.
        #[arg(long, value_delimiter = ',')]
        advertise: Vec<String>,
        /// How to print the bootstrap secrets.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Serve the API and the node protocol over HTTPS.
    Serve {
        #[command(flatten)]
        data: DataArgs,
        /// Address to listen on (default from the config: 0.0.0.0:12443).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Manage roles tokens on this coordinator's store.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Give this data folder the key that unseals the platform's secrets, unwrapped with the
    /// emergency token (from MUSTER_EMERGENCY_TOKEN or --emergency-token-file, never argv).
    Unseal {
        #[command(flatten)]
        data: DataArgs,
        /// File holding the emergency token.
        #[arg(long)]
        emergency_token_file: Option<PathBuf>,
    },
    /// Issue a director's serving certificate (from the HTTP CA, marked as a coordinator's, so
    /// installers' pins hold) and its key, into a folder to copy to the director's data folder.
    DirectorCert {
        #[command(flatten)]
        data: DataArgs,
        /// Addresses (host:port or host) the director is reached at; comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        address: Vec<String>,
        /// Folder to write director-cert.pem, director-key.pem (mode 0600) and ca.pem into.
        #[arg(long)]
        output: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 1825)]
        days: u32,
    },
    /// Take a consistent snapshot of the embedded store while serving; secrets stay sealed.
    Backup {
        #[command(flatten)]
        data: DataArgs,
        /// Where to write it (`-` for stdout).
        #[arg(long)]
        output: PathBuf,
    },
    /// Rebuild a platform from a backup into a new data folder, unsealing it with the
    /// emergency token (from MUSTER_EMERGENCY_TOKEN or --emergency-token-file, never argv).
    Restore {
        /// The new data folder.
        #[arg(long, env = "MUSTERD_DATA_DIR")]
        data_dir: PathBuf,
        /// The backup file (`-` for stdin).
        #[arg(long)]
        input: PathBuf,
        /// File holding the emergency token.
        #[arg(long)]
        emergency_token_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a roles token and print it with the ready-to-paste install line.
    Create {
        #[command(flatten)]
        data: DataArgs,
        /// Roles the token grants, comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Make a persistent token (default: ephemeral).
        #[arg(long)]
        persistent: bool,
        /// Lifetime of an ephemeral token in seconds (default 3600).
        #[arg(long)]
        validity: Option<u64>,
        /// How many hosts may enroll with it.
        #[arg(long)]
        max_uses: Option<u32>,
        /// Source networks (CIDR) joins must come from; repeatable.
        #[arg(long)]
        allowed_source: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// List tokens (ids and roles, never the tokens).
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Revoke a token by id.
    Revoke {
        #[command(flatten)]
        data: DataArgs,
        /// The token id.
        token_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Check a config file without starting anything: every key known, every value in range,
    /// `listen` an address and port, each `advertise` entry a host and port. Exits 1 naming
    /// what is wrong.
    Check {
        /// The config file (default: /etc/muster/musterd.yaml, or no file: the defaults).
        #[arg(long, env = "MUSTERD_CONFIG")]
        config: Option<PathBuf>,
        /// `json` for a machine: the config as it would be used.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}
