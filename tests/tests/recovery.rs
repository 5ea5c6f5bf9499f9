//! Sealed secrets, backup and restore on a single host: a snapshot taken while serving, restored
//! into a new data folder with the emergency token, gives the same platform back.

use muster_tests::*;
use std::process::{Command, Stdio};

type R = anyhow::Result<()>;
const TOKENS: &str = "/api/v1/platform/configuration/security/enrollment-tokens";

fn musterd(args: &[&str]) -> Command {
    let mut c = Command::new(bin("musterd"));
    c.args(args).env_remove("MUSTER_EMERGENCY_TOKEN");
    c
}

#[test]
fn the_store_holds_no_secret_in_the_clear() -> R {
    let c = Coordinator::with(Opts::default())?;
    let db = std::fs::read(c.data().join("muster.db"))?;
    let text = String::from_utf8_lossy(&db);
    assert!(!text.contains("PRIVATE KEY"), "a private key in the store");
    assert!(
        text.contains("BEGIN CERTIFICATE"),
        "the public CA certificates are there"
    );
    // Without its unseal key, the data folder does not serve, and says how to fix it.
    std::fs::remove_file(c.data().join("unseal.key"))?;
    let out = musterd(&["serve", "--data-dir"]).arg(c.data()).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("unseal.key is missing") && err.contains("musterd unseal"),
        "{err}"
    );
    // The emergency token gives it back; another token does not.
    let out = musterd(&["unseal", "--data-dir"])
        .arg(c.data())
        .env("MUSTER_EMERGENCY_TOKEN", c.secret("roles_token"))
        .output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not this platform's emergency token"),
        "{out:?}"
    );
    assert!(!c.data().join("unseal.key").exists());
    let out = musterd(&["unseal", "--data-dir"])
        .arg(c.data())
        .env("MUSTER_EMERGENCY_TOKEN", c.secret("emergency_token"))
        .output()?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        tool(
            Command::new("stat")
                .args(["-c", "%a"])
                .arg(c.data().join("unseal.key"))
        )?
        .trim(),
        "600"
    );
    Ok(())
}

#[test]
fn backup_while_serving_and_restore_with_the_emergency_token_give_the_same_platform() -> R {
    let mut c = Coordinator::start()?;
    let (kept, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let (revoked, revoked_id) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let h = Host::new("before-backup")?;
    assert_eq!(h.install(&c.host(), &kept, &[])?.code, 0);
    let (code, _) = c.api("DELETE", &format!("{TOKENS}/{revoked_id}"), None)?;
    assert_eq!(code, 200);

    // Online backup, to stdout, while the coordinator serves.
    let out = musterd(&["backup", "--output", "-", "--data-dir"])
        .arg(c.data())
        .stderr(Stdio::piped())
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let backup = c.dir.path().join("platform.backup");
    std::fs::write(&backup, &out.stdout)?;
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("PRIVATE KEY"),
        "the backup holds a private key in the clear"
    );
    c.stop();

    // A wrong token restores nothing.
    let fresh = tempfile::tempdir()?;
    let data = fresh.path().join("data");
    let out = musterd(&["restore", "--input"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&data)
        .env("MUSTER_EMERGENCY_TOKEN", &kept)
        .output()?;
    assert!(!out.status.success());
    assert!(!data.exists(), "a refused restore left {}", data.display());
    let out = musterd(&["restore", "--input"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&data)
        .output()?;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("MUSTER_EMERGENCY_TOKEN"),
        "{out:?}"
    );

    // The emergency token, from a file, restores it.
    let tf = fresh.path().join("emergency");
    std::fs::write(&tf, c.secret("emergency_token"))?;
    let out = musterd(&["restore", "--input"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&data)
        .arg("--emergency-token-file")
        .arg(&tf)
        .output()?;
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&c.secret("emergency_token")));

    // Serve the restored folder on the same address (the tokens name it).
    let old_data = c.data();
    std::fs::rename(&old_data, c.dir.path().join("data.old"))?;
    std::fs::rename(&data, &old_data)?;
    c.serve()?;
    // Same CA: the old node certificate verifies against the restored coordinator's CA.
    tool(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(h.path("etc/muster/tls/transport-ca.pem"))
            .arg(h.path("etc/muster/tls/node.crt")),
    )?;
    let restored_ca = std::fs::read(c.data().join("ca.pem"))?;
    assert_eq!(
        restored_ca,
        std::fs::read(h.path("etc/muster/tls/http-ca.pem"))?
    );
    // Same hosts, same tokens: the kept token enrolls, the revoked one is still refused.
    let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/runners", None)?;
    assert_eq!(v["runners"][0]["public_hostname"], "before-backup", "{v}");
    let h2 = Host::new("after-restore")?;
    let r = h2.install(&c.host(), &kept, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    let h3 = Host::new("revoked-after-restore")?;
    let r = h3.install(&c.host(), &revoked, &[])?;
    assert_eq!(r.json()["code"], "token.revoked", "{r:?}");
    // And the old host's agent still talks to it.
    let r = h.muster(&["agent", "--count", "1"])?;
    assert_eq!(r.code, 0, "{r:?}");
    Ok(())
}
