//! `muster admin`: the platform's admin API from any machine that reaches a coordinator, as
//! ecctl and tctl are for theirs, and on a coordinator itself with no flags. `muster` is one
//! static binary every coordinator serves (`/download/muster-x86_64`), so a workstation gets
//! it the way a host does.
//!
//! Where to go and as whom, the first found winning, each setting on its own: the flags; the
//! environment (`MUSTER_COORDINATOR`, `MUSTER_CA_FILE`, `MUSTER_API_KEY_FILE` or the key itself
//! in `MUSTER_API_KEY`); a profile of the profile file (`~/.config/muster/admin.yaml`, as
//! ecctl's); on a coordinator, its own address, CA and API key (`/var/lib/musterd`). The API
//! key is read from a file or the environment, never from an argument; a key file anyone but
//! its owner may read is refused.
//!
//! `client` is the connection, `commands` the commands.

pub mod client;
pub mod commands;

use crate::output::Output;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Where the admin API is and how to sign in, for every `muster admin` command.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// The coordinator: host:port or https://host:port [env: MUSTER_COORDINATOR].
    #[arg(long, global = true)]
    pub coordinator: Option<String>,
    /// The platform's CA (PEM): a coordinator's ca.pem [env: MUSTER_CA_FILE].
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
    /// A file holding the API key, readable by its owner only [env: MUSTER_API_KEY_FILE; or the
    /// key itself in MUSTER_API_KEY].
    #[arg(long, global = true)]
    pub api_key_file: Option<PathBuf>,
    /// The profile to use from the profile file [env: MUSTER_PROFILE].
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// The profile file [env: MUSTER_ADMIN_CONFIG; default: ~/.config/muster/admin.yaml].
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Output: text for people, json for scripts.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub output: Output,
}

#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Roles tokens: list, show, create, revoke.
    Tokens {
        #[command(subcommand)]
        cmd: TokensCmd,
    },
    /// Registered hosts: list, show, remove, set roles.
    Hosts {
        #[command(subcommand)]
        cmd: HostsCmd,
    },
    /// Named API keys: list, create, revoke.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Change the admin user's password (on every coordinator at once).
    Password(PasswordArgs),
    /// The audit log, oldest first; with --follow, new events as they come.
    Audit(AuditArgs),
    /// The platform at a glance: the coordinator, the hosts, certificates that expire soon.
    Status {
        /// List hosts whose certificates expire within this (90m, 12h, 14d).
        #[arg(long, default_value = "14d")]
        within: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// Live tokens: id, kind, roles, created, expires, uses, description.
    List,
    /// One token, by id.
    Show {
        /// The token's id.
        id: String,
    },
    /// Make a token; its secret is printed once, on standard output.
    Create {
        /// Roles it grants, comma-separated (allocator, coordinator, proxy, director).
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// A persistent token (no expiry) rather than an ephemeral one.
        #[arg(long)]
        persistent: bool,
        /// How long an ephemeral token lives (90m, 12h, 2d; the coordinator's default: 1h).
        #[arg(long, conflicts_with = "persistent")]
        validity: Option<String>,
        /// How many hosts may enroll with it.
        #[arg(long)]
        max_uses: Option<u32>,
        /// Networks joins must come from, comma-separated CIDRs.
        #[arg(long, value_delimiter = ',')]
        allowed_sources: Vec<String>,
        /// What the token is for, kept with it and listed with it (at most 200 characters).
        #[arg(long)]
        description: Option<String>,
    },
    /// Revoke a token, by id: every coordinator refuses it from now on.
    Revoke {
        /// The token's id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Every API key, revoked ones too: name, created, by whom, revoked, description.
    List,
    /// Make a named API key; it is printed once on standard output, or written to --key-file.
    Create {
        /// Its name (a-z, 0-9, '.', '_', '-'), which audit events show as api-key:NAME.
        name: String,
        /// What it is for (at most 200 characters).
        #[arg(long)]
        description: Option<String>,
        /// Write the key to this new file (mode 0600) instead of printing it.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Revoke a key by name: every coordinator refuses it from now on. `bootstrap` is the key
    /// `musterd init` made.
    Revoke {
        /// The key's name.
        name: String,
    },
}

/// `muster admin password`: passwords come from files or standard input, never arguments.
#[derive(Args, Debug)]
pub struct PasswordArgs {
    /// A file holding the current admin password (owner-only), or - for the first line of
    /// standard input.
    #[arg(long)]
    pub current_password_file: PathBuf,
    /// A file holding the new password (12 to 256 characters; owner-only). Without it, Muster
    /// makes a random one and prints it once.
    #[arg(long)]
    pub new_password_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum HostsCmd {
    /// Every host: id, name, roles, zone, connected, last heartbeat, agent version.
    List,
    /// One host, by node id or host name.
    Show {
        /// The host's node id or name.
        host: String,
    },
    /// Remove a host from the registry and revoke its certificates.
    Remove {
        /// The host's node id or name.
        host: String,
    },
    /// Set a host's roles: it holds exactly these afterwards (granting some, taking away
    /// others).
    Roles {
        /// The host's node id or name.
        host: String,
        /// The roles, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        set: Vec<String>,
        /// Record them as asked for (pending) rather than granted.
        #[arg(long)]
        pending: bool,
    },
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only events of this kind (created, used, committed, refused, revoked, …).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only events about this token id.
    #[arg(long)]
    pub token: Option<String>,
    /// Only events about this host (node id or name).
    #[arg(long)]
    pub host: Option<String>,
    /// Only events this recent (90m, 12h, 2d).
    #[arg(long)]
    pub since: Option<String>,
    /// Keep going: print new events as they come, until stopped.
    #[arg(long)]
    pub follow: bool,
}

/// `--validity 90m`, `--within 14d`, `--since 2h`: seconds.
pub fn seconds(what: &str, text: &str) -> crate::exit::Result<u64> {
    humantime::parse_duration(text.trim())
        .map(|d| d.as_secs())
        .map_err(|e| {
            crate::exit::Failure::new(
                crate::exit::Exit::Usage,
                format!("{what} {text:?}: {e} (write it as 90m, 12h or 2d)"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(seconds("--validity", "90m").ok(), Some(5400));
        assert_eq!(seconds("--validity", "2d").ok(), Some(172_800));
        assert_eq!(seconds("--validity", "1h 30m").ok(), Some(5400));
        let bad = seconds("--validity", "soon").err().map(|f| f.message);
        assert!(
            bad.as_deref()
                .is_some_and(|m| m.contains("--validity \"soon\"")),
            "{bad:?}"
        );
    }
}
