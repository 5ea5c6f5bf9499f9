//! Enrolling hosts with the real `musterd` and `muster`: the files written, certificates every
//! client loads, one-use tokens raced, expiry of uncommitted joins, dry runs, failover.

use crate::common::*;
use muster_tests::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

#[test]
fn enrolls_a_host_with_the_right_files() -> R {
    let c = Coordinator::start()?;
    let (tok, tid) = c.token(r#"{"persistent":true,"roles":["allocator","proxy"]}"#)?;
    let h = Host::new("alloc-1")?;
    let r = h.install(
        &c.host(),
        &tok,
        &["--roles", "allocator", "--availability-zone", "zone-b"],
    )?;
    assert_eq!(r.code, 0, "{r:?}");
    let out = r.json();
    assert_eq!(out["result"], "enrolled");
    assert_eq!(out["roles"], serde_json::json!(["allocator"]));
    let node_id = out["node_id"].as_str().unwrap_or_default().to_string();
    let m = MUSTER_UID;
    for (rel, want) in [
        ("etc/muster/node.yaml", format!("0:{m} 640")),
        ("etc/muster/tls", format!("0:{m} 750")),
        ("etc/muster/tls/transport-ca.pem", format!("0:{m} 644")),
        ("etc/muster/tls/node.crt", format!("0:{m} 644")),
        ("etc/muster/tls/http.crt", format!("0:{m} 644")),
        ("etc/muster/tls/node.key", format!("{m}:{m} 600")),
        ("etc/muster/tls/http.key", format!("{m}:{m} 600")),
        ("etc/muster/tls/node.p12", format!("{m}:{m} 600")),
        ("etc/muster/tls/node.p12.password", format!("{m}:{m} 600")),
        ("etc/muster/tls/truststore.p12", format!("0:{m} 644")),
        ("var/lib/muster/enrollment.json", "0:0 600".to_string()),
    ] {
        assert_eq!(h.stat(rel), want, "{rel}");
    }
    let tls = h.path("etc/muster/tls");
    tool(Command::new("openssl").current_dir(&tls).args([
        "verify",
        "-CAfile",
        "transport-ca.pem",
        "node.crt",
    ]))?;
    tool(Command::new("openssl").current_dir(&tls).args([
        "verify",
        "-CAfile",
        "http-ca.pem",
        "http.crt",
    ]))?;
    let p12 = tool(Command::new("openssl").current_dir(&tls).args([
        "pkcs12",
        "-in",
        "node.p12",
        "-passin",
        "file:node.p12.password",
        "-nodes",
    ]))?;
    assert!(
        p12.contains("PRIVATE KEY") && p12.matches("BEGIN CERTIFICATE").count() == 2,
        "keystore holds key and chain"
    );
    let trust = tool(Command::new("openssl").current_dir(&tls).args([
        "pkcs12",
        "-in",
        "truststore.p12",
        "-passin",
        "pass:changeit",
        "-nokeys",
    ]))?;
    assert_eq!(trust.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(!trust.contains("PRIVATE KEY"));
    let subject = tool(
        Command::new("openssl")
            .current_dir(&tls)
            .args(["x509", "-in", "node.crt", "-noout", "-subject"]),
    )?;
    assert!(
        subject.contains(&node_id) && subject.contains("OU = node"),
        "{subject}"
    );
    let yaml = std::fs::read_to_string(h.path("etc/muster/node.yaml"))?;
    assert!(
        yaml.contains(&format!("node-id: {node_id}")) && yaml.contains("version: 1"),
        "{yaml}"
    );
    // The allocator list, as the product docs check it.
    let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/allocators", None)?;
    let zone = &v["zones"][0];
    assert_eq!(zone["zone_id"], "zone-b");
    assert_eq!(zone["allocators"][0]["allocator_id"], node_id.as_str());
    assert_eq!(zone["allocators"][0]["status"]["connected"], true);
    assert_eq!(zone["allocators"][0]["public_hostname"], "alloc-1");
    // Audit: created and used, by id only.
    let (_, audit) = c.api("GET", &format!("{TOKENS}/_audit"), None)?;
    let events: Vec<(String, String)> = audit["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["token_id"] == tid.as_str())
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default().to_string(),
                e["hostname"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("created".into(), String::new()),
            ("used".into(), "alloc-1".into()),
            ("committed".into(), "alloc-1".into())
        ]
    );
    assert!(!audit.to_string().contains(&tok));

    // Running again changes nothing.
    let snapshot = |h: &Host| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = walk(h.root.path())
            .into_iter()
            .map(|p| {
                (
                    p.display().to_string(),
                    std::fs::read(&p).unwrap_or_default(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = snapshot(&h);
    let again = h.install(&c.host(), &tok, &[])?;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json()["result"], "already_enrolled");
    assert_eq!(snapshot(&h), before, "a re-run changed files");

    // Status, heartbeat, renewal, leave.
    let st = h.muster(&["status", "--output", "json"])?;
    assert_eq!(st.json()["node_id"], node_id.as_str(), "{st:?}");
    let hb = h.muster(&["agent", "--count", "1", "--output", "json"])?;
    assert_eq!(hb.code, 0, "{hb:?}");
    let old = std::fs::read(tls.join("node.crt"))?;
    let rn = h.muster(&["renew", "--output", "json"])?;
    assert_eq!(rn.code, 0, "{rn:?}");
    assert_ne!(std::fs::read(tls.join("node.crt"))?, old);
    tool(Command::new("openssl").current_dir(&tls).args([
        "verify",
        "-CAfile",
        "transport-ca.pem",
        "node.crt",
    ]))?;
    assert_eq!(
        h.muster(&["agent", "--count", "1"])?.code,
        0,
        "heartbeat with the renewed certificate"
    );

    // A renewal whose answer never arrives: the pair it renewed with stays valid, and the next
    // renewal, made with that pair, revokes the lost one.
    let pair = || -> anyhow::Result<[Vec<u8>; 2]> {
        Ok([
            std::fs::read(tls.join("node.key"))?,
            std::fs::read(tls.join("node.crt"))?,
        ])
    };
    let put = |p: &[Vec<u8>; 2]| -> R {
        std::fs::write(tls.join("node.key"), &p[0])?;
        std::fs::write(tls.join("node.crt"), &p[1])?;
        Ok(())
    };
    let first = pair()?;
    assert_eq!(h.muster(&["renew"])?.code, 0);
    let lost = pair()?;
    put(&first)?;
    let hb = h.muster(&["agent", "--count", "1"])?;
    assert_eq!(hb.code, 0, "the pair renewed with stays valid: {hb:?}");
    assert_eq!(h.muster(&["renew"])?.code, 0, "renewing again from it");
    let third = pair()?;
    put(&lost)?;
    let hb = h.muster(&["agent", "--count", "1"])?;
    assert_ne!(hb.code, 0, "the lost pair must be revoked: {hb:?}");
    assert!(hb.stderr.contains("revoked"), "{hb:?}");
    put(&third)?;

    // A renewal killed half-way through writing its files (the new key written, the
    // certificate not): the next command finishes it before using them.
    let before = std::fs::read(tls.join("node.crt"))?;
    let killed = Run::from(
        Command::new(bin("muster"))
            .args(["renew", "--root"])
            .arg(h.root.path())
            .env("MUSTER_FAILPOINT", "renew-half-written")
            .output()?,
    );
    assert_eq!(killed.code, 137, "{killed:?}");
    assert!(h.path("var/lib/muster/renewal.json").exists());
    let hb = h.muster(&["agent", "--count", "1"])?;
    assert_eq!(hb.code, 0, "{hb:?}");
    assert!(hb.stderr.contains("finishing a renewal"), "{hb:?}");
    assert!(!h.path("var/lib/muster/renewal.json").exists());
    assert_ne!(std::fs::read(tls.join("node.crt"))?, before);
    tool(Command::new("openssl").current_dir(&tls).args([
        "verify",
        "-CAfile",
        "transport-ca.pem",
        "node.crt",
    ]))?;
    tool(Command::new("openssl").current_dir(&tls).args([
        "pkcs12",
        "-in",
        "node.p12",
        "-passin",
        "file:node.p12.password",
        "-noout",
    ]))?;

    let lv = h.muster(&["leave", "--output", "json"])?;
    assert_eq!(lv.code, 0, "{lv:?}");
    assert!(!h.path("etc/muster/tls/node.key").exists());
    assert!(
        !h.path("var/lib/muster/.lock").exists(),
        "leave removes its lock last"
    );
    assert_eq!(c.admin().runners()?.len(), 0);
    Ok(())
}

#[test]
fn every_certificate_loads_in_openssl_keytool_and_python_cryptography() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let h = Host::new("strict-parsers")?;
    assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
    let tls = h.path("etc/muster/tls");
    for name in ["node.crt", "http.crt", "transport-ca.pem", "http-ca.pem"] {
        let f = tls.join(name);
        tool(
            Command::new("openssl")
                .args(["x509", "-noout", "-in"])
                .arg(&f),
        )
        .map_err(|e| anyhow::anyhow!("openssl, {name}: {e}"))?;
        tool(
            Command::new("keytool")
                .args(["-printcert", "-file"])
                .arg(&f),
        )
        .map_err(|e| anyhow::anyhow!("keytool, {name}: {e}"))?;
        // cryptography's parser refuses DER that is not DER (a DEFAULT value written out).
        tool(
            Command::new("python3")
                .arg("-c")
                .arg(
                    "import sys; from cryptography import x509; \
                     c = x509.load_pem_x509_certificate(open(sys.argv[1], 'rb').read()); \
                     [e.value for e in c.extensions]",
                )
                .arg(&f),
        )
        .map_err(|e| anyhow::anyhow!("python cryptography, {name}: {e}"))?;
    }
    // The keystores open in keytool with their passwords (the node's beside it; the trust
    // store's is Java's `changeit`), and list the certificates.
    let pass = tls.join("node.p12.password");
    let trust_pass = h.path("truststore.password");
    std::fs::write(&trust_pass, "changeit")?;
    for (store, pass) in [("node.p12", &pass), ("truststore.p12", &trust_pass)] {
        let out = tool(
            Command::new("keytool")
                .args(["-list", "-storetype", "PKCS12", "-keystore"])
                .arg(tls.join(store))
                .arg("-storepass:file")
                .arg(pass),
        )
        .map_err(|e| anyhow::anyhow!("keytool, {store}: {e}"))?;
        assert!(out.contains("Your keystore contains"), "{store}: {out}");
    }
    Ok(())
}

#[test]
fn one_use_token_raced_by_fifty_installers_succeeds_once() -> R {
    let c = Coordinator::start()?;
    let (tok, id) = c.token(r#"{"persistent":true,"roles":["allocator"],"max_uses":1}"#)?;
    let hosts: Vec<Host> = (0..50)
        .map(|i| Host::new(&format!("racer-{i}")))
        .collect::<anyhow::Result<_>>()?;
    let runs = run_all(hosts.iter().map(|h| h.install_cmd(&c.host(), &tok)))?;
    let ok = runs.iter().filter(|r| r.code == 0).count();
    let limited = runs
        .iter()
        .filter(|r| r.code == 3 && r.json()["code"] == "token.use_limit_reached")
        .count();
    assert_eq!(
        (ok, limited),
        (1, 49),
        "{:?}",
        runs.iter().filter(|r| r.code != 3).collect::<Vec<_>>()
    );
    assert_eq!(c.token_uses(&id)?.unwrap_or(999), 1);
    assert_eq!(c.admin().runners()?.len(), 1);
    Ok(())
}

#[test]
fn an_uncommitted_join_expires_and_gives_its_use_back() -> R {
    let c = Coordinator::with(Opts {
        config: "reservation_seconds: 2\n".into(),
        start: true,
        ..Default::default()
    })?;
    let (tok, id) = c.token(r#"{"persistent":true,"roles":["allocator"],"max_uses":1}"#)?;
    let h = Host::new("gone-quiet")?;
    let killed = Run::from(
        h.install_cmd(&c.host(), &tok)
            .env("MUSTER_FAILPOINT", "after-join")
            .output()?,
    );
    assert_eq!(killed.code, 137);
    assert_eq!(c.token_uses(&id)?.unwrap_or(999), 1);
    let mut uses = 1;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        uses = c.token_uses(&id)?.unwrap_or(999);
        if uses == 0 {
            break;
        }
    }
    assert_eq!(uses, 0, "the expired reservation must give its use back");
    assert!(c
        .admin()
        .audit_of("returned")?
        .iter()
        .any(|e| e.token_id.as_deref() == Some(id.as_str())));
    let r = Host::new("next")?.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    Ok(())
}

#[test]
fn installer_waits_for_a_coordinator_that_starts_late() -> R {
    let mut c = Coordinator::with(Opts::default())?;
    let out = tool(
        Command::new(bin("musterd"))
            .args([
                "token",
                "create",
                "--roles",
                "proxy",
                "--persistent",
                "--output",
                "json",
                "--data-dir",
            ])
            .arg(c.data())
            .arg("--config")
            .arg(c.dir.path().join("server.yaml")),
    )?;
    let tok = serde_json::from_str::<Value>(&out)?["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let h = Host::new("early-bird")?;
    let child = h
        .install_cmd(&c.host(), &tok)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // The token travels in the environment, never in the argument list.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&cmdline).contains(&tok));
    std::thread::sleep(Duration::from_secs(2));
    c.serve()?;
    let r = Run::from(child.wait_with_output()?);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["result"], "enrolled");
    Ok(())
}

#[test]
fn roles_token_on_the_command_line_leaves_the_argument_list() -> R {
    let c = Coordinator::with(Opts::default())?;
    let tok = c.secret("roles_token");
    let h = Host::new("argv")?;
    let child = Command::new(bin("muster"))
        .args([
            "install",
            "--timeout",
            "3s",
            "--coordinator-host",
            "127.0.0.1:1",
            "--roles-token",
            &tok,
            "--root",
        ])
        .arg(h.root.path())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(700));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
    let r = Run::from(child.wait_with_output()?);
    assert!(!cmdline.is_empty());
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(&tok),
        "token still in argv"
    );
    assert_eq!(r.code, 5, "unreachable is its own exit code: {r:?}");
    assert!(!r.stderr.contains(&tok));
    Ok(())
}

#[test]
fn a_roleless_host_waits_for_roles_and_removal_revokes_it() -> R {
    let c = Coordinator::start()?;
    let h = Host::new("waiting")?;
    let r = h.install(
        &c.host(),
        &c.secret("roles_token"),
        &["--roles", "allocator"],
    )?;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["pending_roles"], serde_json::json!(["allocator"]));
    let id = r.json()["node_id"].as_str().unwrap_or_default().to_string();
    let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/allocators", None)?;
    assert_eq!(
        v["zones"].as_array().map(Vec::len),
        Some(0),
        "not an allocator yet"
    );
    let (code, _) = c.api(
        "PUT",
        &format!("/api/v1/platform/infrastructure/runners/{id}/roles"),
        Some(r#"{"roles":["allocator"]}"#),
    )?;
    assert_eq!(code, 200);
    let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/runners", None)?;
    assert_eq!(
        v["runners"][0]["roles"],
        serde_json::json!([{"role_name": "allocator"}])
    );
    assert_eq!(v["runners"][0]["pending_roles"], serde_json::json!([]));
    assert_eq!(h.muster(&["agent", "--count", "1"])?.code, 0);
    assert_eq!(
        h.state()["roles"],
        serde_json::json!(["allocator"]),
        "the heartbeat brings the granted roles home"
    );
    let yaml = std::fs::read_to_string(h.path("etc/muster/node.yaml"))?;
    assert!(
        yaml.contains("roles:\n- allocator") && yaml.contains("pending-roles: []"),
        "node.yaml follows: {yaml}"
    );
    let (code, _) = c.api(
        "DELETE",
        &format!("/api/v1/platform/infrastructure/runners/{id}"),
        None,
    )?;
    assert_eq!(code, 200);
    let hb = h.muster(&["agent", "--count", "1", "--timeout", "2s"])?;
    assert_eq!(
        hb.code, 9,
        "a removed host's certificate stops working: {hb:?}"
    );
    Ok(())
}

/// A coordinator that advertises a name this host cannot resolve (the default is its host
/// name) still serves the hosts enrolled through its address: that address is kept first.
#[test]
fn the_address_a_host_enrolled_through_is_kept() -> R {
    let c = Coordinator::with(Opts {
        advertise: Some("coordinator.invalid:12443".into()),
        start: true,
        ..Default::default()
    })?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let h = Host::new("by-address")?;
    let r = h.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    let want = serde_json::json!([c.host(), "coordinator.invalid:12443"]);
    assert_eq!(h.state()["coordinators"], want);
    let hb = h.muster(&["agent", "--count", "1", "--timeout", "5s"])?;
    assert_eq!(hb.code, 0, "{hb:?}");
    assert_eq!(h.state()["coordinators"], want, "after a heartbeat too");
    let yaml = std::fs::read_to_string(h.path("etc/muster/node.yaml"))?;
    assert!(yaml.contains(&format!("- {}", c.host())), "{yaml}");
    Ok(())
}

#[test]
fn a_rebuilt_host_replaces_its_old_record() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let first = Host::new("phoenix")?;
    assert_eq!(first.install(&c.host(), &tok, &[])?.code, 0);
    // A token that does not grant the registered host's roles may not replace it: not one for
    // other roles, not the role-less initial token. Nothing is spent or changed.
    let (weaker, weaker_id) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    for t in [weaker.clone(), c.secret("roles_token")] {
        let r = Host::new("phoenix")?.install(&c.host(), &t, &[])?;
        assert_eq!(r.code, 4, "{r:?}");
        assert!(r.stderr.contains("host.replace_needs_roles"), "{r:?}");
        assert!(r.stderr.contains("proxy"), "names the missing role: {r:?}");
    }
    assert_eq!(c.token_uses(&weaker_id)?, Some(0));
    assert_eq!(
        first
            .muster(&["agent", "--count", "1", "--timeout", "2s"])?
            .code,
        0,
        "the registered host is untouched"
    );
    let second = Host::new("phoenix")?;
    let r = second.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    let runners = c.admin().runners()?;
    assert_eq!(runners.len(), 1);
    assert_eq!(
        Some(runners[0].runner_id.as_str()),
        r.json()["node_id"].as_str()
    );
    assert_eq!(
        first
            .muster(&["agent", "--count", "1", "--timeout", "2s"])?
            .code,
        9,
        "the old host's certificates are revoked"
    );
    // Leaving from the replaced host removes its files; there is nothing left to deregister.
    let lv = first.muster(&["leave", "--output", "json"])?;
    assert_eq!(lv.code, 0, "{lv:?}");
    assert_eq!(lv.json()["result"], "removed_locally");
    assert!(!first.path("etc/muster/tls/node.key").exists());
    assert_eq!(c.admin().runners()?.len(), 1, "the new one stays");
    Ok(())
}

#[test]
fn dry_run_writes_nothing_and_config_file_works() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator","proxy"]}"#)?;
    let h = Host::new("planner")?;
    let r = h.install(&c.host(), &tok, &["--dry-run"])?;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["result"], "dry_run");
    assert!(r.json()["files"].to_string().contains("node.key"));
    assert!(!h.path("etc/muster").exists() && !h.path("var/lib/muster").exists());
    // The cloud-init style config file, same keys as the flags.
    let cfg = h.path("enroll.yaml");
    std::fs::write(&cfg, format!("version: 1\ncoordinator-host: {}\nroles-token: {tok}\nroles: [proxy]\nhostname: from-config\n", c.host()))?;
    let out = Command::new(bin("muster"))
        .args(["install", "--output", "json", "--config"])
        .arg(&cfg)
        .arg("--root")
        .arg(h.root.path())
        .output()?;
    let r = Run::from(out);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["roles"], serde_json::json!(["proxy"]));
    let bad = h.path("bad.yaml");
    std::fs::write(&bad, "coordinator_host: x\n")?;
    let r = Run::from(
        Command::new(bin("muster"))
            .args(["install", "--config"])
            .arg(&bad)
            .output()?,
    );
    assert_eq!(r.code, 2, "{r:?}");
    Ok(())
}

