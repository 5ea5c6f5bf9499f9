//! Sealed secrets, backup and restore on a single host: a snapshot taken while serving, restored
//! into a new data folder with the emergency token, gives the same platform back.

use crate::common::*;
use muster_tests::*;
use std::process::{Command, Stdio};

fn musterd(args: &[&str]) -> Command {
    let mut c = Command::new(bin("musterd"));
    c.args(args).env_remove("MUSTER_EMERGENCY_TOKEN");
    c
}

#[test]
fn the_store_holds_no_secret_in_the_clear() -> R {
    let c = Coordinator::with(Opts::default())?;
    // The store is the database file and its write-ahead log: a recent write may be in either.
    let mut db = Vec::new();
    for name in ["muster.db", "muster.db-wal"] {
        match std::fs::read(c.data().join(name)) {
            Ok(bytes) => db.extend(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
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
    let (_, _, line) = c.token_with_line(r#"{"persistent":true,"roles":["proxy"]}"#)?;
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
    // An install line printed before the backup still fetches over its pin (curl says 90
    // when the coordinator's key is not the pinned one).
    let r = install_line_fetch(&line)?;
    assert_eq!(r.code, 0, "{r:?}");
    // And the old host's agent still talks to it.
    let r = h.muster(&["agent", "--count", "1"])?;
    assert_eq!(r.code, 0, "{r:?}");
    Ok(())
}

#[test]
fn with_every_coordinator_gone_a_director_and_the_emergency_token_bring_the_platform_back() -> R {
    let mut etcd = Etcd::start(3)?;
    let (p1, p2) = (free_port(), free_port());
    let opts = |port| Opts {
        config: etcd.store_config("/muster/"),
        start: true,
        port: Some(port),
        advertise: Some(format!("127.0.0.1:{p1},127.0.0.1:{p2}")),
        ..Opts::default()
    };
    let mut c1 = Coordinator::with(opts(p1))?;
    let mut c2 = Coordinator::alongside(&c1, opts(p2))?;
    let emergency = c1.secret("emergency_token");
    let (kept, _) = c1.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let (revoked, revoked_id) = c2.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let old1 = Host::new("old-1")?;
    let old2 = Host::new("old-2")?;
    assert_eq!(old1.install(&c1.host(), &kept, &[])?.code, 0);
    assert_eq!(old2.install(&c2.host(), &kept, &[])?.code, 0);
    let (code, _) = c1.api("DELETE", &format!("{TOKENS}/{revoked_id}"), None)?;
    assert_eq!(code, 200);

    // A director, its serving certificate issued by a coordinator ahead of time.
    let dport = free_port();
    let ddir = tempfile::tempdir()?;
    let ddata = ddir.path().join("data");
    let out = musterd(&[
        "director-cert",
        "--address",
        &format!("127.0.0.1:{dport}"),
        "--data-dir",
    ])
    .arg(c1.data())
    .arg("--config")
    .arg(c1.dir.path().join("server.yaml"))
    .arg("--output")
    .arg(&ddata)
    .output()?;
    assert!(out.status.success(), "{out:?}");
    let dconf = ddir.path().join("director.yaml");
    std::fs::write(
        &dconf,
        format!(
            "listen: 127.0.0.1:{dport}\nmode: director\n{}",
            etcd.store_config("/muster/")
        ),
    )?;
    let mut director = Coordinator::adopt(&dconf, &ddata, dport, c1.secrets.clone())?;
    director.serve()?;
    // It holds no unsealed secret: its folder has its own serving key, certificates, nothing else.
    let mut held: Vec<String> = std::fs::read_dir(&ddata)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .collect();
    held.sort();
    assert_eq!(held, ["ca.pem", "director-cert.pem", "director-key.pem"]);

    // Its console says what a director is for, under the console's headers; nothing signs in.
    let page = |path: &str| -> anyhow::Result<String> {
        let out = Command::new("curl")
            .args(["-sk", "-D", "-"])
            .arg(director.url(path))
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    };
    let console = page("/console/")?;
    assert!(
        console.starts_with("HTTP/2 200") || console.starts_with("HTTP/1.1 200"),
        "{console}"
    );
    assert!(console.contains("This is a director") && console.contains("emergency token"));
    assert!(console
        .to_ascii_lowercase()
        .contains("content-security-policy: default-src 'none'"));
    let session = page("/console/session")?;
    assert!(
        !session.contains(" 200"),
        "no sign-in on a director: {session}"
    );

    // It answers no join, and recovery only with the emergency token and the coordinator role.
    let h = Host::new("via-director")?;
    let r = h.install(&director.host(), &kept, &[])?;
    assert_eq!(
        (r.code, r.json()["code"].as_str()),
        (3, Some("server.director_mode")),
        "{r:?}"
    );
    let r = h.install(&director.host(), &emergency, &["--roles", "allocator"])?;
    assert_eq!(
        r.code, 4,
        "the emergency token never enrolls an allocator: {r:?}"
    );
    assert!(!h.path("etc/muster/tls/node.crt").exists());
    for (token, roles, status, code) in [
        (
            &emergency,
            vec!["allocator"],
            403,
            "token.emergency_allocator",
        ),
        (
            &emergency,
            vec!["proxy"],
            400,
            "recovery.coordinator_role_required",
        ),
        (
            &kept,
            vec!["coordinator"],
            403,
            "recovery.emergency_token_required",
        ),
        (&revoked, vec!["proxy"], 403, "token.revoked"),
    ] {
        let body = serde_json::json!({"token": token, "roles": roles});
        let (got, v) = director.post_json("/api/v1/node/recover", &body, &[])?;
        assert_eq!(
            (got, v["errors"][0]["code"].as_str()),
            (status, Some(code)),
            "{v}"
        );
    }

    // Every coordinator is lost, data folders and all, and one etcd member with them.
    c1.stop();
    c2.stop();
    std::fs::remove_dir_all(c1.data())?;
    std::fs::remove_dir_all(c2.data())?;
    etcd.kill(2);

    // A host already serving another platform's coordinator is not recovered over: its
    // unseal key (perhaps that platform's only copy) stays, and nothing is written.
    let busy = Host::new("busy-coordinator")?;
    std::fs::create_dir_all(busy.path("var/lib/musterd"))?;
    std::fs::write(
        busy.path("var/lib/musterd/unseal.key"),
        "another platform\n",
    )?;
    let r = busy.install(
        &director.host(),
        &emergency,
        &["--roles", "coordinator", "--advertise", "127.0.0.1:1"],
    )?;
    assert_eq!(r.code, 7, "{r:?}");
    assert!(
        r.stderr.contains("holds another platform's unseal key"),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read_to_string(busy.path("var/lib/musterd/unseal.key"))?,
        "another platform\n"
    );
    assert!(!busy.path("etc/muster/musterd.yaml").exists());

    // On a fresh host: the emergency token, through the director.
    let nport = free_port();
    let new = Host::new("new-coordinator")?;
    let mut child = new
        .install_cmd(&director.host(), &emergency)
        .args(["--roles", "coordinator,director,proxy"])
        .args(["--advertise", &format!("127.0.0.1:{nport}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // It writes musterd's files, then waits for its coordinator; start it as musterd.service
    // would.
    let yaml = new.wait_for_musterd_yaml(&mut child)?;
    let mut c3 = Coordinator::adopt(
        &yaml,
        &new.path("var/lib/musterd"),
        nport,
        c1.secrets.clone(),
    )?;
    c3.serve()?;
    let r = Run::from(child.wait_with_output()?);
    assert_eq!(r.code, 0, "{r:?}\n{}", c3.log());
    assert_eq!(
        r.json()["roles"],
        serde_json::json!(["coordinator", "proxy", "director"]),
        "{r:?}"
    );
    assert!(!r.stdout.contains(&emergency) && !r.stderr.contains(&emergency));
    assert!(!director.log().contains(&emergency));
    assert_eq!(new.stat("var/lib/musterd/unseal.key"), "0:0 600");
    assert_eq!(
        new.stat("etc/muster/musterd.yaml").split(' ').nth(1),
        Some("640")
    );

    // Same CAs: old node certificates verify against the recovered platform's.
    for old in [&old1, &old2] {
        tool(
            Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(new.path("etc/muster/tls/transport-ca.pem"))
                .arg(old.path("etc/muster/tls/node.crt")),
        )?;
    }
    assert_eq!(
        std::fs::read(c3.data().join("ca.pem"))?,
        std::fs::read(old1.path("etc/muster/tls/http-ca.pem"))?
    );
    // Same hosts, same tokens: the kept token enrolls a new allocator, the revoked one stays
    // refused.
    let after = Host::new("after-recovery")?;
    let r = after.install(&c3.host(), &kept, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    let r = Host::new("revoked-after")?.install(&c3.host(), &revoked, &[])?;
    assert_eq!(
        (r.code, r.json()["code"].as_str()),
        (3, Some("token.revoked")),
        "{r:?}"
    );
    let (_, v) = c3.api("GET", "/api/v1/platform/infrastructure/runners", None)?;
    let mut names: Vec<&str> = v["runners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["public_hostname"].as_str())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["after-recovery", "new-coordinator", "old-1", "old-2"]
    );
    Ok(())
}

/// Coordinators on one store publish the names they answer on; a host without the coordinator
/// role, joining through one coordinator under another's name, is not certified for it.
#[test]
fn no_ordinary_host_is_certified_for_another_coordinators_name() -> R {
    let etcd = Etcd::start(1)?;
    let (pa, pb) = (free_port(), free_port());
    let opts = |port: u16, advertise: String| Opts {
        config: etcd.store_config("/names/"),
        start: true,
        port: Some(port),
        advertise: Some(advertise),
        ..Opts::default()
    };
    // B advertises a name that A's own list does not hold.
    let b = Coordinator::with(opts(pb, format!("coordinator-b.example:{pb}")))?;
    let a = Coordinator::alongside(&b, opts(pa, format!("127.0.0.1:{pa}")))?;
    let (tok, _) = a.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let h = Host::new("coordinator-b.example")?;
    let r = h.install(&a.host(), &tok, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    let sans = h.http_sans()?;
    assert!(!sans.contains("DNS:coordinator-b.example"), "{sans}");
    Ok(())
}
