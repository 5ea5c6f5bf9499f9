//! Hostile input at the coordinator past the installer's own checks: revoked tokens between
//! join and commit, forged commits, names in any case, figures out of range, other hosts'
//! and coordinators' names and addresses.

use crate::common::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use muster_tests::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// The proof of a commit: an ECDSA signature over the commit message by the key `csr` left in
/// `key_dir`, base64.
fn commit_proof(key_dir: &std::path::Path, node_id: &str, psk: &str) -> anyhow::Result<String> {
    let msg = key_dir.join("msg");
    std::fs::write(&msg, muster_protocol::node::commit_message(node_id, psk))?;
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key_dir.join("k.pem"))
        .arg(&msg)
        .output()?;
    anyhow::ensure!(out.status.success(), "openssl dgst -sign");
    Ok(base64::engine::general_purpose::STANDARD.encode(out.stdout))
}

/// The addresses in an HTTP certificate, as openssl prints them (`IP Address:…`), loopback
/// and link-local left out (every host has those).
fn unique_ips(sans: &str) -> Vec<String> {
    sans.split(',')
        .filter_map(|s| s.trim().strip_prefix("IP Address:"))
        .filter(|ip| {
            let ip = ip.to_ascii_lowercase();
            !(ip.starts_with("127.")
                || ip == "0:0:0:0:0:0:0:1"
                || ip == "::1"
                || ip.starts_with("fe80"))
        })
        .map(String::from)
        .collect()
}

