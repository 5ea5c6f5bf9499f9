//! End to end: the real `musterd`, the real `muster`, checked with curl, openssl and stat.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use muster_tests::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

type R = anyhow::Result<()>;
const TOKENS: &str = "/api/v1/platform/configuration/security/enrollment-tokens";

#[test]
fn init_writes_secrets_once_and_refuses_twice() -> R {
    let c = Coordinator::with(Opts::default())?;
    let secrets = c.data().join("bootstrap-secrets.json");
    let stat = tool(Command::new("stat").args(["-c", "%a"]).arg(&secrets))?;
    assert_eq!(stat.trim(), "600");
    let on_disk: Value = serde_json::from_slice(&std::fs::read(&secrets)?)?;
    assert_eq!(on_disk, c.secrets);
    for key in [
        "admin_user",
        "admin_password",
        "emergency_token",
        "roles_token",
        "ca_fingerprint",
    ] {
        assert!(
            c.secrets[key].as_str().is_some_and(|s| !s.is_empty()),
            "missing {key}"
        );
    }
    let before = std::fs::read(c.data().join("muster.db"))?;
    let again = Command::new(bin("musterd"))
        .args(["init", "--data-dir"])
        .arg(c.data())
        .output()?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing"));
    assert_eq!(
        std::fs::read(c.data().join("muster.db"))?,
        before,
        "a refused init changed the store"
    );
    // The CA fingerprint is the SPKI pin the tokens carry.
    let claims = muster_protocol::token::inspect(&c.secret("emergency_token"))?;
    assert_eq!(claims.pins, vec![c.secret("ca_fingerprint")]);
    let mut want = muster_protocol::Role::EMERGENCY.to_vec();
    want.sort();
    assert_eq!(claims.roles, want);
    Ok(())
}

#[test]
fn init_refuses_a_folder_holding_muster_state_and_changes_nothing() -> R {
    for planted in [
        "unseal.key",
        "muster.db",
        "bootstrap-secrets.json",
        "serving-key.pem",
        "advertise.json",
        "director-key.pem",
    ] {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        std::fs::write(data.join(planted), b"what an earlier platform left here")?;
        let before = tree(dir.path())?;
        let r = Run::from(
            Command::new(bin("musterd"))
                .args(["init", "--output", "json", "--data-dir"])
                .arg(&data)
                .output()?,
        );
        assert_ne!(r.code, 0, "{planted}: {r:?}");
        assert!(
            r.stderr.contains("already holds Muster state") && r.stderr.contains(planted),
            "{planted}: {r:?}"
        );
        assert_eq!(r.stdout, "", "{planted}: secrets printed");
        assert_eq!(tree(dir.path())?, before, "{planted}: the folder changed");
    }
    Ok(())
}

#[test]
fn commands_other_than_init_never_create_a_store() -> R {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("mistyped");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty)?;
    let before = tree(dir.path())?;
    for data in [&missing, &empty] {
        for args in [
            vec!["token", "create", "--roles", "allocator"],
            vec!["token", "list"],
            vec!["token", "revoke", "some-id"],
            vec!["serve", "--listen", "127.0.0.1:1"],
            vec!["backup", "--output", "-"],
            vec![
                "director-cert",
                "--address",
                "d.example",
                "--output",
                "/nonexistent/d",
            ],
            vec!["unseal"],
        ] {
            let r = Run::from(
                Command::new(bin("musterd"))
                    .args(&args)
                    .arg("--data-dir")
                    .arg(data)
                    .env("MUSTER_EMERGENCY_TOKEN", "not.a.token")
                    .env_remove("MUSTERD_CONFIG")
                    .output()?,
            );
            assert_ne!(r.code, 0, "{args:?} in {}: {r:?}", data.display());
            assert!(
                r.stderr.contains("the embedded SQLite store")
                    && r.stderr.contains(&data.display().to_string()),
                "{args:?} names the backend and where it looked: {r:?}"
            );
        }
    }
    assert_eq!(tree(dir.path())?, before, "a command made something");
    Ok(())
}

