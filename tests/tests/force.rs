//! `muster install --force`: re-enrolling a working host keeps it working whatever happens.

use crate::common::*;
use muster_tests::*;
use std::process::Command;

#[test]
fn a_refused_forced_reenrollment_keeps_the_working_one() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let h = Host::new("steady")?;
    assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
    let key = std::fs::read(h.path("etc/muster/tls/node.key"))?;
    let state = h.state();
    // A token deleted since: the join is refused after the new keys were made.
    let (gone, gone_id) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let (code, _) = c.api("DELETE", &format!("{TOKENS}/{gone_id}"), None)?;
    assert_eq!(code, 200);
    let r = h.install(&c.host(), &gone, &["--force"])?;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("previous enrollment is kept"), "{r:?}");
    assert_eq!(std::fs::read(h.path("etc/muster/tls/node.key"))?, key);
    assert_eq!(h.state(), state);
    let hb = h.muster(&["agent", "--count", "1"])?;
    assert_eq!(hb.code, 0, "still enrolled and working: {hb:?}");
    Ok(())
}

/// `--force` killed before its join is answered leaves the working enrollment whole (its keys,
/// its state, its heartbeats); killed after, a rerun finishes the new one with the keys that
/// join was answered for (the same node id).
#[test]
fn a_forced_reenrollment_killed_at_any_step_keeps_or_finishes() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    for point in ["after-keys", "write-before-rename"] {
        let h = Host::new(&format!("forced-{point}"))?;
        assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
        let key = std::fs::read(h.path("etc/muster/tls/node.key"))?;
        let state = h.state();
        let killed = Run::from(
            h.install_cmd(&c.host(), &tok)
                .arg("--force")
                .env("MUSTER_FAILPOINT", point)
                .output()?,
        );
        assert_eq!(killed.code, 137, "{point}: {killed:?}");
        assert_eq!(
            std::fs::read(h.path("etc/muster/tls/node.key"))?,
            key,
            "{point}"
        );
        assert_eq!(h.state(), state, "{point}");
        let hb = h.muster(&["agent", "--count", "1"])?;
        assert_eq!(hb.code, 0, "{point}: still enrolled and working: {hb:?}");
        let again = h.install(&c.host(), &tok, &[])?;
        assert_eq!(again.code, 0, "{point}: {again:?}");
        assert_eq!(
            h.state()["node_id"],
            state["node_id"],
            "{point}: nothing to do"
        );
    }
    for point in ["after-join-state", "after-join"] {
        let h = Host::new(&format!("forced-{point}"))?;
        assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
        let old = h.state();
        let killed = Run::from(
            h.install_cmd(&c.host(), &tok)
                .arg("--force")
                .env("MUSTER_FAILPOINT", point)
                .output()?,
        );
        assert_eq!(killed.code, 137, "{point}: {killed:?}");
        let joined = h.state();
        assert_ne!(joined["node_id"], old["node_id"], "{point}");
        let r = h.install(&c.host(), &tok, &[])?;
        assert_eq!(r.code, 0, "{point}: {r:?}");
        assert_eq!(
            h.state()["node_id"],
            joined["node_id"],
            "{point}: the same join"
        );
        tool(
            Command::new("openssl")
                .current_dir(h.path("etc/muster/tls"))
                .args(["verify", "-CAfile", "transport-ca.pem", "node.crt"]),
        )?;
        let hb = h.muster(&["agent", "--count", "1"])?;
        assert_eq!(hb.code, 0, "{point}: the new enrollment works: {hb:?}");
        let staged: Vec<_> = walk(h.root.path())
            .into_iter()
            .filter(|p| {
                let p = p.to_string_lossy();
                p.contains(".next-") || p.contains(".prev-")
            })
            .collect();
        assert!(
            staged.is_empty(),
            "{point}: staged keys or copies left: {staged:?}"
        );
    }
    Ok(())
}

/// A `--force` whose new enrollment is refused for good after its join was answered (here its
/// token revoked while it was stopped before the commit) puts the previous enrollment back:
/// the old record was never replaced, and its files work again.
#[test]
fn a_forced_reenrollment_refused_after_its_join_puts_the_old_one_back() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let h = Host::new("put-back")?;
    assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
    let key = std::fs::read(h.path("etc/muster/tls/node.key"))?;
    let crt = std::fs::read(h.path("etc/muster/tls/node.crt"))?;
    let state = h.state();
    let (next, next_id) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let killed = Run::from(
        h.install_cmd(&c.host(), &next)
            .arg("--force")
            .env("MUSTER_FAILPOINT", "after-files")
            .output()?,
    );
    assert_eq!(killed.code, 137, "{killed:?}");
    assert_ne!(
        h.state()["node_id"],
        state["node_id"],
        "the new join is on disk"
    );
    assert_eq!(
        c.api("DELETE", &format!("{TOKENS}/{next_id}"), None)?.0,
        200
    );
    let r = h.install(&c.host(), &next, &[])?;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr.contains("previous enrollment is put back"),
        "{r:?}"
    );
    assert_eq!(std::fs::read(h.path("etc/muster/tls/node.key"))?, key);
    assert_eq!(std::fs::read(h.path("etc/muster/tls/node.crt"))?, crt);
    assert_eq!(h.state(), state);
    let hb = h.muster(&["agent", "--count", "1"])?;
    assert_eq!(hb.code, 0, "the old enrollment works again: {hb:?}");
    let left: Vec<_> = walk(h.root.path())
        .into_iter()
        .filter(|p| {
            let p = p.to_string_lossy();
            p.contains(".prev-") || p.contains(".next-")
        })
        .collect();
    assert!(left.is_empty(), "copies left: {left:?}");

    // The same, but stopped after the coordinator took the commit: the old record is replaced
    // and its certificates revoked, so a refused rerun must not put it back over the new keys.
    let (third, third_id) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let killed = Run::from(
        h.install_cmd(&c.host(), &third)
            .arg("--force")
            .env("MUSTER_FAILPOINT", "after-commit-answer")
            .output()?,
    );
    assert_eq!(killed.code, 137, "{killed:?}");
    let new_key = std::fs::read(h.path("etc/muster/tls/node.key"))?;
    assert_ne!(new_key, key);
    assert_eq!(
        c.api("DELETE", &format!("{TOKENS}/{third_id}"), None)?.0,
        200
    );
    let r = h.install(&c.host(), &third, &[])?;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("no longer registered"), "{r:?}");
    assert_eq!(std::fs::read(h.path("etc/muster/tls/node.key"))?, new_key);
    Ok(())
}
