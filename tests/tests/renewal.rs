//! The enrolled host's life: renewal, leave, certificates that ran out, a wrong clock.

use crate::common::*;
use muster_tests::*;
use std::process::Command;

/// A leave that cannot remove every file (here a folder where the keystore goes) removes the
/// private keys first and the state last, so it fails clearly and runs again once fixed.
#[test]
fn a_leave_stopped_part_way_removes_the_keys_and_runs_again() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let h = Host::new("half-left")?;
    assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
    let p12 = h.path("etc/muster/tls/node.p12");
    std::fs::remove_file(&p12)?;
    std::fs::create_dir(&p12)?;
    let first = h.muster(&["leave"])?;
    assert_eq!(first.code, 7, "{first:?}");
    assert!(
        first.stderr.contains("node.p12") && first.stderr.contains("run `muster leave` again"),
        "{first:?}"
    );
    assert!(!h.path("etc/muster/tls/node.key").exists());
    assert!(!h.path("etc/muster/tls/http.key").exists());
    assert!(h.path("var/lib/muster/enrollment.json").exists());
    std::fs::remove_dir(&p12)?;
    let second = h.muster(&["leave", "--output", "json"])?;
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(second.json()["result"], "removed_locally", "{second:?}");
    assert!(!h.path("var/lib/muster/enrollment.json").exists());
    Ok(())
}

/// A renewal whose files cannot all be written (a full disk; here a folder where `node.crt`
/// goes) leaves the new key beside the old certificate: the agent keeps the host connected with
/// the renewed pair from `renewal.json`, and finishes writing once it can.
#[test]
fn a_renewal_that_cannot_be_written_keeps_the_host_connected() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let h = Host::new("disk-full")?;
    assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
    let killed = Run::from(
        Command::new(bin("muster"))
            .args(["renew", "--root"])
            .arg(h.root.path())
            .env("MUSTER_FAILPOINT", "renew-saved")
            .output()?,
    );
    assert_eq!(killed.code, 137, "{killed:?}");
    let crt = h.path("etc/muster/tls/node.crt");
    std::fs::remove_file(&crt)?;
    std::fs::create_dir(&crt)?;
    let hb = h.muster(&["agent", "--count", "1", "--timeout", "10s"])?;
    assert_eq!(hb.code, 0, "{hb:?}");
    assert!(
        hb.stderr
            .contains("heartbeating with the renewed certificate"),
        "{hb:?}"
    );
    assert!(h.path("var/lib/muster/renewal.json").exists());
    // Left like that for years, the renewed certificate runs out too, and the agent says so.
    let mut later = Command::new("faketime");
    later
        .args(["-f", "+3660d"])
        .arg(bin("muster"))
        .args(["agent", "--count", "1", "--timeout", "5s", "--root"])
        .arg(h.root.path())
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let r = Run::from(later.output()?);
    assert_eq!(r.code, 9, "{r:?}");
    assert!(
        r.stderr
            .contains("the renewed one, whose files could not be written"),
        "{r:?}"
    );
    std::fs::remove_dir(&crt)?;
    let hb = h.muster(&["agent", "--count", "1"])?;
    assert_eq!(hb.code, 0, "{hb:?}");
    assert!(hb.stderr.contains("finishing a renewal"), "{hb:?}");
    assert!(!h.path("var/lib/muster/renewal.json").exists());
    tool(
        Command::new("openssl")
            .current_dir(h.path("etc/muster/tls"))
            .args(["verify", "-CAfile", "transport-ca.pem", "node.crt"]),
    )?;
    Ok(())
}

/// A host whose certificate ran out (its agent was stopped for too long) is told so and what to
/// do, at once, not retried as if no coordinator answered; `leave` removes its files.
#[test]
fn a_host_whose_certificate_ran_out_is_told_so() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let h = Host::new("lapsed")?;
    assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
    let later = |args: &[&str]| -> anyhow::Result<Run> {
        let mut cmd = Command::new("faketime");
        cmd.args(["-f", "+3660d"])
            .arg(bin("muster"))
            .args(args)
            .args(["--timeout", "20s", "--root"])
            .arg(h.root.path())
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        Ok(Run::from(cmd.output()?))
    };
    for cmd in [&["agent", "--count", "1"][..], &["renew"][..]] {
        let r = later(cmd)?;
        assert_eq!(r.code, 9, "{cmd:?}: {r:?}");
        assert!(
            r.stderr.contains("certificate ran out") && r.stderr.contains("install --force"),
            "{cmd:?}: {r:?}"
        );
    }
    let r = later(&["leave", "--output", "json"])?;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["result"], "removed_locally", "{r:?}");
    Ok(())
}

#[test]
fn a_wrong_host_clock_is_named_with_its_size() -> R {
    // libfaketime sets this host's clock two hours back for the installer alone.
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let h = Host::new("late-clock")?;
    let mut cmd = Command::new("faketime");
    cmd.args(["-f", "-2h"]).arg(bin("muster"));
    cmd.args([
        "install",
        "--timeout",
        "10s",
        "--coordinator-host",
        &c.host(),
        "--root",
    ])
    .arg(h.root.path())
    .env("MUSTER_ROLES_TOKEN", &tok)
    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let r = Run::from(cmd.output()?);
    assert_eq!(r.code, 3, "{r:?}");
    let behind = r
        .stderr
        .split("this host's clock is ")
        .nth(1)
        .and_then(|t| t.split('s').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(behind.is_some_and(|s| (7100..=7300).contains(&s)), "{r:?}");
    assert!(r.stderr.contains("behind the coordinator's"), "{r:?}");
    assert!(!h.path("etc/muster").exists(), "nothing written");
    Ok(())
}