#[test]
fn init_advertise_is_what_a_later_token_create_puts_in_tokens_and_lines() -> R {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    tool(
        Command::new(bin("musterd"))
            .args([
                "init",
                "--output",
                "json",
                "--advertise",
                "coordinator-9.example.net:12443",
            ])
            .arg("--data-dir")
            .arg(&data),
    )?;
    let out = tool(
        Command::new(bin("musterd"))
            .args(["token", "create", "--roles", "proxy", "--output", "json"])
            .arg("--data-dir")
            .arg(&data),
    )?;
    let v: Value = serde_json::from_str(&out)?;
    let line = v["install_command"].as_str().unwrap_or_default();
    assert!(
        line.contains("https://coordinator-9.example.net:12443/install.sh"),
        "{v}"
    );
    let claims = muster_protocol::token::inspect(v["token"].as_str().unwrap_or_default())?;
    assert_eq!(claims.coordinators, vec!["coordinator-9.example.net:12443"]);
    Ok(())
}

#[test]
fn an_init_that_cannot_write_its_files_still_shows_its_secrets() -> R {
    // A folder where ca.pem goes: the platform is in the store before the files are written,
    // and a second init is refused, so the secrets must reach the operator anyway.
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("ca.pem"))?;
    let out = Run::from(
        Command::new(bin("musterd"))
            .args(["init", "--output", "json", "--data-dir"])
            .arg(&data)
            .output()?,
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("ca.pem"), "names the file: {out:?}");
    let shown: Value = serde_json::from_str(&out.stdout)?;
    let token = shown["emergency_token"].as_str().unwrap_or_default();
    let claims = muster_protocol::token::inspect(token)?;
    assert_eq!(claims.kind, muster_protocol::token::TokenKind::Emergency);
    assert!(
        !out.stderr.contains(token),
        "the secrets go to the output, not the error"
    );
    Ok(())
}