/// The subject alternative names of a host's transport certificate, as openssl prints them.
fn node_sans(h: &Host) -> anyhow::Result<String> {
    tool(
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(h.path("etc/muster/tls/node.crt")),
    )
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

/// A token revoked (say, found leaked) after a join it answered and before that join's commit:
/// the commit is refused with `token.revoked` and registers nothing; the reservation then
/// expires as any other.
#[test]
fn a_token_revoked_between_join_and_commit_registers_nothing() -> R {
    let c = Coordinator::start()?;
    let (tok, id) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let dir = tempfile::tempdir()?;
    let tcsr = csr(dir.path())?;
    let body = serde_json::json!({
        "token": tok, "transport_csr": tcsr, "http_csr": tcsr,
        "host": {"hostname": "late"}, "roles": ["proxy"],
    });
    let (status, bundle) = c.post_json(JOIN, &body, &[])?;
    assert_eq!(status, 200, "{bundle}");
    let node_id = bundle["node_id"].as_str().unwrap_or_default().to_string();
    let psk = bundle["psk"].as_str().unwrap_or_default().to_string();
    assert_eq!(c.api("DELETE", &format!("{TOKENS}/{id}"), None)?.0, 200);
    let proof = commit_proof(dir.path(), &node_id, &psk)?;
    let commit = serde_json::json!({"node_id": node_id, "psk": psk, "proof": proof});
    let (status, v) = c.post_json("/api/v1/node/commit", &commit, &[])?;
    assert_eq!(
        (status, v["errors"][0]["code"].as_str().unwrap_or("-")),
        (403, "token.revoked"),
        "{v}"
    );
    assert_eq!(c.admin().runners()?.len(), 0);
    Ok(())
}

#[test]
fn a_commit_without_the_psk_and_the_new_keys_signature_is_refused_and_registers_nothing() -> R {
    // The join answered (a node id and a PSK), then commits that do not prove both: the wrong
    // PSK, a proof that is not base64, a proof by another key. Each is refused with its code
    // and no host is registered; the right one registers it.
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let dir = tempfile::tempdir()?;
    let (tdir, other) = (dir.path().join("t"), dir.path().join("o"));
    std::fs::create_dir_all(&tdir)?;
    std::fs::create_dir_all(&other)?;
    let tcsr = csr(&tdir)?;
    csr(&other)?;
    let body = serde_json::json!({
        "token": tok, "transport_csr": tcsr, "http_csr": tcsr,
        "host": {"hostname": "prover"}, "roles": ["proxy"],
    });
    let (status, bundle) = c.post_json(JOIN, &body, &[])?;
    assert_eq!(status, 200, "{bundle}");
    let node_id = bundle["node_id"].as_str().unwrap_or_default().to_string();
    let psk = bundle["psk"].as_str().unwrap_or_default().to_string();
    let sign = |key_dir: &std::path::Path, psk: &str| commit_proof(key_dir, &node_id, psk);
    let runners = || -> anyhow::Result<usize> { Ok(c.admin().runners()?.len()) };
    let wrong_psk = format!("{psk}x");
    for (name, psk_sent, proof, want) in [
        (
            "wrong PSK",
            wrong_psk.as_str(),
            sign(&tdir, &wrong_psk)?,
            (403, "join.proof_invalid"),
        ),
        (
            "proof not base64",
            psk.as_str(),
            "!!not base64!!".to_string(),
            (400, "request.invalid"),
        ),
        (
            "proof by another key",
            psk.as_str(),
            sign(&other, &psk)?,
            (403, "join.proof_invalid"),
        ),
    ] {
        let commit = serde_json::json!({"node_id": node_id, "psk": psk_sent, "proof": proof});
        let (status, v) = c.post_json("/api/v1/node/commit", &commit, &[])?;
        assert_eq!(
            (status, v["errors"][0]["code"].as_str().unwrap_or("-")),
            want,
            "{name}: {v}"
        );
        assert_eq!(runners()?, 0, "{name}: nothing registered");
    }
    let commit = serde_json::json!({"node_id": node_id, "psk": psk, "proof": sign(&tdir, &psk)?});
    let (status, v) = c.post_json("/api/v1/node/commit", &commit, &[])?;
    assert_eq!(status, 200, "{v}");
    assert_eq!(runners()?, 1);
    assert!(!c.log().contains(&psk), "the PSK reached the log");
    Ok(())
}

const COMMIT: &str = muster_protocol::paths::COMMIT;

/// A connection to `c` held open by Python's `http.client` (tests/scripts/one_connection.py):
/// `post` sends a request on it and answers (status, body, the connection's local port).
struct OneConnection {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl OneConnection {
    fn open(c: &Coordinator) -> anyhow::Result<Self> {
        use std::process::Stdio;
        let mut child = Command::new("python3")
            .arg(muster_tests::os::repo().join("tests/scripts/one_connection.py"))
            .args(["127.0.0.1", c.host().rsplit(':').next().unwrap_or_default()])
            .arg(c.data().join("ca.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let lines = std::io::BufRead::lines(std::io::BufReader::new(out));
        Ok(Self { child, lines })
    }

    fn post(&mut self, path: &str, body: &Value) -> anyhow::Result<(u16, Value, u64)> {
        use std::io::Write;
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        writeln!(stdin, "{}", serde_json::json!({"path": path, "body": body}))?;
        let line = self
            .lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("the connection ended"))??;
        let v: Value = serde_json::from_str(&line)?;
        let status = v["status"].as_u64().unwrap_or_default() as u16;
        Ok((
            status,
            v["body"].clone(),
            v["port"].as_u64().unwrap_or_default(),
        ))
    }
}

impl Drop for OneConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The commit proves the joined key by the connection whose join made its reservation or, on
/// any other connection, by its signature: on that connection a proof by another key commits,
/// but the PSK is still checked and the proof must still be base64; a commit there for a join
/// made elsewhere or earlier, elsewhere for a join made there, or on the connection of a join
/// that found the reservation of an earlier join of the same key, needs the key's signature.
#[test]
fn a_commit_proves_the_key_by_the_joins_connection_or_by_its_signature() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let dir = tempfile::tempdir()?;
    let key = |name: &str| -> anyhow::Result<(std::path::PathBuf, String)> {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d)?;
        let csr = csr(&d)?;
        Ok((d, csr))
    };
    let (other, _) = key("other")?;
    let join = |hostname: &str, csr: &str| {
        serde_json::json!({
            "token": tok, "transport_csr": csr, "http_csr": csr,
            "host": {"hostname": hostname}, "roles": ["proxy"],
        })
    };
    let ids = |b: &Value| -> (String, String) {
        let s = |k: &str| b[k].as_str().unwrap_or_default().to_string();
        (s("node_id"), s("psk"))
    };
    let code = |v: &Value| v["errors"][0]["code"].as_str().unwrap_or("-").to_string();
    let commit = |node_id: &str, psk: &str, key_dir: &std::path::Path| -> anyhow::Result<Value> {
        let proof = commit_proof(key_dir, node_id, psk)?;
        Ok(serde_json::json!({"node_id": node_id, "psk": psk, "proof": proof}))
    };
    let runners = || -> anyhow::Result<usize> { Ok(c.admin().runners()?.len()) };

    // "elsewhere" joins on a connection of its own (curl).
    let (dir_e, csr_e) = key("elsewhere")?;
    let (status, b) = c.post_json(JOIN, &join("elsewhere", &csr_e), &[])?;
    assert_eq!(status, 200, "{b}");
    let (elsewhere, psk_e) = ids(&b);

    let mut conn = OneConnection::open(&c)?;
    let (dir_h, csr_h) = key("here")?;
    let (status, b, port) = conn.post(JOIN, &join("here", &csr_h))?;
    assert_eq!(status, 200, "{b}");
    let (here, psk_h) = ids(&b);
    let (dir_t, csr_t) = key("there")?;
    let (status, b, p) = conn.post(JOIN, &join("there", &csr_t))?;
    assert_eq!((status, p), (200, port), "{b}");
    let (there, psk_t) = ids(&b);

    // On the connection of "there", the last join made on it: refused with a wrong PSK (its
    // proof valid), for a join made elsewhere or earlier there (a proof by another key), and
    // with a proof that is not base64.
    let wrong_psk = format!("{psk_t}x");
    let not_base64 = serde_json::json!({"node_id": there, "psk": psk_t, "proof": "!!not base64!!"});
    for (name, body, want) in [
        (
            "wrong PSK",
            commit(&there, &wrong_psk, &dir_t)?,
            (403, "join.proof_invalid"),
        ),
        (
            "a join made elsewhere",
            commit(&elsewhere, &psk_e, &other)?,
            (403, "join.proof_invalid"),
        ),
        (
            "an earlier join on it",
            commit(&here, &psk_h, &other)?,
            (403, "join.proof_invalid"),
        ),
        ("a proof not base64", not_base64, (400, "request.invalid")),
    ] {
        let (status, v, p) = conn.post(COMMIT, &body)?;
        assert_eq!(
            (status, code(&v).as_str(), p),
            (want.0, want.1, port),
            "{name}: {v}"
        );
    }
    assert_eq!(runners()?, 0, "nothing registered");
    let (status, v, p) = conn.post(COMMIT, &commit(&there, &psk_t, &other)?)?;
    assert_eq!((status, p), (200, port), "bound by the connection: {v}");
    assert_eq!(runners()?, 1);

    // Elsewhere, "here" (joined on that connection) commits by its own key's signature only,
    // even on a connection whose join of the same CSR found its reservation.
    let (status, v) = c.post_json(COMMIT, &commit(&here, &psk_h, &other)?, &[])?;
    assert_eq!(
        (status, code(&v).as_str()),
        (403, "join.proof_invalid"),
        "{v}"
    );
    let mut again = OneConnection::open(&c)?;
    let (status, b, port_again) = again.post(JOIN, &join("here", &csr_h))?;
    assert_eq!(
        (status, ids(&b)),
        (200, (here.clone(), psk_h.clone())),
        "{b}"
    );
    let (status, v, p) = again.post(COMMIT, &commit(&here, &psk_h, &other)?)?;
    assert_eq!(
        (status, code(&v).as_str(), p),
        (403, "join.proof_invalid", port_again),
        "a reservation found, not made, there: {v}"
    );
    assert_eq!(runners()?, 1);
    for (id, psk, d) in [(&here, &psk_h, &dir_h), (&elsewhere, &psk_e, &dir_e)] {
        let (status, v) = c.post_json(COMMIT, &commit(id, psk, d)?, &[])?;
        assert_eq!(status, 200, "{v}");
    }
    assert_eq!(runners()?, 3);
    Ok(())
}

#[test]
fn a_host_name_in_another_letter_case_is_the_same_host() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let h = Host::new("alloc-1")?;
    assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
    // The role-less initial token may not take the name over in capitals either.
    let dir = tempfile::tempdir()?;
    let csr = csr(dir.path())?;
    let initial = c.secret("roles_token");
    for name in ["alloc-1", "ALLOC-1", "Alloc-1"] {
        let (status, code) = join_named(&c, "127.0.0.1", &initial, &csr, name, "allocator")?;
        assert_eq!(
            (status, code.as_str()),
            (409, "host.replace_needs_roles"),
            "{name}"
        );
    }
    let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/runners", None)?;
    let names: Vec<&str> = v["runners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["public_hostname"].as_str())
        .collect();
    assert_eq!(names, ["alloc-1"], "one host, under one name: {v}");
    // A host that calls itself MIXED-Case is known, and certified, as mixed-case.
    let (status, reserved) = c.post_json(
        JOIN,
        &serde_json::json!({
            "token": tok, "transport_csr": csr, "http_csr": csr,
            "host": {"hostname": "MIXED-Case"}, "roles": ["allocator"],
        }),
        &[],
    )?;
    assert_eq!(status, 200, "{reserved}");
    let pem = reserved["http_cert_pem"].as_str().unwrap_or_default();
    let cert = dir.path().join("http.crt");
    std::fs::write(&cert, pem)?;
    let text = tool(
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&cert),
    )?;
    assert!(
        text.contains("DNS:mixed-case") && !text.contains("MIXED"),
        "{text}"
    );
    Ok(())
}

