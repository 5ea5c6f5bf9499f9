//! The admin API through curl: the seeds' curl lines as written, refusals and their codes,
//! Elasticsearch's enroll-node, revocation from the command line, login costs.

use crate::common::*;
use base64::Engine;
use muster_tests::*;
use serde_json::Value;
use std::process::Command;

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
fn a_token_made_and_revoked_from_the_command_line_is_audited_as_local() -> R {
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
    let events: Vec<(String, String, String)> = audit["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("event"), s("token_id"), s("actor"))
        })
        .collect();
    // Made and revoked on the coordinator itself: `local` acted.
    for event in ["created", "revoked"] {
        let want = (event.to_string(), id.clone(), "local".to_string());
        assert!(events.contains(&want), "{events:?}");
    }
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

#[test]
fn an_unknown_admin_user_costs_what_a_wrong_password_does() -> R {
    let c = Coordinator::with(Opts {
        config: "login_failures_per_minute: 1000\n".into(),
        start: true,
        ..Opts::default()
    })?;
    // Median time of a refused login over 15 tries each, taken in turns.
    let time = |user: &str| -> anyhow::Result<f64> {
        let out = c.curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{time_total}",
            "-u",
            &format!("{user}:not-the-password"),
            &c.url(TOKENS),
        ])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    let (mut known, mut unknown) = (vec![], vec![]);
    for _ in 0..15 {
        known.push(time("admin")?);
        unknown.push(time("nobody-by-this-name")?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (k, u) = (median(&mut known), median(&mut unknown));
    println!(
        "refused login, median of 15: admin {:.1} ms, unknown user {:.1} ms",
        k * 1e3,
        u * 1e3
    );
    // Both pay for the password hash: an unknown user is not answered at once.
    assert!(u > k / 2.0, "unknown user {u} s, wrong password {k} s");
    Ok(())
}

/// The testkit's typed admin client reads every admin answer into Muster's own API types: a
/// token made, listed, revoked once (a second revocation is refused with ECE's code), the
/// host it enrolled listed as runner and allocator, its roles set, its removal, and each step in
/// the audit log.
#[test]
fn the_typed_admin_client_reads_every_admin_answer() -> R {
    let c = Coordinator::start()?;
    let admin = c.admin();
    let (tok, id) = admin.token(&["allocator", "proxy"], true)?;
    let listed = admin.tokens()?;
    assert!(listed
        .iter()
        .any(|t| t.token_id == id && t.persistent && t.uses == 0));
    let h = Host::new("typed")?;
    let r = h.install(&c.host(), &tok, &["--roles", "allocator"])?;
    assert_eq!(r.code, 0, "{r:?}");
    let node = r.json()["node_id"].as_str().unwrap_or_default().to_string();
    assert_eq!(admin.runner(&node)?.public_hostname, "typed");
    assert_eq!(admin.allocators()?.len(), 1);
    assert_eq!(
        admin.set_roles(&node, &["allocator", "proxy"], true)?,
        ["allocator", "proxy"]
    );
    admin.revoke(&id)?;
    expect_refused(admin.revoke(&id), 404, "enrollment_tokens.invalid_token_id")?;
    admin.remove_runner(&node)?;
    expect_refused(admin.runner(&node), 404, "runners.runner_not_found")?;
    for kind in ["created", "used", "committed", "revoked", "host_removed"] {
        assert!(!admin.audit_of(kind)?.is_empty(), "no {kind} event");
    }
    Ok(())
}

/// Every audit event names who acted: the admin user or the API key for what each did through
/// the API, a token's holder for its join, commit and refusal; and a host's heartbeat shows its
/// agent's version and time in the runners and allocators lists.
#[test]
fn every_audit_event_names_who_acted_and_hosts_show_their_agent_version() -> R {
    let c = Coordinator::start()?;
    let admin = c.admin();
    let (tok, id) = admin.token(&["allocator"], true)?;
    // The API key, from a header file (so the key is in no argument list).
    let dir = tempfile::tempdir()?;
    let header = dir.path().join("key.header");
    std::fs::write(
        &header,
        format!("Authorization: ApiKey {}\n", c.secret("api_key")),
    )?;
    let with_key = |method: &str, path: &str, body: &str| -> anyhow::Result<(u16, Value)> {
        let h = format!("@{}", header.display());
        let url = c.url(path);
        let mut args = vec!["-s", "-w", "\n%{http_code}", "-X", method, "-H", &h];
        args.extend(["-H", "Content-Type: application/json", &url]);
        if !body.is_empty() {
            args.extend(["-d", body]);
        }
        Ok(status_and_json(&c.curl(&args)?))
    };
    let (code, made) = with_key("POST", TOKENS, r#"{"persistent":true,"roles":["proxy"]}"#)?;
    assert_eq!(code, 200, "{made}");
    let by_key = made["token_id"].as_str().unwrap_or_default().to_string();

    let h = Host::new("audited-1")?;
    let r = h.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    let node = h.state()["node_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Before its first heartbeat the host shows no agent version.
    assert_eq!(admin.runner(&node)?.agent_version, None);
    let hb = h.muster(&["agent", "--count", "1"])?;
    assert_eq!(hb.code, 0, "{hb:?}");
    let version = Run::from(Command::new(bin("muster")).arg("--version").output()?);
    let version = version.stdout.split_whitespace().last().unwrap_or_default();
    assert!(!version.is_empty(), "muster --version: {version:?}");
    let runner = admin.runner(&node)?;
    assert_eq!(runner.agent_version.as_deref(), Some(version));
    assert!(runner.last_heartbeat > 0, "{runner:?}");
    let allocator = admin
        .allocators()?
        .into_iter()
        .find(|a| a.allocator_id == node);
    let status = allocator.map(|a| a.status);
    assert_eq!(
        status.as_ref().and_then(|s| s.agent_version.as_deref()),
        Some(version),
        "{status:?}"
    );

    admin.set_roles(&node, &["allocator", "proxy"], true)?;
    // A token whose signature was tampered with, refused by the coordinator: its holder acted.
    let mut forged = tok.clone();
    let last = if forged.ends_with('A') { 'B' } else { 'A' };
    forged.pop();
    forged.push(last);
    let bad = Host::new("audited-2")?.install(&c.host(), &forged, &[])?;
    assert_ne!(bad.code, 0, "{bad:?}");
    let (code, v) = with_key("DELETE", &format!("{RUNNERS}/{node}"), "")?;
    assert_eq!(code, 200, "{v}");

    let events = admin.audit()?;
    let unnamed: Vec<_> = events.iter().filter(|e| e.actor.is_none()).collect();
    assert!(unnamed.is_empty(), "events without who acted: {unnamed:?}");
    let acted = |event: &str, about: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| {
                e.event == event
                    && (e.token_id.as_deref() == Some(about) || e.node_id.as_deref() == Some(about))
            })
            .filter_map(|e| e.actor.clone())
            .collect()
    };
    let holder = format!("token:{id}");
    assert_eq!(acted("created", &id), ["user:admin"]);
    assert_eq!(acted("created", &by_key), ["api-key:bootstrap"]);
    assert_eq!(acted("used", &node), [holder.as_str()]);
    assert_eq!(acted("committed", &node), [holder.as_str()]);
    assert_eq!(acted("roles_set", &node), ["user:admin"]);
    assert_eq!(acted("host_removed", &node), ["api-key:bootstrap"]);
    let refused: Vec<_> = events.iter().filter(|e| e.event == "refused").collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].actor.as_deref(), Some(holder.as_str()));
    Ok(())
}