/// The curl lines of the product docs, run as written: `-k` where they have it, and where
/// they do not, with the platform's CA trusted the way an admin's shell would
/// (`CURL_CA_BUNDLE`), at `localhost` and at the coordinator's address.
#[test]
fn seed_curl_lines_work_as_written() -> R {
    let c = Coordinator::start()?;
    let up = c.user_pass();
    let url = c.url(TOKENS);
    let ca = c.data().join("ca.pem");
    let run = |args: &[&str]| -> anyhow::Result<Value> {
        let out = tool(Command::new("curl").env("CURL_CA_BUNDLE", &ca).args(args))?;
        Ok(serde_json::from_str(&out)?)
    };
    let at_localhost = url.replace("127.0.0.1", "localhost");
    let v = run(&[
        "-k",
        "-H",
        "Content-Type: application/json",
        "-u",
        &up,
        &url,
        "-d",
        r#"{ "persistent": true, "roles": [ "allocator"] }"#,
    ])?;
    let persistent_id = v["token_id"].as_str().unwrap_or_default().to_string();
    assert!(
        v["token"].as_str().is_some_and(|t| t.starts_with("eyJ")),
        "{v}"
    );
    let v = run(&[
        "-H",
        "Content-Type: application/json",
        "-u",
        &up,
        &url,
        "-d",
        r#"{ "persistent": false, "roles": [ "allocator"] }"#,
    ])?;
    let eph = muster_protocol::token::inspect(v["token"].as_str().unwrap_or_default())?;
    assert_eq!(
        eph.exp.map(|e| e - eph.iat),
        Some(3600),
        "ephemeral tokens default to one hour"
    );
    let list = run(&["-u", &up, &at_localhost])?;
    let ids: Vec<&str> = list["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["token_id"].as_str())
        .collect();
    assert!(
        ids.contains(&persistent_id.as_str()) && ids.len() == 4,
        "emergency, initial, persistent, ephemeral: {list}"
    );
    assert!(
        !list.to_string().contains("eyJ"),
        "a listing must never hold a token"
    );
    let del = run(&[
        "-XDELETE",
        "-u",
        &up,
        &format!("{at_localhost}/{persistent_id}"),
    ])?;
    assert_eq!(del, serde_json::json!({}));
    let list = run(&["-k", "-u", &up, &url])?;
    assert!(!list.to_string().contains(&persistent_id));
    Ok(())
}

#[test]
fn admin_api_refusals_have_codes() -> R {
    let c = Coordinator::with(Opts {
        config: "login_failures_per_minute: 3\n".into(),
        start: true,
        ..Default::default()
    })?;
    let (code, v) = c.api(
        "POST",
        TOKENS,
        Some(r#"{"persistent":true,"roles":["root"]}"#),
    )?;
    // ECE's code on ECE's path, Muster's reason in the message.
    assert_eq!(
        (code, v["errors"][0]["code"].as_str()),
        (400, Some("enrollment_tokens.invalid_token_request"))
    );
    assert!(v.to_string().contains("roles.unknown"), "{v}");
    // A lifetime past ten years (here one that would overflow the clock) is refused by name.
    let (code, v) = c.api(
        "POST",
        TOKENS,
        Some(r#"{"persistent":false,"roles":[],"validity_in_seconds":18446744073709551615}"#),
    )?;
    assert_eq!(
        (code, v["errors"][0]["code"].as_str()),
        (400, Some("enrollment_tokens.invalid_token_request")),
        "{v}"
    );
    assert!(v.to_string().contains("validity_in_seconds"), "{v}");
    let (code, v) = c.api(
        "POST",
        TOKENS,
        Some(&format!(
            r#"{{"persistent":true,"roles":[],"pad":"{}"}}"#,
            "x".repeat(100_000)
        )),
    )?;
    assert_eq!(
        (code, v["errors"][0]["code"].as_str()),
        (413, Some("request.too_large"))
    );
    let emergency_id = muster_protocol::token::inspect(&c.secret("emergency_token"))?.sub;
    let (code, v) = c.api("DELETE", &format!("{TOKENS}/{emergency_id}"), None)?;
    assert_eq!(
        (code, v["errors"][0]["code"].as_str()),
        (409, Some("token.not_deletable"))
    );
    let (code, _) = c.api("DELETE", &format!("{TOKENS}/no-such-id"), None)?;
    assert_eq!(code, 404);
    let (code, v) = c.api("GET", "/_security/enroll/node", None)?;
    assert_eq!(
        (code, v["errors"][0]["code"].as_str()),
        (403, Some("server.feature_disabled"))
    );
    // ApiKey works; a wrong password is refused, then rate-limited per source.
    let key = format!("Authorization: ApiKey {}", c.secret("api_key"));
    let out = c.curl(&["-sf", "-H", &key, &c.url(TOKENS)])?;
    assert!(out.status.success());
    let mut codes = vec![];
    for _ in 0..5 {
        let out = c.curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            "admin:wrong",
            &c.url(TOKENS),
        ])?;
        codes.push(String::from_utf8_lossy(&out.stdout).to_string());
    }
    assert_eq!(codes, ["401", "401", "401", "429", "429"]);
    // Health, readiness, metrics.
    let m = c.curl(&["-sf", &c.url("/metrics")])?;
    assert!(String::from_utf8_lossy(&m.stdout).contains("muster_login_failures_total 3"));
    assert!(c.curl(&["-sf", &c.url("/readyz")])?.status.success());
    let log = c.log();
    assert!(
        !log.contains(&c.secret("admin_password")) && !log.contains("wrong"),
        "secrets in the log"
    );
    Ok(())
}

#[test]
fn es_enroll_node_when_enabled() -> R {
    let c = Coordinator::with(Opts {
        config: "es_enroll_node: true\n".into(),
        start: true,
        ..Default::default()
    })?;
    let (code, v) = c.api("GET", "/_security/enroll/node", None)?;
    assert_eq!(code, 200, "{v}");
    let b64 = base64::engine::general_purpose::STANDARD;
    for k in [
        "http_ca_key",
        "http_ca_cert",
        "transport_ca_cert",
        "transport_key",
        "transport_cert",
    ] {
        assert!(
            v[k].as_str()
                .and_then(|s| b64.decode(s).ok())
                .is_some_and(|d| d.first() == Some(&0x30)),
            "{k} is base64 DER"
        );
    }
    // No host enrolled yet: no node to discover (ece.rs enrolls one).
    assert_eq!(v["nodes_addresses"], serde_json::json!([]));
    Ok(())
}

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
    let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/runners", None)?;
    assert_eq!(v["runners"].as_array().map(Vec::len), Some(0));
    Ok(())
}

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

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn forge(token: &str, f: impl Fn(&mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap_or_default())
            .unwrap_or(Value::Null);
    f(&mut claims);
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    )
}