#[test]
fn node_reported_figures_out_of_range_are_refused() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let dir = tempfile::tempdir()?;
    let csr = csr(dir.path())?;
    let (status, v) = c.post_json(
        JOIN,
        &serde_json::json!({
            "token": tok, "transport_csr": csr, "http_csr": csr,
            "host": {"hostname": "huge", "memory_mb": u64::MAX}, "roles": ["allocator"],
        }),
        &[],
    )?;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["errors"][0]["code"], "request.invalid", "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("memory_mb")),
        "{v}"
    );
    // And a heartbeat that reports 2^64-1 MiB in use is refused, the registry unchanged.
    let h = Host::new("hb")?;
    assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
    let tls = h.path("etc/muster/tls");
    let out = c.curl(&[
        "-sS",
        "--cert",
        &tls.join("node.crt").display().to_string(),
        "--key",
        &tls.join("node.key").display().to_string(),
        "-H",
        "Content-Type: application/json",
        "-d",
        &format!("{{\"memory_used_mb\":{}}}", u64::MAX),
        "-w",
        "\n%{http_code}",
        &c.url("/api/v1/node/heartbeat"),
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n400") && text.contains("memory_used_mb"),
        "{text}"
    );
    let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/allocators", None)?;
    assert_eq!(
        v["zones"][0]["allocators"][0]["capacity"]["memory"]["used"], 0,
        "{v}"
    );
    Ok(())
}

