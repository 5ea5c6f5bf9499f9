//! Several coordinators over one real etcd cluster: shared tokens, revocation seen by every
//! coordinator at once, a one-use token raced through two coordinators, failover when a
//! coordinator dies mid-enrollment, an etcd member lost during enrollments, and `muster admin`
//! on one coordinator following what is done through the other.

use crate::common::*;
use muster_tests::*;
use std::process::{Command, Stdio};

#[test]
fn two_coordinators_share_tokens_and_a_revocation_is_refused_by_both_at_once() -> R {
    let etcd = Etcd::start(1)?;
    let (c1, c2) = pair(&etcd)?;
    let (tok, id) = c1.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    // The token made on one is listed by the other.
    let (_, v) = c2.api("GET", TOKENS, None)?;
    assert!(
        v["tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["token_id"] == id.as_str()),
        "{v}"
    );
    // A host enrolls through the second; the first lists it.
    let h = Host::new("via-second")?;
    let r = h.install(&c2.host(), &tok, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    let (_, v) = c1.api("GET", "/api/v1/platform/infrastructure/runners", None)?;
    assert_eq!(v["runners"][0]["public_hostname"], "via-second", "{v}");

    // Revoked on the first, refused by the second on the very next request.
    let (code, _) = c1.api("DELETE", &format!("{TOKENS}/{id}"), None)?;
    assert_eq!(code, 200);
    // The second heard of it through its watch on etcd, without asking.
    let heard = format!("token revoked; dropped on this coordinator token_id={id}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !c2.log().contains(&heard) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(c2.log().contains(&heard), "{}", c2.log());
    let h = Host::new("after-revoke")?;
    let r = h.install(&c2.host(), &tok, &[])?;
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(r.json()["code"], "token.revoked", "{r:?}");
    Ok(())
}

#[test]
fn an_install_line_printed_by_one_coordinator_runs_against_another() -> R {
    let etcd = Etcd::start(1)?;
    let installer = format!("installer_path: {}\n", static_installer().display());
    let (c1, c2) = pair_with(&etcd, &installer)?;
    let (_, _, line) = c2.token_with_line(r#"{"persistent":false,"roles":["allocator"]}"#)?;
    assert!(
        line.contains(&format!("https://{}/install.sh", c1.host())),
        "{line}"
    );
    // The whole line, as printed by the second coordinator, enrolls a host at the first.
    let h = Host::new("line-from-second")?;
    let r = typed(&format!(
        "{line} -s -- --root '{}' --hostname {} --timeout 20s",
        h.root.path().display(),
        h.name
    ))?;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(h.state()["stage"], "committed", "{}", h.state());
    // And its pin holds at the second as well.
    let at_second = line.replace(&c1.host(), &c2.host());
    let r = install_line_fetch(&at_second)?;
    assert_eq!(r.code, 0, "{r:?}");
    Ok(())
}

#[test]
fn one_use_token_raced_through_two_coordinators_by_fifty_installers_enrolls_once() -> R {
    let etcd = Etcd::start(1)?;
    let (c1, c2) = pair(&etcd)?;
    let (tok, id) = c1.token(r#"{"persistent":true,"roles":["allocator"],"max_uses":1}"#)?;
    let hosts: Vec<Host> = (0..50)
        .map(|i| Host::new(&format!("racer-{i}")))
        .collect::<anyhow::Result<_>>()?;
    let runs = run_all(hosts.iter().enumerate().map(|(i, h)| {
        let c = if i % 2 == 0 { &c1 } else { &c2 };
        h.install_cmd(&c.host(), &tok)
    }))?;
    let ok = runs.iter().filter(|r| r.code == 0).count();
    let limited = runs
        .iter()
        .filter(|r| r.code == 3 && r.json()["code"] == "token.use_limit_reached")
        .count();
    println!("50 installers, two coordinators, one use: {ok} enrolled, {limited} refused");
    assert_eq!(
        (ok, limited),
        (1, 49),
        "{:?}",
        runs.iter().filter(|r| r.code != 3).collect::<Vec<_>>()
    );
    let (_, v) = c2.api("GET", TOKENS, None)?;
    let uses = v["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["token_id"] == id.as_str())
        .map(|t| t["uses"].clone());
    assert_eq!(uses, Some(serde_json::json!(1)), "{v}");
    assert_eq!(c1.admin().runners()?.len(), 1);
    Ok(())
}

#[test]
fn the_installer_fails_over_when_its_coordinator_dies_mid_enrollment() -> R {
    let etcd = Etcd::start(1)?;
    let (mut c1, c2) = pair(&etcd)?;
    let (tok, id) = c1.token(r#"{"persistent":true,"roles":["allocator"],"max_uses":1}"#)?;
    let h = Host::new("failover")?;
    // Joined through the first coordinator, then the installer dies before committing ...
    let r = Run::from(
        h.install_cmd(&c1.host(), &tok)
            .env("MUSTER_FAILPOINT", "after-join")
            .output()?,
    );
    assert_ne!(r.code, 0, "{r:?}");
    // ... and the first coordinator dies too.
    c1.stop();
    // The re-run, still naming the dead one first, goes to the second (the token lists both),
    // which knows the join from the shared store: same node, one use.
    let r = h.install(&c1.host(), &tok, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["coordinator"], c2.host(), "{r:?}");
    let (_, v) = c2.api("GET", TOKENS, None)?;
    let t = v["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["token_id"] == id.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(t["uses"], 1, "{v}");
    Ok(())
}

#[test]
fn losing_one_etcd_member_of_three_during_enrollments_loses_nothing() -> R {
    let mut etcd = Etcd::start(3)?;
    let (c1, c2) = pair(&etcd)?;
    let (tok, _) = c1.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let hosts: Vec<Host> = (0..20)
        .map(|i| Host::new(&format!("quorum-{i}")))
        .collect::<anyhow::Result<_>>()?;
    let mut children = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let c = if i % 2 == 0 { &c1 } else { &c2 };
        children.push(
            h.install_cmd(&c.host(), &tok)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?,
        );
        if i == 5 {
            // A member goes away while the rest are in flight.
            etcd.kill(0);
        }
    }
    let runs: Vec<Run> = children
        .into_iter()
        .map(|ch| ch.wait_with_output().map(Run::from))
        .collect::<Result<_, _>>()?;
    let failed: Vec<&Run> = runs.iter().filter(|r| r.code != 0).collect();
    let errors = |c: &Coordinator| {
        c.log()
            .lines()
            .filter(|l| l.contains("ERROR"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        failed.is_empty(),
        "{failed:?}\n{}\n{}",
        errors(&c1),
        errors(&c2)
    );
    // Every acknowledged enrollment is in the store, as both coordinators see it.
    for c in [&c1, &c2] {
        let mut names = c.hostnames()?;
        names.sort();
        let mut want: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
        want.sort();
        assert_eq!(names, want);
    }
    // And etcd agrees: one host record each.
    let out = tool(
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.client_urls[1..].join(",")])
            .args(["get", "--prefix", "--keys-only", "/muster/hosts/"]),
    )?;
    assert_eq!(out.lines().filter(|l| !l.is_empty()).count(), 20, "{out}");
    Ok(())
}

#[test]
fn coordinators_reach_etcd_over_mutual_tls_and_refuse_to_start_without_a_client_certificate() -> R {
    let etcd = Etcd::start_tls()?;
    let c = Coordinator::with(Opts {
        config: etcd.store_config("/muster/"),
        start: true,
        ..Opts::default()
    })?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let h = Host::new("over-tls")?;
    let r = h.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    let out = tool(
        etcd.etcdctl()
            .args(["--endpoints", &etcd.client_urls[0]])
            .args(["get", "--prefix", "--keys-only", "/muster/hosts/"]),
    )?;
    assert_eq!(out.lines().filter(|l| !l.is_empty()).count(), 1, "{out}");

    // etcd's client certificate and key are in the platform, sealed: a host that takes the
    // coordinator role with the emergency token gets them, and its musterd reaches etcd.
    let new = Host::new("tls-recovered")?;
    let nport = free_port();
    let mut child = new
        .install_cmd(&c.host(), &c.secret("emergency_token"))
        .args(["--advertise", &format!("127.0.0.1:{nport}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let yaml = new.wait_for_musterd_yaml(&mut child)?;
    let tls = etcd.dir.path().join("tls");
    for (theirs, ours, mode) in [
        ("ca.pem", "ca.pem", "644"),
        ("client.pem", "client.pem", "644"),
        ("client.key", "client-key.pem", "600"),
    ] {
        let rel = format!("etc/muster/etcd/{ours}");
        assert_eq!(
            std::fs::read(tls.join(theirs))?,
            std::fs::read(new.path(&rel))?
        );
        assert_eq!(new.stat(&rel).split(' ').nth(1), Some(mode), "{rel}");
    }
    // musterd.yaml names them where they are on the host; here the host is a scratch root.
    let text = std::fs::read_to_string(&yaml)?;
    assert!(text.contains("/etc/muster/etcd/client-key.pem"), "{text}");
    let local = new.path("musterd-local.yaml");
    let root = new.root.path().display().to_string();
    std::fs::write(
        &local,
        text.replace("/etc/muster/etcd/", &format!("{root}/etc/muster/etcd/")),
    )?;
    let mut c2 = Coordinator::adopt(
        &local,
        &new.path("var/lib/musterd"),
        nport,
        c.secrets.clone(),
    )?;
    c2.serve()?;
    let r = Run::from(child.wait_with_output()?);
    assert_eq!(r.code, 0, "{r:?}\n{}", c2.log());

    // The same config without the client certificate: etcd refuses, musterd says so.
    let d = tempfile::tempdir()?;
    let no_cert = etcd.store_config("/muster/").replace(
        &format!(
            ", cert: {}, key: {} }}",
            etcd.dir.path().join("tls/client.pem").display(),
            etcd.dir.path().join("tls/client.key").display()
        ),
        " }",
    );
    assert!(!no_cert.contains("client.pem"), "{no_cert}");
    std::fs::write(d.path().join("server.yaml"), &no_cert)?;
    let out = Command::new(bin("musterd"))
        .args(["init", "--data-dir"])
        .arg(d.path().join("data"))
        .arg("--config")
        .arg(d.path().join("server.yaml"))
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("etcd"), "{err}");
    Ok(())
}

/// `muster admin` against two coordinators on etcd: `audit --follow` on the first shows the
/// token made and revoked through the second, who did it, and the host enrolled through it;
/// `hosts list` on either lists the same host.
#[test]
fn muster_admin_on_one_coordinator_follows_what_the_other_does() -> R {
    use std::io::{BufRead, BufReader};
    let etcd = Etcd::start(1)?;
    let (c1, c2) = pair(&etcd)?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("key");
    std::fs::write(&key, format!("{}\n", c1.secret("api_key")))?;
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let admin = |c: &Coordinator, args: &[&str]| {
        let mut cmd = Command::new(bin("muster"));
        cmd.arg("admin")
            .args(args)
            .env("MUSTER_COORDINATOR", c.host())
            .env("MUSTER_CA_FILE", c.data().join("ca.pem"))
            .env("MUSTER_API_KEY_FILE", &key)
            // No profile file: the environment says it all.
            .env("HOME", dir.path())
            .env_remove("MUSTER_ADMIN_CONFIG")
            .env_remove("MUSTER_API_KEY");
        cmd
    };
    let mut follow = admin(&c1, &["--output", "json", "audit", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = follow
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Through the second coordinator: a token, a host enrolled with it, the token revoked.
    let create = [
        "--output",
        "json",
        "tokens",
        "create",
        "--roles",
        "proxy",
        "--persistent",
    ];
    let made = Run::from(admin(&c2, &create).output()?);
    assert_eq!(made.code, 0, "{made:?}");
    let (tok, id) = (
        made.json()["token"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        made.json()["token_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    );
    let h = Host::new("followed-1")?;
    assert_eq!(h.install(&c2.host(), &tok, &[])?.code, 0);
    let revoked = Run::from(admin(&c2, &["tokens", "revoke", &id]).output()?);
    assert_eq!(revoked.code, 0, "{revoked:?}");

    // The first coordinator's follower sees all of it, in order, with who acted.
    let mut seen: Vec<(String, String)> = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !seen.iter().any(|(e, _)| e == "revoked") && std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(500)) {
            let e: serde_json::Value = serde_json::from_str(&line)?;
            if e["token_id"] == id.as_str() {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                seen.push((s("event"), s("actor")));
            }
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let holder = format!("token:{id}");
    let want: Vec<(String, String)> = [
        ("created", "api-key:bootstrap"),
        ("used", holder.as_str()),
        ("committed", holder.as_str()),
        ("revoked", "api-key:bootstrap"),
    ]
    .iter()
    .map(|(e, a)| (e.to_string(), a.to_string()))
    .collect();
    assert_eq!(seen, want);
    // Either coordinator lists the host.
    for c in [&c1, &c2] {
        let hosts = Run::from(admin(c, &["--output", "json", "hosts", "list"]).output()?);
        assert_eq!(
            hosts.json()["runners"][0]["public_hostname"],
            "followed-1",
            "{hosts:?}"
        );
    }
    Ok(())
}

/// Named API keys and the admin password, changed through one coordinator with `muster admin`,
/// hold on the other at once: a new key opens both, a revoked one (the bootstrap key too)
/// neither, the old password neither and the new one both; each change is audited with who
/// made it and what it was about.
#[test]
fn api_keys_and_a_new_admin_password_hold_on_both_coordinators_at_once() -> R {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let etcd = Etcd::start(1)?;
    let (c1, c2) = pair(&etcd)?;
    let dir = tempfile::tempdir()?;
    let secret_file = |name: &str, value: &str| -> anyhow::Result<std::path::PathBuf> {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{value}\n"))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        Ok(p)
    };
    let boot = secret_file("bootstrap.key", &c1.secret("api_key"))?;
    let admin = |c: &Coordinator, key: &std::path::Path, args: &[&str]| {
        let mut cmd = Command::new(bin("muster"));
        cmd.arg("admin")
            .args(args)
            .env("MUSTER_COORDINATOR", c.host())
            .env("MUSTER_CA_FILE", c.data().join("ca.pem"))
            .env("MUSTER_API_KEY_FILE", key)
            .env("HOME", dir.path())
            .env_remove("MUSTER_ADMIN_CONFIG")
            .env_remove("MUSTER_API_KEY");
        cmd
    };
    let run = |c: &Coordinator, key: &std::path::Path, args: &[&str]| -> anyhow::Result<Run> {
        Ok(Run::from(admin(c, key, args).output()?))
    };

    // Two keys made through the first coordinator, one into a file, one printed.
    let ci_file = dir.path().join("ci.key");
    let made = run(
        &c1,
        &boot,
        &[
            "keys",
            "create",
            "CI",
            "--description",
            "pipeline",
            "--key-file",
            ci_file.to_str().unwrap_or_default(),
        ],
    )?;
    assert_eq!(made.code, 0, "{made:?}");
    let ci = std::fs::read_to_string(&ci_file)?.trim().to_string();
    assert_eq!(
        std::fs::metadata(&ci_file)?.permissions().mode() & 0o777,
        0o600
    );
    assert!(
        ci.len() >= 40 && !made.stdout.contains(&ci),
        "the key is in the file only: {made:?}"
    );
    let ops = run(&c1, &boot, &["--output", "json", "keys", "create", "ops"])?;
    assert_eq!(ops.code, 0, "{ops:?}");
    let ops_file = secret_file("ops.key", ops.json()["key"].as_str().unwrap_or_default())?;
    let ci_file = secret_file("ci.key", &ci)?;

    // The second coordinator takes the new key and lists all three.
    let listed = run(&c2, &ci_file, &["--output", "json", "keys", "list"])?;
    assert_eq!(listed.code, 0, "{listed:?}");
    let keys: Vec<(String, String, bool)> = listed.json()["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|k| {
            (
                k["id"].as_str().unwrap_or_default().to_string(),
                k["created_by"].as_str().unwrap_or_default().to_string(),
                k.get("key").is_some(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("bootstrap".to_string(), "local".to_string(), false),
            ("ci".to_string(), "api-key:bootstrap".to_string(), false),
            ("ops".to_string(), "api-key:bootstrap".to_string(), false),
        ]
    );
    let tok = run(
        &c2,
        &ci_file,
        &["--output", "json", "tokens", "create", "--roles", "proxy"],
    )?;
    assert_eq!(tok.code, 0, "{tok:?}");
    let token_id = tok.json()["token_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // Revoked through the second, refused by the first at once; the bootstrap key too.
    for (name, file) in [("ci", &ci_file), ("bootstrap", &boot)] {
        let revoked = run(&c2, &ops_file, &["keys", "revoke", name])?;
        assert_eq!(revoked.code, 0, "{revoked:?}");
        for c in [&c1, &c2] {
            let refused = run(c, file, &["tokens", "list"])?;
            assert_eq!(refused.code, 10, "{name} on {}: {refused:?}", c.host());
            assert!(refused.stderr.contains("auth.invalid"), "{refused:?}");
        }
    }
    let again = run(&c1, &ops_file, &["keys", "revoke", "ci"])?;
    assert!(
        again.code == 10 && again.stderr.contains("api_keys.key_not_found"),
        "{again:?}"
    );

    // The password: a wrong current one changes nothing; then changed through the first.
    let old = c1.secret("admin_password");
    let basic = |c: &Coordinator, pass: &str| -> anyhow::Result<String> {
        let up = format!("admin:{pass}");
        let out = c.curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            &up,
            &c.url(muster_protocol::paths::TOKENS),
        ])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let wrong = secret_file("wrong", "not the admin password")?;
    let new = "a new admin password, long enough";
    let new_file = secret_file("new", new)?;
    let args = |current: &std::path::Path| {
        vec![
            "password".to_string(),
            "--current-password-file".to_string(),
            current.display().to_string(),
            "--new-password-file".to_string(),
            new_file.display().to_string(),
        ]
    };
    let refused = Run::from(admin(&c1, &ops_file, &[]).args(args(&wrong)).output()?);
    assert!(
        refused.code == 10 && refused.stderr.contains("auth.password_required"),
        "{refused:?}"
    );
    assert_eq!(basic(&c2, &old)?, "200");
    let current = secret_file("current", &old)?;
    let changed = Run::from(admin(&c1, &ops_file, &[]).args(args(&current)).output()?);
    assert_eq!(changed.code, 0, "{changed:?}");
    assert!(!changed.stdout.contains(new), "{changed:?}");
    for c in [&c1, &c2] {
        assert_eq!(basic(c, &old)?, "401", "old password on {}", c.host());
        assert_eq!(basic(c, new)?, "200", "new password on {}", c.host());
    }
    // Once more, a password Muster makes, the current one on standard input.
    let mut child = admin(&c2, &ops_file, &["--output", "json", "password"])
        .args(["--current-password-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{new}")?;
    }
    let made = Run::from(child.wait_with_output()?);
    assert_eq!(made.code, 0, "{made:?}");
    let generated = made.json()["password"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(generated.len() >= 24, "{made:?}");
    assert_eq!(basic(&c1, new)?, "401");
    assert_eq!(basic(&c1, &generated)?, "200");

    // Each change audited, with who made it and what it was about.
    let audit = run(&c1, &ops_file, &["--output", "json", "audit"])?;
    let seen: Vec<(String, String, String)> = audit.json()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.get("target").is_some() || e["token_id"] == token_id.as_str())
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("event"), s("actor"), s("target"))
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("api_key_created", "api-key:bootstrap", "api-key:ci"),
        ("api_key_created", "api-key:bootstrap", "api-key:ops"),
        ("created", "api-key:ci", ""),
        ("api_key_revoked", "api-key:ops", "api-key:ci"),
        ("api_key_revoked", "api-key:ops", "api-key:bootstrap"),
        ("password_changed", "api-key:ops", "user:admin"),
        ("password_changed", "api-key:ops", "user:admin"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(seen, want, "{}", audit.stdout);
    Ok(())
}