#[test]
fn bad_tokens_are_refused_and_nothing_is_written() -> R {
    let c = Coordinator::start()?;
    let other = Coordinator::with(Opts::default())?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let (other_tok, _) = (other.secret("roles_token"), ());
    let parts: Vec<&str> = tok.split('.').collect();
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    let escalated = forge(&tok, |c| {
        c["roles"] = serde_json::json!(["allocator", "coordinator"])
    });
    // Another platform's token, pointed at this coordinator: pins fail first, or the signature.
    let foreign = forge(&other_tok, |cl| cl["coordinators"] = serde_json::json!([]));
    // (case, token, extra flags, exit code, coordinator's error code)
    type Case<'a> = (&'a str, String, Vec<&'a str>, i32, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("alg none", none, vec![], 3, None),
        (
            "edited claims",
            escalated,
            vec!["--roles", "coordinator"],
            3,
            Some("token.bad_signature"),
        ),
        (
            "role escalation",
            tok.clone(),
            vec!["--roles", "coordinator"],
            4,
            None,
        ),
        ("garbage", "not-a-token".into(), vec![], 3, None),
        ("another platform", foreign, vec![], 6, None),
    ];
    for (name, t, extra, want, code) in cases {
        let h = Host::new("h")?;
        let before = tree(h.root.path())?;
        let r = h.install(&c.host(), &t, &extra)?;
        assert_eq!(r.code, want, "{name}: {r:?}");
        if let Some(code) = code {
            assert_eq!(r.json()["code"], code, "{name}: {r:?}");
        }
        // Nothing this run wrote is left: no key, no state, no folder.
        assert_eq!(tree(h.root.path())?, before, "{name}: the root changed");
        assert!(
            !r.stderr.contains(&t) || t.len() < 20,
            "{name}: token echoed"
        );
    }
    // The emergency token never enrolls an allocator.
    let h = Host::new("h")?;
    let before = tree(h.root.path())?;
    let r = h.install(
        &c.host(),
        &c.secret("emergency_token"),
        &["--roles", "allocator"],
    )?;
    assert_eq!(r.code, 4, "{r:?}");
    assert_eq!(tree(h.root.path())?, before, "emergency: the root changed");
    // A revoked token is refused by the coordinator with its own code.
    let (tok2, id2) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    c.api("DELETE", &format!("{TOKENS}/{id2}"), None)?;
    let h2 = Host::new("h2")?;
    let before = tree(h2.root.path())?;
    let r = h2.install(&c.host(), &tok2, &[])?;
    assert_eq!(
        (r.code, r.json()["code"].as_str()),
        (3, Some("token.revoked")),
        "{r:?}"
    );
    assert_eq!(tree(h2.root.path())?, before, "revoked: the root changed");
    // A coordinator that does not answer (the other platform's is not started) keeps the
    // keys for the retry, as documented.
    let tok5 = other_tok.clone();
    let h5 = Host::new("h5")?;
    let r = Run::from(
        Command::new(bin("muster"))
            .args(["install", "--output", "json", "--timeout", "2s"])
            .args([
                "--coordinator-host",
                &other.host(),
                "--hostname",
                "h5",
                "--root",
            ])
            .arg(h5.root.path())
            .env("MUSTER_ROLES_TOKEN", &tok5)
            .output()?,
    );
    assert_eq!(r.code, 5, "{r:?}");
    assert!(h5.path("etc/muster/tls/node.key").exists(), "{r:?}");
    assert_eq!(h5.state()["stage"], "keys", "{}", h5.state());
    // An expired one is refused locally, before any network call.
    let (tok3, _) = c.token(r#"{"persistent":false,"roles":["proxy"],"validity_in_seconds":1}"#)?;
    std::thread::sleep(Duration::from_secs(1));
    let exp = forge(&tok3, |cl| cl["exp"] = serde_json::json!(1000));
    let r = Host::new("h3")?.install("127.0.0.1:1", &exp, &[])?;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("expired"), "{r:?}");
    // Source restriction.
    let (tok4, _) =
        c.token(r#"{"persistent":true,"roles":["proxy"],"allowed_sources":["10.9.0.0/16"]}"#)?;
    let h4 = Host::new("h4")?;
    let before = tree(h4.root.path())?;
    let r = h4.install(&c.host(), &tok4, &[])?;
    assert_eq!(r.json()["code"], "token.source_not_allowed", "{r:?}");
    assert_eq!(tree(h4.root.path())?, before, "source: the root changed");
    let log = c.log();
    for t in [&tok, &tok2, &tok4] {
        assert!(!log.contains(t.as_str()), "token in the server log");
    }
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
    let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/runners", None)?;
    assert_eq!(v["runners"].as_array().map(Vec::len), Some(1));
    Ok(())
}