#[test]
fn an_unverified_tokens_claims_never_reach_the_audit_log() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let dir = tempfile::tempdir()?;
    let csr = csr(dir.path())?;
    // The signed part of a real token, with `sub` swapped for text meant to forge log lines.
    let parts: Vec<&str> = tok.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
    let planted = "x\n{\"event\":\"committed\",\"node_id\":\"FORGED\"}\u{1b}[31m<b>";
    claims["sub"] = Value::from(planted);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let (status, code) = join_as(&c, "127.0.0.1", &forged, &csr)?;
    assert_eq!((status, code.as_str()), (403, "token.bad_signature"));
    let (_, audit) = c.api("GET", &format!("{TOKENS}/_audit"), None)?;
    let text = audit.to_string();
    assert!(text.contains("token.bad_signature"), "{audit}");
    assert!(!text.contains("FORGED") && !text.contains("<b>"), "{audit}");
    let refused = audit["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["reason"] == "token.bad_signature");
    assert!(
        refused.is_some_and(|e| e.get("token_id").is_none_or(Value::is_null)),
        "{audit}"
    );
    assert!(!c.log().contains("FORGED"), "{}", c.log());
    Ok(())
}

/// A registered host's addresses are reserved as its name is: a second host on the same
/// addresses is certified for its own name only, while the first keeps them through a
/// renewal, and gets them back once the first host is removed.
#[test]
fn a_registered_hosts_addresses_are_not_certified_for_another_host() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let first = Host::new("first")?;
    assert_eq!(first.install(&c.host(), &tok, &[])?.code, 0);
    // The transport certificate: the HTTP one leaves out this coordinator's own addresses,
    // which, on one test machine, are every host's.
    let held = unique_ips(&node_sans(&first)?);
    assert!(
        !held.is_empty(),
        "this machine has an address of its own: {}",
        node_sans(&first)?
    );
    let second = Host::new("second")?;
    let r = second.install(&c.host(), &tok, &[])?;
    assert_eq!(r.code, 0, "{r:?}");
    let sans = node_sans(&second)?;
    assert!(sans.contains("DNS:second"), "{sans}");
    assert_eq!(
        unique_ips(&sans),
        Vec::<String>::new(),
        "none of {held:?}: {sans}"
    );
    // Checked as a client would.
    let verify = |h: &Host| {
        Command::new("openssl")
            .args(["verify", "-verify_ip", &held[0], "-CAfile"])
            .arg(h.path("etc/muster/tls/transport-ca.pem"))
            .arg(h.path("etc/muster/tls/node.crt"))
            .output()
    };
    assert!(
        verify(&first)?.status.success(),
        "the first host holds {}",
        held[0]
    );
    assert!(!verify(&second)?.status.success(), "the second does not");
    // The holder keeps its addresses through a renewal.
    assert_eq!(first.muster(&["renew"])?.code, 0);
    assert_eq!(unique_ips(&node_sans(&first)?), held);
    // Removed, the first host gives them back.
    let id = first.state()["node_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (code, _) = c.api(
        "DELETE",
        &format!("/api/v1/platform/infrastructure/runners/{id}"),
        None,
    )?;
    assert_eq!(code, 200);
    assert_eq!(second.muster(&["renew"])?.code, 0);
    assert_eq!(unique_ips(&node_sans(&second)?), held);
    Ok(())
}

