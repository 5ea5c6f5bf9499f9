//! What the installer refuses, and that a refusal writes nothing: bad tokens, hostile CSRs,
//! symlinks, a full disk, files and folders another user controls.

use crate::common::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use muster_tests::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

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

/// Owner and mode of one file.
fn tree_mode(p: &std::path::Path) -> anyhow::Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p)?;
    Ok((m.uid(), m.mode() & 0o7777))
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
    assert_eq!(c.admin().runners()?.len(), 0);
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

/// A resumed install (state at `keys`) whose key files another user planted (owner nobody,
/// mode 0666) refuses them, names the file, certifies nothing and leaves the root as it was.
#[test]
fn a_resumed_install_refuses_keys_another_user_planted_and_changes_nothing() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    for (what, uid, mode) in [
        ("owner nobody", 65534, 0o600),
        ("mode 0666", MUSTER_UID, 0o666),
        ("both", 65534, 0o666),
    ] {
        let h = Host::new(&format!("planted-{}", what.replace(' ', "-")))?;
        let killed = Run::from(
            h.install_cmd(&c.host(), &tok)
                .env("MUSTER_FAILPOINT", "after-keys")
                .output()?,
        );
        assert_eq!(killed.code, 137, "{what}: {killed:?}");
        assert_eq!(h.state()["stage"], "keys", "{what}");
        let key = h.path("etc/muster/tls/http.key");
        // The planted key: another key, with the owner and mode under test.
        let other = Host::new(&format!("planter-{}", what.replace(' ', "-")))?;
        let k = other.path("k.pem");
        tool(
            Command::new("openssl")
                .args(["genpkey", "-algorithm", "EC", "-pkeyopt"])
                .args(["ec_paramgen_curve:P-256", "-out"])
                .arg(&k),
        )?;
        std::fs::copy(&k, &key)?;
        std::os::unix::fs::chown(&key, Some(uid), Some(uid))?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        let before = tree(&h.path(""))?;
        let r = h.install(&c.host(), &tok, &[])?;
        assert_eq!(r.code, 7, "{what}: {r:?}");
        assert!(
            r.stderr.contains("refusing to reuse") && r.stderr.contains("http.key"),
            "{what}: {r:?}"
        );
        assert_eq!(tree(&h.path(""))?, before, "{what}: nothing changes");
        assert!(!h.path("etc/muster/tls/http.crt").exists(), "{what}");
        // Removing what was planted, as the message says, lets the install finish.
        std::fs::remove_file(&key)?;
        let again = h.install(&c.host(), &tok, &[])?;
        assert_eq!(again.code, 0, "{what}: {again:?}");
        assert_eq!(tree_mode(&key)?, (MUSTER_UID, 0o600), "{what}");
    }
    Ok(())
}

/// `ROOT/var` as a symbolic link to a folder every user may write to, or as such a folder
/// itself: the install refuses before writing anything, there or in the root.
#[test]
fn a_folder_on_the_way_that_another_user_controls_is_refused() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let h = Host::new("parent-link")?;
    let open = h.path("open");
    std::fs::create_dir(&open)?;
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    std::os::unix::fs::symlink(&open, h.path("var"))?;
    let before = tree(&h.path(""))?;
    let r = h.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 7, "{r:?}");
    assert!(
        r.stderr.contains("symbolic link") && r.stderr.contains("/var"),
        "{r:?}"
    );
    assert_eq!(tree(&h.path(""))?, before, "nothing written anywhere");

    std::fs::remove_file(h.path("var"))?;
    std::fs::rename(&open, h.path("var"))?;
    let before = tree(&h.path(""))?;
    let r = h.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 7, "{r:?}");
    assert!(
        r.stderr.contains("every user may write") && r.stderr.contains("0777"),
        "{r:?}"
    );
    assert_eq!(tree(&h.path(""))?, before, "nothing written anywhere");

    std::fs::set_permissions(
        h.path("var"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let r = h.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    Ok(())
}
