//! Hooks: executables in `/etc/muster/hooks.d/{pre-enroll,post-enroll,post-renew}/`, run in
//! name order with `MUSTER_NODE_ID`, `MUSTER_ROLES`, `MUSTER_TLS_DIR`.

use crate::exit::{Exit, Failure, Result};
use std::io::{Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one hook may run, unless `MUSTER_HOOK_TIMEOUT` (seconds) says otherwise.
const TIMEOUT: Duration = Duration::from_secs(300);

fn timeout() -> Duration {
    std::env::var("MUSTER_HOOK_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(TIMEOUT)
}

/// Runs every executable regular file in `dir` in name order; stops at the first failure.
/// A missing folder runs nothing. Symlinks and non-executables are skipped with a notice.
///
/// A hook's output goes to a file, not a pipe, so something it leaves running in the
/// background (`daemon &`) does not keep `muster` waiting; a hook still running after the
/// timeout is killed with everything it started (its own process group) and counts as failed.
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
        run_one(&f, env, timeout())?;
        ran += 1;
    }
    Ok(ran)
}

fn run_one(f: &Path, env: &[(&str, String)], limit: Duration) -> Result<()> {
    let fail = |what: String| Failure::new(Exit::HookFailed, what);
    let mut out = tempfile::tempfile().map_err(|e| {
        fail(format!(
            "a file for the output of hook {}: {e}",
            f.display()
        ))
    })?;
    let err = out.try_clone().map_err(|e| {
        fail(format!(
            "a file for the output of hook {}: {e}",
            f.display()
        ))
    })?;
    let mut cmd = Command::new(f);
    cmd.env_remove("MUSTER_ROLES_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            err.try_clone().map_err(|e| fail(e.to_string()))?,
        ))
        .stderr(Stdio::from(err))
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("running hook {}: {e}", f.display())))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= limit => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(fail(format!("waiting for hook {}: {e}", f.display()))),
        }
    };
    let output = |out: &mut std::fs::File| {
        let mut text = String::new();
        let _ = out.rewind();
        let _ = out.take(64 * 1024).read_to_string(&mut text);
        text.trim().chars().take(2000).collect::<String>()
    };
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(fail(format!(
            "hook {} failed ({s}): {}",
            f.display(),
            output(&mut out)
        ))),
        None => {
            // The hook and whatever it started: its process group (it leads it).
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait();
            Err(fail(format!(
                "hook {} did not finish in {} s and was stopped (MUSTER_HOOK_TIMEOUT sets the limit): {}",
                f.display(),
                limit.as_secs(),
                output(&mut out)
            )))
        }
    }
}