/// A host an earlier version registered under an upper-case name (written into the store
/// here, as such a version left it) is filed under its lower-case name when `serve` starts,
/// so it is one identity with every later join: the role-less token cannot take it over in
/// any letter case, and the registry lists it once.
#[test]
fn a_host_registered_in_capitals_before_is_the_same_host_after_an_upgrade() -> R {
    let mut c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let h = Host::new("legacy-1")?;
    assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
    c.stop();
    let db = c.data().join("muster.db");
    tool(
        Command::new("python3")
            .arg("-c")
            .arg(
                "import json, sqlite3, sys\n\
             db = sqlite3.connect(sys.argv[1])\n\
             for node_id, text in db.execute('SELECT node_id, json FROM hosts').fetchall():\n\
             \x20   h = json.loads(text)\n\
             \x20   h['host']['hostname'] = h['host']['hostname'].upper()\n\
             \x20   db.execute('UPDATE hosts SET hostname = ?, json = ? WHERE node_id = ?',\n\
             \x20              (h['host']['hostname'], json.dumps(h), node_id))\n\
             db.commit()\n",
            )
            .arg(&db),
    )?;
    c.serve()?;
    assert_eq!(c.hostnames()?, ["legacy-1"], "filed in lower case at start");
    assert!(
        c.log().contains("host name filed in lower case"),
        "{}",
        c.log()
    );
    let dir = tempfile::tempdir()?;
    let csr = csr(dir.path())?;
    let initial = c.secret("roles_token");
    for name in ["legacy-1", "LEGACY-1"] {
        let (status, code) = join_named(&c, "127.0.0.1", &initial, &csr, name, "allocator")?;
        assert_eq!(
            (status, code.as_str()),
            (409, "host.replace_needs_roles"),
            "{name}"
        );
    }
    // The host itself carries on: its agent's heartbeat is answered.
    assert_eq!(h.muster(&["agent", "--count", "1"])?.code, 0);
    assert_eq!(c.hostnames()?, ["legacy-1"], "still one host");
    Ok(())
}
