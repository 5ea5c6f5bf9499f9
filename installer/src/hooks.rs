//! Hooks: executables in `/etc/muster/hooks.d/{pre-enroll,post-enroll,post-renew}/`, run in
//! name order with `MUSTER_NODE_ID`, `MUSTER_ROLES`, `MUSTER_TLS_DIR`.

use crate::exit::{Exit, Failure, Result};
use std::io::Read;
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
/// `muster` waits for the hook, not for its output to end, so something it leaves running in
/// the background (`daemon &`) does not keep `muster` waiting (and writes into a closed pipe
/// once the hook is done). A hook still running after the timeout is killed with its process
/// group (what it started, unless that left the group) and counts as failed.
pub fn run(dir: &Path, env: &[(&str, String)]) -> Result<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    trusted(dir)?;
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
        trusted(&f)?;
        run_one(&f, env, timeout())?;
        ran += 1;
    }
    Ok(ran)
}

/// A hook, or its folder, that someone other than root (or the user running `muster`) owns or
/// may write is refused, as cron and sshd refuse such files: whoever can change it would run
/// code as root at the next enrollment.
fn trusted(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).map_err(|e| {
        Failure::new(
            Exit::HookFailed,
            format!("inspecting {}: {e}", path.display()),
        )
    })?;
    let me = nix::unistd::geteuid().as_raw();
    let why = if m.uid() != 0 && m.uid() != me {
        Some(format!("owned by uid {}, not root", m.uid()))
    } else if m.mode() & 0o022 != 0 {
        Some(format!(
            "writable by its group or everyone (mode {:o})",
            m.mode() & 0o7777
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(Failure::new(
            Exit::HookFailed,
            format!(
                "refusing hook {}: {why}; make it root's and writable by root alone (chown root; chmod go-w)",
                path.display()
            ),
        )),
        None => Ok(()),
    }
}

fn run_one(f: &Path, env: &[(&str, String)], limit: Duration) -> Result<()> {
    let fail = |what: String| Failure::new(Exit::HookFailed, what);
    let setup = |e: std::io::Error| {
        fail(format!(
            "a pipe for the output of hook {}: {e}",
            f.display()
        ))
    };
    let (mut reader, writer) = std::io::pipe().map_err(setup)?;
    {
        use std::os::fd::AsRawFd;
        nix::fcntl::fcntl(
            reader.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| setup(e.into()))?;
    }
    let mut cmd = Command::new(f);
    cmd.env_remove("MUSTER_ROLES_TOKEN")
        .stdin(Stdio::null())
        .stdout(writer.try_clone().map_err(setup)?)
        .stderr(writer)
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let spawned = cmd.spawn();
    // The command holds this end's copies: gone with it, so only the hook (and what it
    // started) can keep the pipe open.
    drop(cmd);
    let mut child = spawned.map_err(|e| fail(format!("running hook {}: {e}", f.display())))?;
    let mut output = Vec::new();
    let started = Instant::now();
    let status = loop {
        drain(&mut reader, &mut output);
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= limit => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(fail(format!("waiting for hook {}: {e}", f.display()))),
        }
    };
    drain(&mut reader, &mut output);
    // Closed now: something the hook left running gets EPIPE if it writes, not a reader that
    // never comes.
    drop(reader);
    let shown = || {
        String::from_utf8_lossy(&output)
            .trim()
            .chars()
            .take(2000)
            .collect::<String>()
    };
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(fail(format!(
            "hook {} failed ({s}): {}",
            f.display(),
            shown()
        ))),
        None => {
            // The hook and whatever it started in its process group (it leads it).
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
                shown()
            )))
        }
    }
}

/// Reads what is waiting in the pipe, keeping the first 64 KiB.
fn drain(reader: &mut std::io::PipeReader, kept: &mut Vec<u8>) {
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = (64 * 1024usize).saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}
