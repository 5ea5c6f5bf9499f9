//! The installer's config file, `/etc/muster/enroll.yaml` (`muster install --config`): the
//! flags' names as keys. Here, apart from the installer, so the fuzz targets reach its parser
//! without the installer's dependencies.

use serde::Deserialize;
use std::path::PathBuf;

/// `output:` in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    Text,
    Json,
}

/// The config file: the flags' names as keys, in snake_case as musterd's config has them
/// (`coordinator_host`); the kebab-case spelling of earlier versions (`coordinator-host`) is
/// still read. Flags override it.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub version: Option<u32>,
    #[serde(alias = "coordinator-host")]
    pub coordinator_host: Option<String>,
    #[serde(alias = "roles-token")]
    pub roles_token: Option<String>,
    #[serde(alias = "roles-token-file")]
    pub roles_token_file: Option<PathBuf>,
    pub roles: Option<RolesValue>,
    #[serde(alias = "availability-zone")]
    pub availability_zone: Option<String>,
    pub root: Option<PathBuf>,
    pub owner: Option<String>,
    pub hostname: Option<String>,
    pub advertise: Option<String>,
    pub timeout: Option<String>,
    pub output: Option<Output>,
    pub force: Option<bool>,
}

impl std::fmt::Debug for FileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileConfig")
            .field("version", &self.version)
            .field("coordinator_host", &self.coordinator_host)
            .field(
                "roles_token",
                &self.roles_token.as_ref().map(|_| "<redacted>"),
            )
            .field("roles_token_file", &self.roles_token_file)
            .field("roles", &self.roles)
            .field("availability_zone", &self.availability_zone)
            .field("root", &self.root)
            .field("owner", &self.owner)
            .field("hostname", &self.hostname)
            .field("advertise", &self.advertise)
            .field("timeout", &self.timeout)
            .field("output", &self.output)
            .field("force", &self.force)
            .finish()
    }
}

/// `roles:` as `allocator,proxy` or as a YAML list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RolesValue {
    One(String),
    Many(Vec<String>),
}

/// Parses the YAML config file (`/etc/muster/enroll.yaml`).
pub fn parse_file_config(text: &str) -> std::result::Result<FileConfig, String> {
    let c: FileConfig = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    if c.version.is_some_and(|v| v != 1) {
        return Err(format!(
            "version {} is not supported (this muster reads version 1)",
            c.version.unwrap_or(0)
        ));
    }
    Ok(c)
}
