//! Hooks: executables in `/etc/muster/hooks.d/{pre-enroll,post-enroll,post-renew}/`, run in
//! name order with `MUSTER_NODE_ID`, `MUSTER_ROLES`, `MUSTER_TLS_DIR`.

use crate::exit::{Exit, Failure, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Runs every executable regular file in `dir` in name order; stops at the first failure.
/// A missing folder runs nothing. Symlinks and non-executables are skipped with a notice.
pub fn run(dir: &Path, env: &[(&str, String)]) -> Result<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    let mut ran = 0;
    for f in files {
        let Ok(m) = std::fs::symlink_metadata(&f) else {
            continue;
        };
        if !m.is_file() || m.permissions().mode() & 0o111 == 0 {
            eprintln!(
                "  skipping hook {} (not an executable regular file)",
                f.display()
            );
            continue;
        }
        let mut cmd = Command::new(&f);
        cmd.env_remove("MUSTER_ROLES_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().map_err(|e| {
            Failure::new(
                Exit::HookFailed,
                format!("running hook {}: {e}", f.display()),
            )
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(Failure::new(
                Exit::HookFailed,
                format!(
                    "hook {} failed ({}): {}",
                    f.display(),
                    out.status,
                    stderr.trim().chars().take(2000).collect::<String>()
                ),
            ));
        }
        ran += 1;
    }
    Ok(ran)
}