#[test]
fn killed_at_every_step_a_rerun_converges() -> R {
    let c = Coordinator::start()?;
    for point in [
        "after-keys",
        "write-before-rename",
        "after-join",
        "after-files",
        "after-commit-answer",
    ] {
        let (tok, id) = c.token(r#"{"persistent":true,"roles":["allocator"],"max_uses":1}"#)?;
        let h = Host::new(&format!("crash-{point}"))?;
        let killed = Run::from(
            h.install_cmd(&c.host(), &tok)
                .env("MUSTER_FAILPOINT", point)
                .output()?,
        );
        assert_eq!(killed.code, 137, "{point}: {killed:?}");
        let r = h.install(&c.host(), &tok, &[])?;
        assert_eq!(
            r.code, 0,
            "{point}: the one-use token must still enroll the host: {r:?}"
        );
        assert_eq!(c.token_uses(&id)?.unwrap_or(999), 1, "{point}");
        let tls = h.path("etc/muster/tls");
        tool(Command::new("openssl").current_dir(&tls).args([
            "verify",
            "-CAfile",
            "transport-ca.pem",
            "node.crt",
        ]))?;
        let litter: Vec<_> = walk(h.root.path())
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(litter.is_empty(), "{point}: temporaries left: {litter:?}");
        if point == "after-join" || point == "after-files" {
            // Retry-safe redemption: the same key got the same node id back.
            assert!(
                r.stderr.contains("resuming") || r.json()["result"] == "enrolled",
                "{point}"
            );
        }
    }
    let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/runners", None)?;
    assert_eq!(v["runners"].as_array().map(Vec::len), Some(5));
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
    let (_, audit) = c.api("GET", &format!("{TOKENS}/_audit"), None)?;
    assert!(audit["events"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["event"] == "returned" && e["token_id"] == id.as_str()));
    let r = Host::new("next")?.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    Ok(())
}

#[test]
fn a_symlink_at_a_target_is_refused() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let h = Host::new("linked")?;
    let victim = h.path("victim");
    std::fs::write(&victim, "keep me")?;
    std::fs::create_dir_all(h.path("etc/muster/tls"))?;
    std::os::unix::fs::symlink(&victim, h.path("etc/muster/tls/node.crt"))?;
    let r = h.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 7, "{r:?}");
    assert!(r.stderr.contains("symbolic link"), "{r:?}");
    assert_eq!(std::fs::read_to_string(&victim)?, "keep me");
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
    let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/runners", None)?;
    assert_eq!(v["runners"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["runners"][0]["runner_id"], r.json()["node_id"]);
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
    let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/runners", None)?;
    assert_eq!(
        v["runners"].as_array().map(Vec::len),
        Some(1),
        "the new one stays"
    );
    Ok(())
}

