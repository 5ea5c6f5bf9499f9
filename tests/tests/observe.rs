//! What an operator watches: `/metrics` as Prometheus' own parser reads it, the logs (JSON,
//! the access log), systemd's readiness.

use crate::common::*;
use muster_tests::*;
use serde_json::Value;
use std::process::{Command, Stdio};

/// `/metrics` read by Prometheus' own OpenMetrics parser (Python `prometheus_client`): labelled
/// counters (refusals by code, hosts by role), the join and commit latency histograms, the
/// registry's gauges and the build info, after one enrollment and one refusal.
#[test]
fn metrics_parse_as_openmetrics_with_labels_histograms_and_gauges() -> R {
    let c = Coordinator::start()?;
    let (tok, id) = c.token(r#"{"persistent":true,"roles":["allocator","proxy"]}"#)?;
    let h = Host::new("watched-1")?;
    assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
    c.admin().revoke(&id)?;
    let refused = Host::new("watched-2")?.install(&c.host(), &tok, &[])?;
    assert_eq!(refused.json()["code"], "token.revoked", "{refused:?}");
    let out = c.curl(&["-sf", "-D", "-", &c.url("/metrics")])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or(("", &text));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    // Every sample as Prometheus' parser reads it: name, labels, value.
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("metrics.txt"), body)?;
    let parsed = tool(Command::new("python3").current_dir(dir.path()).args([
        "-c",
        "import json\n\
         from prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
         out = [[s.name, s.labels, s.value] for f in p(open('metrics.txt').read()) for s in f.samples]\n\
         print(json.dumps(out))",
    ]))?;
    let samples: Vec<(String, std::collections::BTreeMap<String, String>, f64)> =
        serde_json::from_str(&parsed)?;
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
    };
    assert_eq!(value("muster_joins_total", &[]), Some(1.0));
    assert_eq!(value("muster_commits_total", &[]), Some(1.0));
    assert_eq!(
        value("muster_enrolled_total", &[("role", "allocator")]),
        Some(1.0)
    );
    assert_eq!(
        value("muster_enrolled_total", &[("role", "proxy")]),
        Some(1.0)
    );
    assert_eq!(
        value("muster_refusals_total", &[("code", "token.revoked")]),
        Some(1.0)
    );
    // Two joins answered (the enrollment's and the refused one), one commit.
    for (step, n) in [("join", 2.0), ("commit", 1.0)] {
        let count = value("muster_step_seconds_count", &[("step", step)]);
        assert_eq!(count, Some(n), "{step}");
        let inf = value(
            "muster_step_seconds_bucket",
            &[("step", step), ("le", "+Inf")],
        );
        assert_eq!(inf, Some(n), "{step}");
    }
    assert_eq!(value("muster_hosts", &[]), Some(1.0));
    assert_eq!(value("muster_hosts_connected", &[]), Some(1.0));
    let expiry = value("muster_certificate_earliest_expiry_seconds", &[]).unwrap_or(0.0);
    let not_after = c.admin().runners()?.first().map_or(0, |r| r.last_heartbeat);
    assert!(
        expiry > not_after as f64,
        "certificates expire after the enrollment: {expiry}"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value("muster_build_info", &[("version", version)]),
        Some(1.0)
    );
    Ok(())
}

/// Under systemd (`Type=notify`, as the package's unit has it), musterd says `READY=1` on
/// `NOTIFY_SOCKET` once it serves (the very next request is answered) and `STOPPING=1` when
/// it is stopped.
#[test]
fn musterd_tells_systemd_it_is_ready_once_it_serves_and_when_it_stops() -> R {
    use std::os::unix::net::UnixDatagram;
    let c = Coordinator::with(Opts::default())?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&socket)?;
    systemd.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut musterd = Command::new(bin("musterd"))
        .arg("serve")
        .arg("--data-dir")
        .arg(c.data())
        .arg("--config")
        .arg(c.data().with_file_name("server.yaml"))
        .env("NOTIFY_SOCKET", &socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut buf = [0u8; 512];
    let got = systemd.recv(&mut buf);
    let ready = got.map(|n| String::from_utf8_lossy(&buf[..n]).to_string());
    // Answered on the first try, with no wait: ready means serving.
    let health = c.curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &c.url("/healthz"),
    ]);
    // SIGTERM, as systemctl stop sends.
    tool(Command::new("kill").args(["-TERM", &musterd.id().to_string()]))?;
    let stopping = systemd
        .recv(&mut buf)
        .map(|n| String::from_utf8_lossy(&buf[..n]).to_string());
    let _ = musterd.kill();
    let _ = musterd.wait();
    assert!(
        ready
            .as_deref()
            .is_ok_and(|m| m.lines().any(|l| l == "READY=1")),
        "{ready:?}"
    );
    assert_eq!(String::from_utf8_lossy(&health?.stdout), "200");
    assert!(
        stopping
            .as_deref()
            .is_ok_and(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{stopping:?}"
    );
    Ok(())
}

/// `--log-format json`: every line musterd writes is one JSON object, and every request is in
/// the access log by its route's pattern, so a token given in a path (ECE's DELETE by the
/// token itself, or a path no route has) never reaches the log.
#[test]
fn json_logs_are_one_object_a_line_and_the_access_log_holds_no_token() -> R {
    let c = Coordinator::with(Opts::default())?;
    let log = c.data().with_file_name("json.log");
    let mut musterd = Command::new(bin("musterd"))
        .args(["serve", "--log-format", "json", "--data-dir"])
        .arg(c.data())
        .arg("--config")
        .arg(c.data().with_file_name("server.yaml"))
        .env("MUSTERD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let served = (|| -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !c.curl(&["-sf", &c.url("/healthz")])?.status.success() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "musterd did not serve"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
        let (code, v) = c.api("GET", &format!("/no/such/{tok}"), None)?;
        anyhow::ensure!(code == 404, "{code} {v}");
        let (code, v) = c.api("DELETE", &format!("{TOKENS}/{tok}"), None)?;
        anyhow::ensure!(code == 200, "{code} {v}");
        Ok(tok)
    })();
    tool(Command::new("kill").args(["-TERM", &musterd.id().to_string()]))?;
    musterd.wait()?;
    let tok = served?;
    let text = std::fs::read_to_string(&log)?;
    let mut access = vec![];
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("not a JSON line ({e}): {line}"))?;
        for field in ["timestamp", "level", "target"] {
            assert!(v[field].is_string(), "no {field}: {line}");
        }
        if v["target"] == "musterd::access" {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            access.push((s("method"), s("route"), v["status"].as_u64().unwrap_or(0)));
        }
    }
    let route = format!("{TOKENS}/{{token_id}}");
    assert!(
        access.contains(&("DELETE".into(), route, 200)),
        "{access:?}"
    );
    assert!(
        access.contains(&("GET".into(), "-".into(), 404)),
        "{access:?}"
    );
    assert!(
        access.contains(&("GET".into(), "/healthz".into(), 200)),
        "{access:?}"
    );
    let signature = tok.rsplit('.').next().unwrap_or(&tok);
    assert!(!text.contains(signature), "a token reached the log");
    Ok(())
}
