//! `muster leave --purge`: after leaving, removes what the one-liner installed on this host,
//! as its record says (`usr/local/lib/muster/one-liner`, written by `install.sh`): the agent's
//! unit, the `muster` user it made, the binary. What a package installed is the package
//! manager's to remove; what the record does not name stays.
//!
//! The record is only believed if it is a regular file that root (or this user) owns and no one
//! else may write, and only for the three fixed things it may name: no path is taken from it.

use crate::exit::{Exit, Failure, Result};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The one-liner's record of what it made, under the root.
pub const RECORD: &str = "usr/local/lib/muster/one-liner";
const BINARY: &str = "usr/local/bin/muster";
const UNIT: &str = "etc/systemd/system/muster-agent.service";

/// One thing the one-liner made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    Binary,
    User,
    Unit,
}

/// The record's lines, each one of `binary`, `user`, `unit`; anything else is refused whole.
fn parse(text: &str) -> std::result::Result<Vec<Made>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| match l {
            "binary" => Ok(Made::Binary),
            "user" => Ok(Made::User),
            "unit" => Ok(Made::Unit),
            other => Err(format!("{other:?} is not something the one-liner makes")),
        })
        .collect()
}

fn live_systemd(root: &Path) -> bool {
    root == Path::new("/") && Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) {
    let _ = std::process::Command::new("/bin/systemctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// `userdel muster` or `groupdel muster` under `root`: whether it removed one (false when
/// there was none: removed already, by hand or by an earlier purge).
fn account_gone(root: &Path, tool: &str) -> Result<bool> {
    let mut cmd = std::process::Command::new(tool);
    if root != Path::new("/") {
        cmd.arg("--root").arg(root);
    }
    let out = cmd
        .arg("muster")
        .output()
        .map_err(|e| Failure::new(Exit::LocalWrite, format!("running {tool}: {e}")))?;
    // 6: no such user or group.
    match out.status.code() {
        Some(0) => Ok(true),
        Some(6) => Ok(false),
        _ => Err(Failure::new(
            Exit::LocalWrite,
            format!(
                "{tool} muster failed: {}; run `muster leave --purge` again once fixed",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )),
    }
}

/// Removes what the one-liner's record names under `root`; what was removed, in words.
pub fn purge(root: &Path) -> Result<Vec<String>> {
    let record = root.join(RECORD);
    let meta = match std::fs::symlink_metadata(&record) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => {
            return Err(Failure::new(
                Exit::LocalWrite,
                format!("reading {}: {e}", record.display()),
            ))
        }
    };
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_file() || (meta.uid() != 0 && meta.uid() != me) || meta.mode() & 0o022 != 0 {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "{} is not a file only root writes (owner {}, mode {:o}): refusing to act on it; nothing was purged",
                record.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    let text = std::fs::read_to_string(&record).map_err(|e| {
        Failure::new(
            Exit::LocalWrite,
            format!("reading {}: {e}", record.display()),
        )
    })?;
    let made = parse(&text).map_err(|why| {
        Failure::new(
            Exit::Usage,
            format!("{}: {why}; nothing was purged", record.display()),
        )
    })?;
    let mut purged = Vec::new();
    let removed = |p: &Path| -> Result<bool> { Ok(muster_protocol::fs::remove(p)?) };
    if made.contains(&Made::Unit) {
        if live_systemd(root) {
            systemctl(&["disable", "--now", "muster-agent.service"]);
        }
        if removed(&root.join(UNIT))? {
            purged.push(format!("/{UNIT}"));
        }
        if live_systemd(root) {
            systemctl(&["daemon-reload"]);
        }
    }
    if made.contains(&Made::User) {
        // The user, then its group (`useradd --user-group` made both; userdel removes the
        // group itself only where login.defs says so).
        for (tool, what) in [("userdel", "user muster"), ("groupdel", "group muster")] {
            if account_gone(root, tool)? {
                purged.push(what.into());
            }
        }
    }
    if made.contains(&Made::Binary) && removed(&root.join(BINARY))? {
        purged.push(format!("/{BINARY}"));
    }
    // The record last: a purge stopped part-way runs again.
    removed(&record)?;
    let _ = std::fs::remove_dir(root.join("usr/local/lib/muster"));
    Ok(purged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_record_names_three_things_and_nothing_else() {
        assert_eq!(
            parse("binary\nuser\n\nunit\n"),
            Ok(vec![Made::Binary, Made::User, Made::Unit])
        );
        assert!(parse("binary\n/etc/passwd\n").is_err());
    }

    #[test]
    fn a_record_others_may_write_is_refused_and_nothing_goes() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let bin = root.path().join(BINARY);
        std::fs::create_dir_all(bin.parent().unwrap_or(root.path()))?;
        std::fs::write(&bin, "binary")?;
        let record = root.path().join(RECORD);
        std::fs::create_dir_all(record.parent().unwrap_or(root.path()))?;
        std::fs::write(&record, "binary\n")?;
        std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o666))?;
        let refused = purge(root.path()).err().map(|f| f.message);
        assert!(refused.is_some_and(|m| m.contains("nothing was purged")));
        assert!(bin.exists());
        std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o644))?;
        assert_eq!(purge(root.path()).ok(), Some(vec![format!("/{BINARY}")]));
        assert!(!bin.exists() && !record.exists());
        // Nothing left to purge: nothing to say.
        assert_eq!(purge(root.path()).ok(), Some(vec![]));
        Ok(())
    }
}