#[test]
fn a_token_revoked_from_the_command_line_is_audited() -> R {
    let mut c = Coordinator::with(Opts::default())?;
    let musterd = |args: &[&str]| -> anyhow::Result<Run> {
        Ok(Run::from(
            Command::new(bin("musterd"))
                .args(args)
                .arg("--data-dir")
                .arg(c.data())
                .output()?,
        ))
    };
    let made = musterd(&["token", "create", "--roles", "proxy", "--output", "json"])?;
    assert_eq!(made.code, 0, "{made:?}");
    let id = made.json()["token_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let revoked = musterd(&["token", "revoke", &id])?;
    assert_eq!(revoked.code, 0, "{revoked:?}");
    c.serve()?;
    let (_, audit) = c.api("GET", &format!("{TOKENS}/_audit"), None)?;
    let events: Vec<(String, String)> = audit["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default().to_string(),
                e["token_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        events.contains(&("revoked".to_string(), id.clone())),
        "{events:?}"
    );
    Ok(())
}

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

#[test]
fn a_node_certificate_does_not_pass_for_a_coordinator() -> R {
    // A host's own HTTP certificate, from the same CA, served by a plain TLS server: the
    // installer must refuse it even though it chains to the pinned CA.
    let mut c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let h = Host::new("impostor")?;
    assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
    // The real coordinator goes away, so the installer has nothing to fail over to.
    c.stop();
    // openssl takes the port a moment after free_port() gave it up; if another test's server
    // took it first, s_server exits and another port is tried.
    let mut started = None;
    for _ in 0..5 {
        let port = free_port();
        let mut server = Command::new("openssl")
            .current_dir(h.path("etc/muster/tls"))
            .args(["s_server", "-quiet", "-accept", &port.to_string()])
            .args([
                "-cert",
                "http.crt",
                "-key",
                "http.key",
                "-cert_chain",
                "http-ca.pem",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut listening = false;
        while !listening && server.try_wait()?.is_none() && std::time::Instant::now() < deadline {
            listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            std::thread::sleep(Duration::from_millis(20));
        }
        if listening && server.try_wait()?.is_none() {
            started = Some((port, server));
            break;
        }
        let _ = server.kill();
        let _ = server.wait();
    }
    let Some((port, mut server)) = started else {
        anyhow::bail!("openssl s_server did not start");
    };
    let r = Host::new("victim")?.install(&format!("127.0.0.1:{port}"), &tok, &[])?;
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("not a coordinator"), "{r:?}");
    Ok(())
}

#[test]
fn a_full_disk_fails_cleanly_and_keeps_earlier_files() -> R {
    if !nix_is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return Ok(());
    }
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let h = Host::new("full")?;
    let tls = h.path("etc/muster/tls");
    std::fs::create_dir_all(&tls)?;
    tool(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k"])
            .arg("tmpfs")
            .arg(&tls),
    )?;
    let guard = Unmount(tls.clone());
    // Fill the disk, leaving room for the keys but not for the certificates and keystores.
    let filler = tls.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 * 1024]);
    let size = std::fs::metadata(&filler).map(|m| m.len()).unwrap_or(0);
    std::fs::write(&filler, vec![0u8; size.saturating_sub(4096) as usize])?;
    let r = h.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 7, "{r:?}");
    assert!(r.stderr.contains("No space left"), "{r:?}");
    let key = std::fs::read_to_string(tls.join("node.key"))?;
    assert!(key.contains("PRIVATE KEY"), "earlier files intact");
    assert!(!tls.join("node.p12").exists());
    std::fs::remove_file(&filler)?;
    let r = h.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 0, "after freeing space the re-run converges: {r:?}");
    drop(guard);
    Ok(())
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
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

