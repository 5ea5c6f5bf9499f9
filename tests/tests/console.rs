//! The web console in a real browser: Debian's Chromium, driven by Playwright
//! (`tests/console/e2e.mjs`, playwright-core from npm), against a real musterd, with a real
//! installer enrolling a host while the page watches.

use crate::common::*;
use muster_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// Sign in (a wrong password refused first), a forged CSRF token refused, a token made with
/// its one-liner, cloud-init and package forms, the installer run with it against a scratch
/// root, the host seen arriving without a reload, a role granted, the token revoked and the
/// host removed (each asked first), all of it found in the audit log, a refusal explained,
/// markup in a description and a host name shown as text, signing out, signing in with an API
/// key; the sign-in meets the login rate limit; screenshots of each page in
/// `target/console-screenshots`.
#[test]
fn the_console_signs_in_makes_a_token_watches_a_host_arrive_and_audits_it_in_chromium() -> R {
    let c = Coordinator::with(Opts {
        start: true,
        ..Opts::default()
    })?;
    let work = tempfile::tempdir()?;
    let (code, made) = c.api(
        "POST",
        "/api/v1/users/auth/keys",
        Some(r#"{"name":"console-test","description":"signs in to the console"}"#),
    )?;
    assert_eq!(code, 201, "the API key was made");
    let api_key = made["key"].as_str().unwrap_or_default().to_string();
    assert!(!api_key.is_empty(), "an API key in the answer");
    let shots = os::target_dir().join("console-screenshots");
    let host_name = "console-host-1";
    let said_path = work.path().join("browser.log");
    let said_file = std::fs::File::create(&said_path)?;
    let mut browser = Command::new("node")
        .arg(os::repo().join("tests/console/e2e.mjs"))
        .current_dir(os::repo().join("tests/console"))
        .env("CONSOLE_URL", c.url(""))
        .env("ADMIN_PASSWORD", c.secret("admin_password"))
        .env("API_KEY", &api_key)
        .env("WORK", work.path())
        .env("SHOTS", &shots)
        .env("HOST_NAME", host_name)
        .stdout(said_file.try_clone()?)
        .stderr(said_file)
        .spawn()?;
    // The page makes the token; the installer enrolls a host with it.
    let token_file = work.path().join("token");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !token_file.exists() && Instant::now() < deadline && browser.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    if token_file.exists() {
        let token = std::fs::read_to_string(&token_file)?;
        let h = Host::new(host_name)?;
        let r = h.install(&c.host(), token.trim(), &[])?;
        assert_eq!(r.code, 0, "{r:?}");
        std::fs::write(work.path().join("installed"), "yes")?;
    }
    // Every wait in the script has a timeout of its own; this one is for the script itself.
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = browser.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            browser.kill()?;
            browser.wait()?;
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let said = std::fs::read_to_string(&said_path)?;
    println!("{said}");
    assert!(
        status.is_some_and(|s| s.success()) && work.path().join("done").exists(),
        "the browser run failed ({status:?}):\n{said}"
    );
    for page in [
        "sign-in",
        "token-created",
        "hosts",
        "tokens",
        "audit",
        "platform",
        "hosts-phone",
        "hosts-10000",
    ] {
        let p = shots.join(format!("{page}.png"));
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.len() > 1000),
            "{} saved",
            p.display()
        );
    }
    // The API agrees with what the page showed: the session acted as the admin user.
    let (_, log) = c.api(
        "GET",
        "/api/v1/platform/configuration/security/enrollment-tokens/_audit",
        None,
    )?;
    let acted: Vec<(String, String)> = log["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["actor"] == "user:admin")
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("event"), s("hostname"))
        })
        .collect();
    for want in [
        ("created".to_string(), String::new()),
        ("roles_set".to_string(), host_name.to_string()),
        ("revoked".to_string(), String::new()),
        ("host_removed".to_string(), host_name.to_string()),
    ] {
        assert!(acted.contains(&want), "{want:?} in {acted:?}");
    }
    // The console's sign-in meets the API's login rate limit (last: it locks this address out).
    let mut codes = vec![];
    for i in 0..12 {
        let out = Command::new("curl")
            .args(["-sk", "-X", "POST", "-H", "Content-Type: application/json"])
            .args([
                "-d",
                &format!(r#"{{"user":"admin","password":"wrong-{i}"}}"#),
            ])
            .arg(c.url("/console/session"))
            .output()?;
        let body: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        codes.push(
            body["errors"][0]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert!(
        codes.first().is_some_and(|c| c == "auth.invalid")
            && codes.last().is_some_and(|c| c == "auth.rate_limited"),
        "wrong sign-ins meet the login rate limit: {codes:?}"
    );
    Ok(())
}
