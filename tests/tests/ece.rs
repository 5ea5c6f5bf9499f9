//! ECE's API as ECE's published schema has it: error codes and their header on ECE's paths,
//! the fields ECE's answers require, its list parameters, `RunnerRolesInfo`, typed inputs,
//! and Elasticsearch's enroll-node answer as Elastic's own Python client reads it.

use crate::common::*;
use muster_tests::*;
use serde_json::{json, Value};
use std::process::Command;

/// An admin call through curl: status, the `x-cloud-error-codes` header (empty if none), body.
fn call(
    c: &Coordinator,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String, Value)> {
    let headers = c.dir.path().join(format!("headers-{}", std::process::id()));
    let url = c.url(path);
    let config = c.dir.path().join("curl-auth");
    // The password through a config file, never an argument.
    std::fs::write(&config, format!("user = \"{}\"\n", c.user_pass()))?;
    let config_s = config.display().to_string();
    let headers_s = headers.display().to_string();
    let mut args = vec![
        "-s",
        "-K",
        &config_s,
        "-D",
        &headers_s,
        "-w",
        "\n%{http_code}",
        "-X",
        method,
        "-H",
        "Content-Type: application/json",
    ];
    if let Some(b) = body {
        args.extend(["--data-binary", b]);
    }
    args.push(&url);
    let out = c.curl(&args)?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let head = std::fs::read_to_string(&headers).unwrap_or_default();
    let codes = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-cloud-error-codes")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((
        code.trim().parse()?,
        codes,
        serde_json::from_str(body).unwrap_or(Value::Null),
    ))
}

fn code_of(v: &Value) -> &str {
    v["errors"][0]["code"].as_str().unwrap_or("")
}

/// Every field ECE's `AllocatorInfo` and `RunnerInfo` require, of the type it gives.
fn assert_has(v: &Value, fields: &[(&str, &str)], what: &str) {
    for (f, ty) in fields {
        let x = &v[*f];
        let ok = match *ty {
            "string" => x.is_string(),
            "bool" => x.is_boolean(),
            "array" => x.is_array(),
            "object" => x.is_object(),
            "integer" => x.is_u64(),
            _ => false,
        };
        assert!(ok, "{what}: {f} should be a {ty}: {v}");
    }
}