/// A CSR made by openssl with the given extra `req` arguments.
fn openssl_csr(dir: &std::path::Path, name: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = dir.join(format!("{name}.csr"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-new", "-nodes", "-subj", "/CN=hostile", "-keyout"])
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(&out)
        .args(args);
    tool(&mut cmd)?;
    Ok(std::fs::read_to_string(out)?)
}

#[test]
fn hostile_csrs_are_refused_and_nothing_is_stored() -> R {
    let c = Coordinator::start()?;
    let (tok, id) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let d = tempfile::tempdir()?;
    let p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let good = openssl_csr(d.path(), "good", &p256)?;
    let with = |extra: &[&str]| -> Vec<String> {
        p256.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let csr = |name: &str, args: Vec<String>| -> anyhow::Result<String> {
        openssl_csr(
            d.path(),
            name,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let cases = vec![
        (
            "foreign SAN",
            csr(
                "san",
                with(&["-addext", "subjectAltName=DNS:coordinator.example"]),
            )?,
            "csr.san_not_allowed",
        ),
        (
            "CA request",
            csr(
                "ca",
                with(&["-addext", "basicConstraints=critical,CA:TRUE"]),
            )?,
            "csr.ca_requested",
        ),
        (
            "RSA 1024",
            csr("rsa", vec!["-newkey".into(), "rsa:1024".into()])?,
            "csr.key_type",
        ),
        (
            "Ed448 key",
            csr("ed448", vec!["-newkey".into(), "ed448".into()])?,
            "csr.key_type",
        ),
        (
            "not a CSR",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
            "csr.invalid",
        ),
        (
            "huge",
            format!("{}{}", good, "#".repeat(20_000)),
            "csr.invalid",
        ),
    ];
    for (name, bad, want) in cases {
        let body = serde_json::json!({
            "token": tok, "transport_csr": bad, "http_csr": good,
            "host": {"hostname": "hostile", "addresses": ["127.0.0.1"]}, "roles": ["allocator"],
        });
        let (status, v) = c.post_json("/api/v1/node/join", &body, &[])?;
        assert_eq!(
            (status, v["errors"][0]["code"].as_str()),
            (400, Some(want)),
            "{name}: {v}"
        );
    }
    assert_eq!(
        c.token_uses(&id)?.unwrap_or(999),
        0,
        "a refused join spends no use"
    );
    let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/runners", None)?;
    assert_eq!(v["runners"].as_array().map(Vec::len), Some(0));
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

fn hook(h: &Host, phase: &str, name: &str, body: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = h.path(&format!("etc/muster/hooks.d/{phase}"));
    std::fs::create_dir_all(&dir)?;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n"))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
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
    let child = std::fs::read_to_string(&pidfile)?;
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.trim())).unwrap_or_default();
    let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
    assert!(
        matches!(state, None | Some('Z') | Some('X')),
        "the hook's child {child} still runs: {stat}"
    );
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

#[test]
fn the_server_refuses_a_token_from_the_future() -> R {
    // A token minted with the coordinator's clock two hours ahead (libfaketime on `musterd
    // token create`), then presented to the server straight, past the installer's own check.
    let c = Coordinator::start()?;
    let mut cmd = Command::new("faketime");
    cmd.args(["-f", "+2h"]).arg(bin("musterd"));
    cmd.args([
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
    .arg(c.dir.path().join("server.yaml"));
    let tok = serde_json::from_str::<Value>(&tool(&mut cmd)?)?["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let d = tempfile::tempdir()?;
    let p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let csr = openssl_csr(d.path(), "t", &p256)?;
    let body = serde_json::json!({"token": tok, "transport_csr": csr, "http_csr": csr, "host": {"hostname": "early"}});
    let (_, v) = c.post_json("/api/v1/node/join", &body, &[])?;
    assert_eq!(v["errors"][0]["code"], "token.not_yet_valid", "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("clock")),
        "{v}"
    );
    Ok(())
}

#[test]
fn only_a_coordinator_is_certified_for_the_coordinators_own_address() -> R {
    // The HTTP CA signs the coordinator's serving certificate too: a host that says it is at
    // the coordinator's advertised address (here 127.0.0.1, as every host on this box does)
    // must not get a certificate that could stand in for the coordinator's.
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator","coordinator"]}"#)?;
    let sans = |h: &Host| h.http_sans();
    let plain = Host::new("plain-alloc")?;
    let r = plain.install(&c.host(), &tok, &["--roles", "allocator"])?;
    assert_eq!(r.code, 0, "{r:?}");
    let s = sans(&plain)?;
    assert!(s.contains("DNS:plain-alloc"), "{s}");
    assert!(!s.contains("IP Address:127.0.0.1"), "{s}");
    // This machine's own address (every host here reports it too): the coordinator's serving
    // certificate names it, so `curl https://COORDINATOR_HOST_IP:…` checks, and the plain
    // host's HTTP certificate does not.
    let ip = tool(Command::new("ip").args(["-o", "-4", "addr", "show", "scope", "global"]))?
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_string);
    if let Some(ip) = ip {
        let served = tool(Command::new("sh").arg("-c").arg(format!(
            "openssl s_client -connect 127.0.0.1:{} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName",
            c.port
        )))?;
        assert!(served.contains(&format!("IP Address:{ip}")), "{served}");
        assert!(!s.contains(&format!("IP Address:{ip}")), "{s}");
    }
    let coord = Host::new("second-coord")?;
    let r = coord.install(&c.host(), &tok, &["--roles", "coordinator"])?;
    assert_eq!(r.code, 0, "{r:?}");
    let s = sans(&coord)?;
    assert!(
        s.contains("IP Address:127.0.0.1"),
        "a coordinator keeps it: {s}"
    );
    Ok(())
}

/// Refusals the router makes itself (a method a path does not take, a query string that does
/// not read) have the error body too, and none tells a caller without credentials more than
/// 401; the scheme's name of `Authorization` is matched in any case.
#[test]
fn every_admin_refusal_has_the_error_body() -> R {
    let c = Coordinator::start()?;
    let up = c.user_pass();
    let url = c.url(TOKENS);
    let call = |args: &[&str]| -> anyhow::Result<(u16, Value)> {
        let mut all = vec!["-s", "-w", "\n%{http_code}"];
        all.extend_from_slice(args);
        Ok(status_and_json(&c.curl(&all)?))
    };
    let code_of = |v: &Value| v["errors"][0]["code"].as_str().map(str::to_string);
    let (code, v) = call(&["-X", "PUT", "-u", &up, &url])?;
    assert_eq!(
        (code, code_of(&v).as_deref()),
        (405, Some("request.method_not_allowed")),
        "{v}"
    );
    let bad = format!("{url}?install_command=maybe");
    let (code, v) = call(&["-X", "POST", &bad, "-d", r#"{"persistent":true}"#])?;
    assert_eq!(
        (code, code_of(&v).as_deref()),
        (401, Some("auth.required")),
        "{v}"
    );
    let (code, v) = call(&[
        "-X",
        "POST",
        "-u",
        &up,
        &bad,
        "-d",
        r#"{"persistent":true}"#,
    ])?;
    assert_eq!(
        (code, code_of(&v).as_deref()),
        (400, Some("enrollment_tokens.invalid_token_request")),
        "{v}"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(&up);
    let (code, v) = call(&["-H", &format!("Authorization: bASIC {basic}"), &url])?;
    assert_eq!(code, 200, "{v}");
    let (code, v) = call(&[&c.url("/_security/enroll/node")])?;
    assert_eq!(
        (code, code_of(&v).as_deref()),
        (401, Some("auth.required")),
        "{v}"
    );
    Ok(())
}

/// `musterd config check` reads a config as every command would and names what is wrong:
/// an advertise entry that is no host or has no valid port, a listen address that does not
/// parse, an unknown key; a good file is described and exits 0.
#[test]
fn config_check_names_what_is_wrong_and_passes_a_good_file() -> R {
    let dir = tempfile::tempdir()?;
    let check = |yaml: &str| -> anyhow::Result<Run> {
        let f = dir.path().join("musterd.yaml");
        std::fs::write(&f, yaml)?;
        Ok(Run::from(
            Command::new(bin("musterd"))
                .args(["config", "check", "--config"])
                .arg(&f)
                .output()?,
        ))
    };
    for (yaml, says) in [
        (
            "advertise: [\"not a host\"]\n",
            "\"not a host\" is neither a DNS name nor an IP address",
        ),
        ("advertise: [c1.example.net:99999]\n", "port \"99999\""),
        ("advertise: [\"c1:0\"]\n", "port 0"),
        ("listen: everywhere\n", "listen: \"everywhere\""),
        ("listne: 0.0.0.0:1\n", "listne"),
        ("reservation_seconds: 0\n", "reservation_seconds"),
    ] {
        let r = check(yaml)?;
        assert_eq!(r.code, 1, "{yaml}: {r:?}");
        assert!(r.stderr.contains(says), "{yaml}: {r:?}");
        assert!(r.stderr.contains("musterd.yaml"), "names the file: {r:?}");
    }
    let r = check(
        "listen: 0.0.0.0:12443\nadvertise: [c1.example.net:12443, \"[2001:db8::1]:12443\"]\n",
    )?;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("ok") && r.stdout.contains("c1.example.net:12443"),
        "{r:?}"
    );
    // Every other command refuses the same file the same way.
    std::fs::write(dir.path().join("musterd.yaml"), "advertise: [c1:99999]\n")?;
    let r = Run::from(
        Command::new(bin("musterd"))
            .args(["init", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(dir.path().join("musterd.yaml"))
            .output()?,
    );
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("port \"99999\""), "{r:?}");
    assert!(!dir.path().join("data/muster.db").exists(), "nothing made");
    Ok(())
}
