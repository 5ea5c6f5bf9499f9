//! `hooks.d`: hooks run in order, as their owner allows, and cannot hold Muster.

use crate::common::*;
use muster_tests::*;
use std::process::Command;

fn hook(h: &Host, phase: &str, name: &str, body: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = h.path(&format!("etc/muster/hooks.d/{phase}"));
    std::fs::create_dir_all(&dir)?;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n"))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// `inner` run under `timeout 60`, with its environment: a hang shows as exit 124.
fn within_a_minute(inner: Command) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg("60")
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

#[test]
fn a_hook_another_user_owns_or_may_write_is_refused_and_not_run() -> R {
    use std::os::unix::fs::PermissionsExt;
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let nobody = 65534;
    type Spoil<'a> = &'a dyn Fn(&std::path::Path) -> std::io::Result<()>;
    let cases: [(&str, Spoil); 3] = [
        ("world-writable", &|p| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777))
        }),
        ("group-writable folder", &|p| match p.parent() {
            Some(d) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o775)),
            None => Ok(()),
        }),
        ("another owner", &|p| {
            std::os::unix::fs::chown(p, Some(nobody), Some(nobody))
        }),
    ];
    for (name, spoil) in cases {
        let h = Host::new("hook-owner")?;
        let ran = h.path("ran");
        hook(
            &h,
            "pre-enroll",
            "10-planted",
            &format!("touch {}", ran.display()),
        )?;
        spoil(&h.path("etc/muster/hooks.d/pre-enroll/10-planted"))?;
        let before = tree(h.root.path())?;
        let r = h.install(&c.host(), &tok, &[])?;
        assert_eq!(r.code, 8, "{name}: {r:?}");
        assert!(r.stderr.contains("refusing hook"), "{name}: {r:?}");
        assert!(!ran.exists(), "{name}: the hook ran");
        assert_eq!(tree(h.root.path())?, before, "{name}: the root changed");
    }
    Ok(())
}

#[test]
fn hooks_run_in_order_and_a_failing_pre_enroll_hook_stops_everything() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator","proxy"]}"#)?;
    let h = Host::new("hooked")?;
    let log = h.path("hooks.log");
    hook(
        &h,
        "pre-enroll",
        "10-refuse",
        "echo 'disk not ready' >&2; exit 1",
    )?;
    let r = h.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 8, "{r:?}");
    assert!(r.stderr.contains("disk not ready"), "{r:?}");
    assert!(
        !h.path("etc/muster/tls").exists() && !h.path("var/lib/muster").exists(),
        "nothing written"
    );
    std::fs::remove_file(h.path("etc/muster/hooks.d/pre-enroll/10-refuse"))?;
    let l = log.display();
    hook(
        &h,
        "post-enroll",
        "20-second",
        &format!("echo second >> {l}"),
    )?;
    hook(&h, "post-enroll", "10-first", &format!("echo \"first $MUSTER_NODE_ID $MUSTER_ROLES $MUSTER_TLS_DIR ${{MUSTER_ROLES_TOKEN:-no-token}}\" >> {l}"))?;
    let r = h.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.json()["node_id"].as_str().unwrap_or_default().to_string();
    let want = format!(
        "first {id} allocator,proxy {} no-token\nsecond\n",
        h.path("etc/muster/tls").display()
    );
    assert_eq!(
        std::fs::read_to_string(&log)?,
        want,
        "hooks in name order, with the MUSTER_* variables and never the token"
    );
    Ok(())
}

/// A hook that leaves something running (`daemon &`) does not keep `muster` waiting, and a hook
/// that never finishes is stopped, with what it started, after `MUSTER_HOOK_TIMEOUT`. (`timeout`
/// guards the test itself: a hang shows as exit 124.)
#[test]
fn a_hook_that_leaves_something_running_or_hangs_does_not_hold_muster() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let h = Host::new("daemonizing")?;
    let pidfile = h.path("bg.pid");
    hook(
        &h,
        "post-enroll",
        "10-daemon",
        &format!("sleep 600 & echo $! > {}; echo started", pidfile.display()),
    )?;
    let mut cmd = within_a_minute(h.install_cmd(&c.host(), &tok));
    let r = Run::from(cmd.output()?);
    let bg = std::fs::read_to_string(&pidfile).unwrap_or_default();
    if let Ok(pid) = bg.trim().parse::<i32>() {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    assert_eq!(r.code, 0, "{r:?}");

    let h = Host::new("hanging")?;
    let pidfile = h.path("child.pid");
    hook(
        &h,
        "post-enroll",
        "10-hang",
        &format!(
            "sleep 600 & echo $! > {}; echo waiting for ever; wait",
            pidfile.display()
        ),
    )?;
    let mut cmd = within_a_minute(h.install_cmd(&c.host(), &tok));
    cmd.env("MUSTER_HOOK_TIMEOUT", "1");
    let r = Run::from(cmd.output()?);
    assert_eq!(r.code, 8, "{r:?}");
    assert!(
        r.stderr.contains("did not finish in 1 s") && r.stderr.contains("waiting for ever"),
        "{r:?}"
    );
    // What the hook started went with it (gone, or a zombie left for its new parent to reap).
    // SIGKILL reaches the group at once but a busy machine may take a moment to schedule the
    // child so it can die: it gets ten seconds, against the 600 it would sleep.
    let child = std::fs::read_to_string(&pidfile)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let stat = loop {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", child.trim())).unwrap_or_default();
        let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
        if matches!(state, None | Some('Z') | Some('X')) || std::time::Instant::now() > deadline {
            break stat;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
    assert!(
        matches!(state, None | Some('Z') | Some('X')),
        "the hook's child {child} still runs: {stat}"
    );
    Ok(())
}
