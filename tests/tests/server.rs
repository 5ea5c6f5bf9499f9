//! `musterd`'s own command line: `init` (secrets shown once, folders refused), commands that
//! need a store, `config check`.

use crate::common::*;
use muster_tests::*;
use serde_json::Value;
use std::process::Command;

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
