//! Starting the packages' systemd units once their files are there, on a live systemd host
//! (root `/`) only.
//!
//! Depends on `progress` only.

use crate::progress::Progress;
use std::path::{Path, PathBuf};

/// On a live systemd host (root `/`), starts the package's `musterd.service` now that its
/// files are there; elsewhere whoever manages the root starts it.
pub fn start_musterd(root: &Path, p: &mut Progress) {
    match start_unit(root, "musterd.service") {
        None => {}
        Some(true) => p.note("started musterd.service"),
        Some(false) => p.note("could not start musterd.service; start it by hand"),
    }
}

/// On a live systemd host (root `/`) with the agent's unit installed (the packages'), starts
/// `muster-agent.service` now that the host is enrolled: its condition (`enrollment.json`)
/// held false when boot or the package started it, and the host would otherwise wait for the
/// next boot for heartbeats and renewals. Without `--no-block` this would wait on
/// `muster-enroll.service` (the agent is ordered after it), which may be what runs this.
pub fn start_agent(root: &Path, p: &mut Progress) {
    if unit_file(root, "muster-agent.service").is_none() {
        return;
    }
    match start_unit(root, "muster-agent.service") {
        None => {}
        Some(true) => p.note("started muster-agent.service"),
        Some(false) => {
            p.note("could not start muster-agent.service; run: systemctl start muster-agent")
        }
    }
}

/// `systemctl start --no-block UNIT` on a live systemd host (root `/`); `None` elsewhere.
fn start_unit(root: &Path, unit: &str) -> Option<bool> {
    if root != Path::new("/") || !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    // Absolute, and without the token this process may hold in its environment.
    let ok = std::process::Command::new("/bin/systemctl")
        .args(["start", "--no-block", unit])
        .env_remove("MUSTER_ROLES_TOKEN")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    Some(ok)
}

/// Where `unit` is installed under `root`, if anywhere systemd looks for system units.
fn unit_file(root: &Path, unit: &str) -> Option<PathBuf> {
    [
        "etc/systemd/system",
        "lib/systemd/system",
        "usr/lib/systemd/system",
    ]
    .iter()
    .map(|d| root.join(d).join(unit))
    .find(|f| f.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_found_where_systemd_looks_and_started_only_on_a_live_root() -> std::io::Result<()>
    {
        let root = tempfile::tempdir()?;
        assert_eq!(unit_file(root.path(), "muster-agent.service"), None);
        for dir in [
            "usr/lib/systemd/system",
            "lib/systemd/system",
            "etc/systemd/system",
        ] {
            std::fs::create_dir_all(root.path().join(dir))?;
            std::fs::write(root.path().join(dir).join("muster-agent.service"), "")?;
            // The administrator's copy in /etc comes first, as systemd reads it.
            assert_eq!(
                unit_file(root.path(), "muster-agent.service"),
                Some(root.path().join(dir).join("muster-agent.service"))
            );
        }
        // A folder of that name is not a unit.
        std::fs::create_dir_all(root.path().join("etc/systemd/system/other.service"))?;
        assert_eq!(unit_file(root.path(), "other.service"), None);
        // A scratch root is never started in: systemd does not manage it.
        assert_eq!(start_unit(root.path(), "muster-agent.service"), None);
        Ok(())
    }
}
