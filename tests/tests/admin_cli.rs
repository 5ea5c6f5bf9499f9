//! `muster admin` (docs/admin.md) through the real binary against a real coordinator: a
//! profile file, tokens, hosts, the audit log (and `--follow`), status, and what it refuses.

use crate::common::*;
use muster_tests::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `muster admin ARGS`, with `env` set.
fn admin(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Run> {
    let mut cmd = Command::new(bin("muster"));
    cmd.arg("admin").args(args).env_remove("MUSTER_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(Run::from(cmd.output()?))
}

fn key_file(dir: &std::path::Path, name: &str, key: &str, mode: u32) -> anyhow::Result<String> {
    let f = dir.join(name);
    std::fs::write(&f, format!("{key}\n"))?;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode))?;
    Ok(f.display().to_string())
}

#[test]
fn muster_admin_drives_tokens_hosts_audit_and_status_from_a_profile() -> R {
    let c = Coordinator::start()?;
    let dir = tempfile::tempdir()?;
    let key = key_file(dir.path(), "prod.key", &c.secret("api_key"), 0o600)?;
    let profile = dir.path().join("admin.yaml");
    std::fs::write(
        &profile,
        format!(
            "default:\n  coordinator: {}\n  ca_file: {}\n  api_key_file: {key}\n",
            c.host(),
            c.data().join("ca.pem").display()
        ),
    )?;
    let config = profile.display().to_string();
    let json = |args: &[&str]| -> anyhow::Result<Value> {
        let mut all = vec!["--config", &config, "--output", "json"];
        all.extend_from_slice(args);
        let r = admin(&all, &[])?;
        anyhow::ensure!(r.code == 0, "muster admin {args:?}: {r:?}");
        Ok(r.json())
    };

    let made = json(&[
        "tokens",
        "create",
        "--roles",
        "allocator",
        "--validity",
        "2h",
        "--description",
        "allocators for rack 12",
    ])?;
    let (tok, id) = (
        made["token"].as_str().unwrap_or_default().to_string(),
        made["token_id"].as_str().unwrap_or_default().to_string(),
    );
    assert!(!tok.is_empty() && !id.is_empty(), "{made}");
    assert!(made["install_command"].as_str().is_some(), "{made}");
    let h = Host::new("cli-host-1")?;
    assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);

    let shown = json(&["tokens", "show", &id])?;
    assert_eq!(shown["description"], "allocators for rack 12", "{shown}");
    // A description that could rewrite a terminal is refused, naming what is wrong.
    let r = admin(
        &[
            "--config",
            &config,
            "tokens",
            "create",
            "--roles",
            "proxy",
            "--description",
            "rack\u{1b}[2J",
        ],
        &[],
    )?;
    assert_eq!(r.code, 10, "{r:?}");
    assert!(r.stderr.contains("description must be"), "{r:?}");
    assert_eq!(
        (shown["uses"].as_u64(), shown["kind"].as_str()),
        (Some(1), Some("ephemeral"))
    );
    let listed = json(&["hosts", "list"])?;
    assert_eq!(
        listed["runners"][0]["public_hostname"], "cli-host-1",
        "{listed}"
    );
    // Text for people: a table with the host, connected, its dates readable.
    let text = admin(&["--config", &config, "hosts", "list"], &[])?;
    assert!(text.stdout.starts_with("NODE ID"), "{text:?}");
    assert!(
        text.stdout.contains("cli-host-1") && text.stdout.contains(" GMT"),
        "{text:?}"
    );

    // A host named in capitals is the same host; its roles become exactly those given.
    let roles = json(&["hosts", "roles", "CLI-HOST-1", "--set", "allocator,proxy"])?;
    assert_eq!(
        roles["roles"],
        serde_json::json!(["allocator", "proxy"]),
        "{roles}"
    );
    let set = json(&["audit", "--kind", "roles_set", "--host", "cli-host-1"])?;
    let events = set["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1, "{set}");
    assert_eq!(events[0]["actor"], "api-key:bootstrap");

    let status = json(&["status", "--within", "3650d"])?;
    assert_eq!(
        (
            &status["healthy"],
            &status["ready"],
            &status["hosts"],
            &status["connected"]
        ),
        (
            &Value::Bool(true),
            &Value::Bool(true),
            &Value::from(1),
            &Value::from(1)
        ),
        "{status}"
    );
    assert_eq!(status["expiring"][0]["hostname"], "cli-host-1", "{status}");
    assert_eq!(
        status["coordinators"],
        serde_json::json!([]),
        "no host has the role"
    );
    assert_eq!(json(&["status"])?["expiring"], serde_json::json!([]));

    // --follow: the events there, then each new one as it comes, a JSON object a line.
    let mut follow = Command::new(bin("muster"))
        .args([
            "admin", "--config", &config, "--output", "json", "audit", "--kind", "created",
            "--follow",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(
        follow
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("stdout"))?,
    )
    .lines();
    let first: Value = serde_json::from_str(&lines.next().transpose()?.unwrap_or_default())?;
    assert_eq!(first["event"], "created");
    let later = json(&["tokens", "create", "--roles", "proxy", "--persistent"])?;
    let later_id = later["token_id"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        let Some(line) = lines.next().transpose()? else {
            break;
        };
        let e: Value = serde_json::from_str(&line)?;
        seen = e["token_id"] == later_id.as_str();
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen, "--follow did not show the new token's event");

    // Removed, revoked: asking again is refused with the coordinator's answer named.
    assert_eq!(
        json(&["hosts", "remove", "cli-host-1"])?["hostname"],
        "cli-host-1"
    );
    let gone = admin(&["--config", &config, "hosts", "show", "cli-host-1"], &[])?;
    assert_eq!(gone.code, 10, "{gone:?}");
    json(&["tokens", "revoke", &id])?;
    let gone = admin(
        &[
            "--config", &config, "--output", "json", "tokens", "show", &id,
        ],
        &[],
    )?;
    assert_eq!(
        (gone.code, gone.json()["error"].as_str()),
        (10, Some("refused")),
        "{gone:?}"
    );

    // The environment, without a profile file; a wrong key is refused by the coordinator.
    let ca = c.data().join("ca.pem").display().to_string();
    let host = c.host();
    let wrong = key_file(dir.path(), "wrong.key", "not-the-key", 0o600)?;
    let env = [
        ("MUSTER_COORDINATOR", host.as_str()),
        ("MUSTER_CA_FILE", ca.as_str()),
        ("MUSTER_API_KEY_FILE", wrong.as_str()),
        ("MUSTER_ADMIN_CONFIG", "/nonexistent/admin.yaml"),
    ];
    let r = admin(&["--output", "json", "tokens", "list"], &env[..3])?;
    assert_eq!(
        (r.code, r.json()["code"].as_str()),
        (10, Some("auth.invalid")),
        "{r:?}"
    );
    // A profile file named on purpose must be there.
    let r = admin(&["tokens", "list"], &env)?;
    assert_eq!(r.code, 2, "{r:?}");
    // A key file others may read is refused before anything is sent, and not shown.
    let open = key_file(dir.path(), "open.key", &c.secret("api_key"), 0o644)?;
    let r = admin(&["--api-key-file", &open, "tokens", "list"], &env[..2])?;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("chmod 600") && !r.stderr.contains(&c.secret("api_key")),
        "{r:?}"
    );
    // A CA that is not the platform's: the coordinator is not trusted.
    let other = dir.path().join("other-ca.pem");
    tool(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=other",
                "-keyout",
            ])
            .arg(dir.path().join("other.key"))
            .arg("-out")
            .arg(&other),
    )?;
    let r = admin(
        &[
            "--ca-file",
            &other.display().to_string(),
            "--api-key-file",
            &key,
            "tokens",
            "list",
        ],
        &env[..1],
    )?;
    assert_eq!(r.code, 5, "{r:?}");
    Ok(())
}