#[test]
fn the_static_installer_enrolls_a_host() -> R {
    let exe = static_installer();
    let file = tool(Command::new("file").arg("-L").arg(&exe))?;
    assert!(
        file.contains("statically linked") || file.contains("static-pie linked"),
        "{file}"
    );
    let size = std::fs::metadata(&exe)?.len();
    println!(
        "static installer: {size} bytes ({:.2} MiB)",
        size as f64 / (1024.0 * 1024.0)
    );
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let h = Host::new("static-1")?;
    let started = std::time::Instant::now();
    let r = Run::from(h.install_cmd_with(&exe, &c.host(), &tok).output()?);
    let wall = started.elapsed();
    assert_eq!(r.code, 0, "{r:?}");
    println!(
        "static installer: one enrollment on loopback took {:.1} ms (wall)",
        wall.as_secs_f64() * 1000.0
    );
    tool(
        Command::new("openssl")
            .current_dir(h.path("etc/muster/tls"))
            .args(["verify", "-CAfile", "transport-ca.pem", "node.crt"]),
    )?;
    Ok(())
}

#[test]
fn token_inspect_shows_claims_never_the_signature() -> R {
    let c = Coordinator::with(Opts::default())?;
    let tok = c.secret("emergency_token");
    let out = Command::new(bin("muster"))
        .args(["token", "inspect", "--output", "json"])
        .env("MUSTER_ROLES_TOKEN", &tok)
        .output()?;
    let r = Run::from(out);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["kind"], "emergency");
    assert_eq!(
        v["roles"],
        serde_json::json!(["coordinator", "proxy", "director"])
    );
    assert_eq!(
        v["ca_pins"],
        serde_json::json!([c.secret("ca_fingerprint")])
    );
    assert_eq!(v["coordinators"], serde_json::json!([c.host()]));
    let sig = tok.rsplit('.').next().unwrap_or_default();
    assert!(
        !r.stdout.contains(sig) && !r.stderr.contains(sig),
        "signature shown"
    );
    Ok(())
}

#[test]
fn a_dead_coordinator_address_fails_over_to_the_tokens_others() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    // Nothing listens on port 1; the token names the live coordinator.
    let r = Host::new("failover")?.install("127.0.0.1:1", &tok, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["coordinator"], c.host().as_str(), "{r:?}");
    Ok(())
}