#[test]
fn ece_paths_answer_ece_error_codes_in_the_body_and_the_header() -> R {
    let c = Coordinator::start()?;
    let cases: Vec<(&str, String, Option<&str>, u16, &str)> = vec![
        (
            "POST",
            TOKENS.into(),
            Some(r#"{"persistent":true,"roles":["wizard"]}"#),
            400,
            "enrollment_tokens.invalid_token_request",
        ),
        (
            "POST",
            TOKENS.into(),
            Some(r#"{"roles":["proxy"]}"#),
            400,
            "enrollment_tokens.invalid_token_request",
        ),
        (
            "POST",
            TOKENS.into(),
            Some("not json"),
            400,
            "enrollment_tokens.invalid_token_request",
        ),
        (
            "POST",
            format!("{TOKENS}?install_command=maybe"),
            Some(r#"{"persistent":true}"#),
            400,
            "enrollment_tokens.invalid_token_request",
        ),
        (
            "DELETE",
            format!("{TOKENS}/no-such-token"),
            None,
            404,
            "enrollment_tokens.invalid_token_id",
        ),
        (
            "GET",
            format!("{RUNNERS}/no-such-runner"),
            None,
            404,
            "runners.runner_not_found",
        ),
        (
            "DELETE",
            format!("{RUNNERS}/no-such-runner"),
            None,
            404,
            "runners.runner_not_found",
        ),
        (
            "PUT",
            format!("{RUNNERS}/no-such-runner/roles"),
            Some(r#"{"roles":[{"role_name":"proxy"}]}"#),
            404,
            "runners.runner_not_found",
        ),
        (
            "PUT",
            format!("{RUNNERS}/no-such-runner/roles"),
            Some(r#"{"roles":[{"role_name":"wizard"}]}"#),
            400,
            "runners.runner_set_roles_failed",
        ),
        (
            "PUT",
            format!("{RUNNERS}/no-such-runner/roles"),
            Some(r#"{"roles":"proxy"}"#),
            400,
            "runners.runner_set_roles_failed",
        ),
        // Muster's own paths keep Muster's codes.
        (
            "POST",
            "/api/v1/node/join".into(),
            Some("{}"),
            400,
            "request.invalid",
        ),
        (
            "GET",
            "/api/v1/no/such/path".into(),
            None,
            404,
            "request.not_found",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, header, v) = call(&c, method, &path, body)?;
        assert_eq!(
            (got, code_of(&v)),
            (status, code),
            "{method} {path} {body:?}: {v}"
        );
        assert_eq!(
            header, code,
            "{method} {path}: the header names the code too"
        );
        assert!(
            v["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    // The finer reason stays readable in the message.
    let (_, _, v) = call(
        &c,
        "POST",
        TOKENS,
        Some(r#"{"persistent":true,"roles":["wizard"]}"#),
    )?;
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("roles.unknown"),
        "{v}"
    );
    Ok(())
}

#[test]
fn a_token_is_deleted_by_itself_or_by_its_id() -> R {
    let c = Coordinator::start()?;
    let (tok, id) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let (tok2, id2) = c.token(r#"{"persistent":false,"roles":["proxy"]}"#)?;
    // A token of the right shape that is not this one is not known, nor is a forged one.
    let mut forged = tok.clone();
    forged.pop();
    forged.push(if tok.ends_with('A') { 'B' } else { 'A' });
    let (code, _, v) = call(&c, "DELETE", &format!("{TOKENS}/{forged}"), None)?;
    assert_eq!(
        (code, code_of(&v)),
        (404, "enrollment_tokens.invalid_token_id"),
        "{v}"
    );
    let (code, _, v) = call(&c, "DELETE", &format!("{TOKENS}/{tok}"), None)?;
    assert_eq!((code, v.clone()), (200, json!({})), "{v}");
    let (code, _, v) = call(&c, "DELETE", &format!("{TOKENS}/{id2}"), None)?;
    assert_eq!((code, v.clone()), (200, json!({})), "{v}");
    let (_, list) = c.api("GET", TOKENS, None)?;
    let live: Vec<&str> = list["tokens"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["token_id"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !live.contains(&id.as_str()) && !live.contains(&id2.as_str()),
        "{list}"
    );
    // Deleted is deleted, by either name.
    for gone in [&tok, &id, &tok2] {
        let (code, _, v) = call(&c, "DELETE", &format!("{TOKENS}/{gone}"), None)?;
        assert_eq!(
            (code, code_of(&v)),
            (404, "enrollment_tokens.invalid_token_id"),
            "{v}"
        );
    }
    let h = Host::new("late")?;
    assert_ne!(
        h.install(&c.host(), &tok, &[])?.code,
        0,
        "the deleted token enrolls nothing"
    );
    // The emergency token stays, by either name.
    let em = c.secret("emergency_token");
    let (code, _, v) = call(&c, "DELETE", &format!("{TOKENS}/{em}"), None)?;
    assert_eq!((code, code_of(&v)), (409, "token.not_deletable"), "{v}");
    Ok(())
}

#[test]
fn allocators_and_runners_carry_every_field_ece_requires_and_honour_its_list_parameters() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator","proxy"]}"#)?;
    for (name, zone, roles) in [
        ("alloc-b", "zone-2", "allocator"),
        ("alloc-a", "zone-1", "allocator"),
        ("alloc-c", "zone-1", "allocator,proxy"),
        ("proxy-1", "zone-1", "proxy"),
    ] {
        let r = Host::new(name)?.install(
            &c.host(),
            &tok,
            &["--availability-zone", zone, "--roles", roles],
        )?;
        assert_eq!(r.code, 0, "{name}: {r:?}");
    }
    let (code, v) = c.api("GET", ALLOCATORS, None)?;
    assert_eq!(code, 200, "{v}");
    let zones = v["zones"].as_array().cloned().unwrap_or_default();
    assert_eq!(zones.len(), 2, "{v}");
    let mut names = vec![];
    for z in &zones {
        assert_has(z, &[("zone_id", "string"), ("allocators", "array")], "zone");
        for a in z["allocators"].as_array().into_iter().flatten() {
            assert_has(
                a,
                &[
                    ("allocator_id", "string"),
                    ("zone_id", "string"),
                    ("host_ip", "string"),
                    ("public_hostname", "string"),
                    ("capacity", "object"),
                    ("status", "object"),
                    ("settings", "object"),
                    ("instances", "array"),
                    ("metadata", "array"),
                    ("features", "array"),
                    ("external_links", "array"),
                ],
                "allocator",
            );
            assert_eq!(a["zone_id"], z["zone_id"], "{a}");
            assert_has(
                &a["capacity"]["memory"],
                &[("total", "integer"), ("used", "integer")],
                "memory",
            );
            assert_has(
                &a["capacity"]["storage"],
                &[("total", "integer")],
                "storage",
            );
            assert_has(
                &a["status"],
                &[
                    ("connected", "bool"),
                    ("healthy", "bool"),
                    ("maintenance_mode", "bool"),
                ],
                "status",
            );
            names.push(a["public_hostname"].as_str().unwrap_or("").to_string());
        }
    }
    assert_eq!(names.len(), 3, "three allocators: {v}");

    let hostnames = |v: &Value| -> Vec<String> {
        v["zones"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|z| z["allocators"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["public_hostname"].as_str().map(String::from))
            .collect()
    };
    let get = |query: &str| -> anyhow::Result<(u16, Value)> {
        let (code, _, v) = call(&c, "GET", &format!("{ALLOCATORS}?{query}"), None)?;
        Ok((code, v))
    };
    let (code, v) = get("q=zone_id:zone-1")?;
    assert_eq!(code, 200, "{v}");
    let mut got = hostnames(&v);
    got.sort();
    assert_eq!(got, ["alloc-a", "alloc-c"], "{v}");
    let (_, v) = get("q=public_hostname:alloc-*%20AND%20NOT%20zone_id:zone-1")?;
    assert_eq!(hostnames(&v), ["alloc-b"], "{v}");
    let (_, v) = get("q=status.connected:true%20AND%20capacity.memory.total:%3E0")?;
    assert_eq!(hostnames(&v).len(), 3, "{v}");
    // Sorted, then grouped by zone in the order their first allocator comes.
    let (_, v) = get("sort=public_hostname:desc")?;
    assert_eq!(hostnames(&v), ["alloc-c", "alloc-a", "alloc-b"], "{v}");
    let (_, v) = get("sort=public_hostname")?;
    assert_eq!(hostnames(&v), ["alloc-a", "alloc-c", "alloc-b"], "{v}");
    let (_, v) = get("sort=public_hostname&from=1&size=1")?;
    assert_eq!(hostnames(&v), ["alloc-b"], "{v}");
    let (_, v) = get("size=0")?;
    assert_eq!(v, json!({"zones": []}));
    for bad in [
        "size=-1",
        "size=abc",
        "size=null",
        "from=-3",
        "size=10001",
        "q=no_such_field:x",
        "q=capacity.memory.total:%3Eten",
        "sort=no_such_field",
        "sort=public_hostname:sideways",
        "unknown_parameter=1",
    ] {
        let (code, v) = get(bad)?;
        assert_eq!((code, code_of(&v)), (400, "request.invalid"), "{bad}: {v}");
        assert!(
            v["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{bad}: {v}"
        );
    }

    let (code, v) = c.api("GET", RUNNERS, None)?;
    assert_eq!(code, 200, "{v}");
    let runners = v["runners"].as_array().cloned().unwrap_or_default();
    assert_eq!(runners.len(), 4, "{v}");
    for r in &runners {
        assert_has(
            r,
            &[
                ("runner_id", "string"),
                ("public_hostname", "string"),
                ("host_ip", "string"),
                ("connected", "bool"),
                ("healthy", "bool"),
                ("containers", "array"),
                ("roles", "array"),
            ],
            "runner",
        );
        // One runner by its id is the same runner.
        let id = r["runner_id"].as_str().unwrap_or("");
        let (code, one) = c.api("GET", &format!("{RUNNERS}/{id}"), None)?;
        assert_eq!((code, &one), (200, r), "GET runner {id}");
    }
    let (code, _, v) = call(
        &c,
        "GET",
        &format!("{RUNNERS}?q=roles.role_name:proxy"),
        None,
    )?;
    assert_eq!(code, 200, "{v}");
    let mut got: Vec<&str> = v["runners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["public_hostname"].as_str())
        .collect();
    got.sort();
    assert_eq!(got, ["alloc-c", "proxy-1"], "{v}");
    let (code, _, v) = call(&c, "GET", &format!("{RUNNERS}?q=nothing:here"), None)?;
    assert_eq!((code, code_of(&v)), (400, "request.invalid"), "{v}");
    Ok(())
}

#[test]
fn runner_roles_take_and_answer_ece_runner_roles_info_and_bless() -> R {
    let c = Coordinator::start()?;
    let h = Host::new("waiting")?;
    let r = h.install(
        &c.host(),
        &c.secret("roles_token"),
        &["--roles", "allocator,proxy"],
    )?;
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.json()["node_id"].as_str().unwrap_or_default().to_string();
    let roles = format!("{RUNNERS}/{id}/roles");
    let runner = |c: &Coordinator| -> anyhow::Result<Value> {
        Ok(c.api("GET", &format!("{RUNNERS}/{id}"), None)?.1)
    };

    // Not blessed: nothing granted, what was asked waits.
    let (code, _, v) = call(
        &c,
        "PUT",
        &format!("{roles}?bless=false"),
        Some(r#"{"roles":[{"role_name":"proxy"}]}"#),
    )?;
    assert_eq!((code, v.clone()), (200, json!({"roles": []})), "{v}");
    let r = runner(&c)?;
    assert_eq!(
        (r["roles"].clone(), r["pending_roles"].clone()),
        (json!([]), json!(["proxy"])),
        "{r}"
    );
    // Blessed: granted, and no longer waiting.
    let (code, _, v) = call(
        &c,
        "PUT",
        &format!("{roles}?bless=true"),
        Some(r#"{"roles":[{"role_name":"proxy"},{"role_name":"allocator"}]}"#),
    )?;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v,
        json!({"roles": [{"role_name": "allocator"}, {"role_name": "proxy"}]})
    );
    let r = runner(&c)?;
    assert_eq!(
        r["roles"],
        json!([{"role_name": "allocator"}, {"role_name": "proxy"}]),
        "{r}"
    );
    assert_eq!(r["pending_roles"], json!([]), "{r}");
    // bless=false over granted roles keeps only those listed.
    let (_, _, v) = call(
        &c,
        "PUT",
        &format!("{roles}?bless=false"),
        Some(r#"{"roles":[{"role_name":"proxy"}]}"#),
    )?;
    assert_eq!(v, json!({"roles": [{"role_name": "proxy"}]}));
    // Without bless, as Muster always did: granted. The bare-name form is still taken.
    let (code, _, v) = call(&c, "PUT", &roles, Some(r#"{"roles":["allocator"]}"#))?;
    assert_eq!(
        (code, v.clone()),
        (200, json!({"roles": [{"role_name": "allocator"}]})),
        "{v}"
    );
    for (query, body) in [
        ("?bless=notabool", r#"{"roles":[{"role_name":"proxy"}]}"#),
        ("?bless=null", r#"{"roles":[{"role_name":"proxy"}]}"#),
        ("", r#"{"roles":null}"#),
        ("", r#"{"roles":[{"role_name":null}]}"#),
        ("", r#"{"roles":[{"role_name":"proxy"}],"other":1}"#),
    ] {
        let (code, header, v) = call(&c, "PUT", &format!("{roles}{query}"), Some(body))?;
        assert_eq!(
            (code, code_of(&v)),
            (400, "runners.runner_set_roles_failed"),
            "{query} {body}: {v}"
        );
        assert_eq!(header, "runners.runner_set_roles_failed");
    }
    assert_eq!(
        runner(&c)?["roles"],
        json!([{"role_name": "allocator"}]),
        "refusals change nothing"
    );
    Ok(())
}

#[test]
fn null_where_the_schema_wants_a_value_is_refused_and_makes_no_token() -> R {
    let c = Coordinator::start()?;
    let (_, before) = c.api("GET", TOKENS, None)?;
    for body in [
        r#"{"persistent":false,"roles":["proxy"],"validity_in_seconds":null}"#,
        r#"{"persistent":null,"roles":["proxy"]}"#,
        r#"{"persistent":true,"roles":null}"#,
        r#"{"persistent":true,"roles":[null]}"#,
        r#"{"persistent":true,"roles":["proxy"],"max_uses":null}"#,
        r#"{"persistent":true,"roles":["proxy"],"allowed_sources":null}"#,
        r#"{"persistent":"true","roles":["proxy"]}"#,
        r#"{"persistent":false,"validity_in_seconds":"60"}"#,
        r#"{"persistent":false,"validity_in_seconds":-1}"#,
    ] {
        let (code, _, v) = call(&c, "POST", TOKENS, Some(body))?;
        assert_eq!(
            (code, code_of(&v)),
            (400, "enrollment_tokens.invalid_token_request"),
            "{body}: {v}"
        );
    }
    let (_, after) = c.api("GET", TOKENS, None)?;
    assert_eq!(before, after, "no token was made");
    Ok(())
}

/// Elastic's official Python client (`elasticsearch` from PyPI, installed by the test
/// command) calls `security.enroll_node()` and takes the answer as Elasticsearch's: the
/// product header is there, the keys and certificates load, and `nodes_addresses` lists the
/// transport addresses of the hosts already enrolled.
#[test]
fn elastics_python_client_enrolls_a_node() -> R {
    let c = Coordinator::with(Opts {
        config: "es_enroll_node: true\n".into(),
        start: true,
        ..Opts::default()
    })?;
    let script = os::repo().join("tests/scripts/es_enroll_node.py");
    let run = |c: &Coordinator| -> anyhow::Result<Value> {
        let out = Command::new("python3")
            .arg(&script)
            .arg(c.url(""))
            .arg(c.data().join("ca.pem"))
            .env("MUSTER_ADMIN_PASSWORD", c.secret("admin_password"))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let v = run(&c)?;
    assert_eq!(v["nodes_addresses"], json!([]), "no host yet: {v}");
    assert_eq!(v["product_header"], "Elasticsearch", "{v}");
    assert_eq!(
        v["loaded"],
        json!([
            "http_ca_cert",
            "http_ca_key",
            "transport_ca_cert",
            "transport_cert",
            "transport_key"
        ]),
        "{v}"
    );
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let h = Host::new("es-node-1")?;
    assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
    let (_, runners) = c.api("GET", RUNNERS, None)?;
    let ip = runners["runners"][0]["host_ip"].as_str().map(String::from);
    let v = run(&c)?;
    let addrs = v["nodes_addresses"].as_array().cloned().unwrap_or_default();
    assert_eq!(addrs.len(), 1, "{v}");
    let a = addrs[0].as_str().unwrap_or("");
    assert!(a.ends_with(":9300"), "a transport address: {v}");
    if let Some(ip) = ip {
        assert!(a.contains(&ip), "{a} is {ip}'s");
    }
    Ok(())
}

/// schemathesis (from PyPI, installed by the test command) against a live musterd, with the
/// OpenAPI document musterd serves, in a config whose login and token limits let a fuzzer
/// through (tests/schemathesis.toml says what fails the run). The document served is the one
/// in the repository.
#[test]
fn the_api_answers_as_its_openapi_document_says() -> R {
    let c = Coordinator::with(Opts {
        config: "login_failures_per_minute: 1000000\ntoken_failures_per_minute: 1000000\nes_enroll_node: true\n".into(),
        start: true,
        ..Opts::default()
    })?;
    let served = c.curl(&["-sf", &c.url("/api/v1/openapi.yaml")])?;
    assert!(served.status.success(), "{served:?}");
    let kept = std::fs::read(os::repo().join("docs/openapi.yaml"))?;
    assert!(
        served.stdout == kept,
        "musterd serves docs/openapi.yaml as it is"
    );

    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let h = Host::new("fuzzed")?;
    let r = h.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    let runner = r.json()["node_id"].as_str().unwrap_or_default().to_string();

    let work = tempfile::tempdir()?;
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
            "--config-file",
        ])
        .arg(os::repo().join("tests/schemathesis.toml"))
        .arg("run")
        .arg(c.url("/api/v1/openapi.yaml"))
        .current_dir(work.path())
        .env("MUSTER_URL", c.url(""))
        .env("MUSTER_CA", c.data().join("ca.pem"))
        .env("MUSTER_ADMIN_PASSWORD", c.secret("admin_password"))
        .env("MUSTER_RUNNER_ID", &runner)
        .env("NO_COLOR", "1")
        .output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("generated") || l.contains("Selected") || l.contains("Tested"))
        .collect();
    println!("schemathesis: {}", summary.join("; "));
    assert!(
        out.status.success(),
        "schemathesis found answers the document does not describe:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every operation in the document was selected and tested.
    let figure = |label: &str| -> Option<String> {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
    };
    let selected = figure("Selected:").unwrap_or_default();
    let tested = figure("Tested:").unwrap_or_default();
    let (picked, all) = selected.split_once('/').unwrap_or(("", "?"));
    assert!(
        picked == all && tested == all && all.parse::<u32>().is_ok_and(|n| n >= 20),
        "every operation tested: selected {selected}, tested {tested}:\n{report}"
    );
    Ok(())
}
