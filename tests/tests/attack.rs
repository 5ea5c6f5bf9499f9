//! Hostile input at the coordinator itself, past the installer's own checks: forged tokens,
//! brute force from one address, slow clients and connection floods.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use muster_tests::*;
use serde_json::Value;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

type R = anyhow::Result<()>;
const TOKENS: &str = "/api/v1/platform/configuration/security/enrollment-tokens";
const JOIN: &str = "/api/v1/node/join";

/// A CSR from openssl, P-256.
fn csr(dir: &std::path::Path) -> anyhow::Result<String> {
    let key = dir.join("k.pem");
    tool(
        Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-subj", "/CN=h", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(dir.join("c.pem")),
    )?;
    Ok(std::fs::read_to_string(dir.join("c.pem"))?)
}

/// POSTs a join with `token` from `source` (a loopback address): status and error code.
fn join_as(c: &Coordinator, source: &str, token: &str, csr: &str) -> anyhow::Result<(u16, String)> {
    join_named(c, source, token, csr, "h", "allocator")
}

/// [`join_as`] for host `hostname`, asking for `role`.
fn join_named(
    c: &Coordinator,
    source: &str,
    token: &str,
    csr: &str,
    hostname: &str,
    role: &str,
) -> anyhow::Result<(u16, String)> {
    let body = serde_json::json!({
        "token": token, "transport_csr": csr, "http_csr": csr,
        "host": {"hostname": hostname}, "roles": [role],
    });
    let (status, v) = c.post_json(JOIN, &body, &["--interface", source])?;
    Ok((
        status,
        v["errors"][0]["code"].as_str().unwrap_or("-").to_string(),
    ))
}

/// `musterd token create` with the coordinator's clock moved by `shift` (libfaketime).
fn token_at(c: &Coordinator, shift: &str, extra: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("faketime");
    cmd.args(["-f", shift])
        .arg(bin("musterd"))
        .args([
            "token",
            "create",
            "--roles",
            "allocator",
            "--output",
            "json",
        ])
        .args(extra)
        .arg("--data-dir")
        .arg(c.data())
        .arg("--config")
        .arg(c.dir.path().join("server.yaml"));
    let v: Value = serde_json::from_str(&tool(&mut cmd)?)?;
    Ok(v["token"].as_str().unwrap_or_default().to_string())
}

fn b64(s: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// `header.claims` signed HS256 with `key` (by openssl): the classic key-confusion forgery,
/// keyed with what the attacker can read, here the CA certificate the coordinator serves.
fn hs256(header_claims: &str, key: &[u8], dir: &std::path::Path) -> anyhow::Result<String> {
    let input = dir.join("hs-input");
    std::fs::write(&input, header_claims)?;
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-binary", "-mac", "HMAC", "-macopt"])
        .arg(format!("hexkey:{}", hex(key)))
        .arg(&input)
        .output()?;
    anyhow::ensure!(out.status.success(), "openssl dgst: {out:?}");
    Ok(b64(&out.stdout))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn forged_tokens_at_the_server_are_each_refused_with_their_own_code_and_nothing_is_stored() -> R {
    let c = Coordinator::with(Opts {
        config: "token_failures_per_minute: 1000\n".into(),
        start: true,
        ..Opts::default()
    })?;
    let other = Coordinator::with(Opts::default())?;
    let (tok, id) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let (revoked, revoked_id) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    assert_eq!(
        c.api("DELETE", &format!("{TOKENS}/{revoked_id}"), None)?.0,
        200
    );
    let d = tempfile::tempdir()?;
    let csr = csr(d.path())?;

    let parts: Vec<&str> = tok.split('.').collect();
    let (header, claims, sig) = (parts[0], parts[1], parts[2]);
    let claims_json: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims)?)?;
    let with_claims = |f: &dyn Fn(&mut Value)| {
        let mut v = claims_json.clone();
        f(&mut v);
        b64(v.to_string().as_bytes())
    };
    let hs_header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let ca = std::fs::read(c.data().join("ca.pem"))?;
    let confused = {
        let hc = format!("{hs_header}.{claims}");
        format!("{hc}.{}", hs256(&hc, &ca, d.path())?)
    };
    let escalated = with_claims(&|v| v["roles"] = serde_json::json!(["allocator", "coordinator"]));
    let reissued = with_claims(&|v| v["iss"] = serde_json::json!("someone-else"));
    let future = token_at(&c, "+2h", &["--persistent"])?;
    let expired = token_at(&c, "-3h", &["--validity", "600"])?;

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "alg none",
            format!("{}.{claims}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
            403,
            "token.algorithm_not_allowed",
        ),
        (
            "alg switched to ES256",
            format!("{}.{claims}.{sig}", b64(br#"{"alg":"ES256","typ":"JWT"}"#)),
            403,
            "token.algorithm_not_allowed",
        ),
        (
            "HS256 keyed with the CA (key confusion)",
            confused,
            403,
            "token.algorithm_not_allowed",
        ),
        (
            "edited claims (roles)",
            format!("{header}.{escalated}.{sig}"),
            403,
            "token.bad_signature",
        ),
        (
            "edited issuer",
            format!("{header}.{reissued}.{sig}"),
            403,
            "token.bad_signature",
        ),
        (
            // 80 of its 86 characters: still base64, 60 bytes of an Ed25519 signature's 64.
            "truncated signature",
            format!("{header}.{claims}.{}", &sig[..80]),
            403,
            "token.bad_signature",
        ),
        (
            "truncated to two parts",
            format!("{header}.{claims}"),
            403,
            "token.malformed",
        ),
        (
            "oversized",
            format!("{header}.{}.{sig}", "A".repeat(9000)),
            403,
            "token.malformed",
        ),
        (
            "another platform's",
            other.secret("roles_token"),
            403,
            "token.bad_signature",
        ),
        (
            "nbf and iat two hours ahead",
            future,
            403,
            "token.not_yet_valid",
        ),
        ("expired", expired, 403, "token.expired"),
        ("revoked", revoked, 403, "token.revoked"),
    ];
    let mut seen = Vec::new();
    for (name, forged, status, code) in &cases {
        let got = join_as(&c, "127.0.0.1", forged, &csr)?;
        assert_eq!(got, (*status, code.to_string()), "{name}");
        seen.push(format!("{name}: {status} {code}"));
    }
    println!("forged tokens refused:\n  {}", seen.join("\n  "));

    // Nothing stored: no use spent, no host, and each refusal audited by its reason.
    assert_eq!(c.token_uses(&id)?, Some(0));
    let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/runners", None)?;
    assert_eq!(v["runners"].as_array().map(Vec::len), Some(0), "{v}");
    let (_, audit) = c.api("GET", &format!("{TOKENS}/_audit"), None)?;
    let refused: Vec<&str> = audit["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["event"] == "refused")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(refused.len(), cases.len(), "{audit}");
    for (name, _, _, code) in &cases {
        assert!(refused.contains(code), "{name}: {code} not audited");
    }
    // And the real token, untouched by all that, still enrolls.
    let h = Host::new("after-forgeries")?;
    assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
    Ok(())
}

#[test]
fn token_guessing_from_one_address_is_held_off_and_others_carry_on() -> R {
    let c = Coordinator::with(Opts {
        config: "token_failures_per_minute: 5\n".into(),
        start: true,
        ..Opts::default()
    })?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let d = tempfile::tempdir()?;
    let csr = csr(d.path())?;
    let forged = format!("{}x", &tok[..tok.len() - 1]);
    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(join_as(&c, "127.0.0.2", &forged, &csr)?);
    }
    let refused = answers.iter().filter(|a| a.0 == 403).count();
    let held = answers
        .iter()
        .filter(|a| *a == &(429, "token.rate_limited".to_string()))
        .count();
    println!("8 guesses from 127.0.0.2: {refused} refused (403), {held} held off (429)");
    assert_eq!((refused, held), (5, 3), "{answers:?}");
    // Held off means held off: the right token from that address waits too.
    assert_eq!(join_as(&c, "127.0.0.2", &tok, &csr)?.0, 429);
    // Another address is not affected: a host enrolls from 127.0.0.1.
    let h = Host::new("neighbour")?;
    assert_eq!(h.install(&c.host(), &tok, &[])?.code, 0);
    // A valid token asking about registered hosts by name (the refusal names the host's
    // roles) is held off the same way.
    let (weak, _) = c.token(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(join_named(
            &c,
            "127.0.0.3",
            &weak,
            &csr,
            "neighbour",
            "proxy",
        )?);
    }
    let refused = answers
        .iter()
        .filter(|a| *a == &(409, "host.replace_needs_roles".to_string()))
        .count();
    let held = answers.iter().filter(|a| a.0 == 429).count();
    assert_eq!((refused, held), (5, 3), "{answers:?}");
    Ok(())
}

/// Opens a TCP connection to `to` from loopback address `from`.
fn connect_from(from: &str, to: SocketAddr) -> anyhow::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(from.parse()?, 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

/// musterd's resident memory now and at its peak, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn slow_clients_and_connection_floods_leave_the_server_responsive() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let addr: SocketAddr = c.host().parse()?;
    let pid = c.pid().unwrap_or(0);
    let (rss0, _) = rss_kib(pid);

    // Slowloris: 300 connections from one address that send one byte of a TLS hello and stall.
    let mut slow = Vec::new();
    for _ in 0..300 {
        if let Ok(mut s) = connect_from("127.0.0.3", addr) {
            let _ = s.write_all(&[0x16]);
            slow.push(s);
        }
    }
    // A flood: 2,000 connections from 20 other addresses, opened and dropped.
    for i in 0..2000 {
        let from = format!("127.0.1.{}", 1 + i % 20);
        drop(connect_from(&from, addr));
    }
    // A client that sends its headers one byte a second after the handshake.
    let mut dribble = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "(printf 'POST {JOIN} HTTP/1.1\\r\\n'; i=0; while [ $i -lt 30 ]; do printf x; sleep 1; i=$((i+1)); done) | openssl s_client -quiet -connect {addr} >/dev/null 2>&1"
        ))
        .spawn()?;

    // Meanwhile a real host enrolls, and the API answers.
    let start = Instant::now();
    let h = Host::new("during-the-flood")?;
    let r = h.install(&c.host(), &tok, &[])?;
    let took = start.elapsed();
    assert_eq!(r.code, 0, "{r:?}\n{}", c.log());
    let (code, _) = c.api("GET", TOKENS, None)?;
    assert_eq!(code, 200);
    let (rss1, hwm) = rss_kib(pid);
    println!(
        "under 300 stalled handshakes, a 2,000-connection flood and a header dribbler: \
         enrollment took {took:?}; musterd RSS {rss0} KiB before, {rss1} KiB after, peak {hwm} KiB"
    );
    // A body larger than the limit (64 KiB) is refused by its size, and the client reads the
    // 413: one that sends the body unasked (over HTTP/2, as curl picks) and one that asks first
    // (HTTP/1.1, `Expect: 100-continue`, as curl does by itself over 1 MiB) and so never sends it.
    let big = c.dir.path().join("big.json");
    std::fs::write(&big, vec![b'x'; 200 * 1024])?;
    let data = format!("@{}", big.display());
    for how in [&[][..], &["--http1.1", "-H", "Expect: 100-continue"][..]] {
        let mut args = vec!["-sS", "-o", "/dev/null", "-w", "%{http_code}"];
        args.extend_from_slice(how);
        let url = c.url(JOIN);
        args.extend_from_slice(&[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
            &url,
        ]);
        let out = c.curl(&args)?;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "413",
            "{how:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(slow);
    let _ = dribble.kill();
    let _ = dribble.wait();
    Ok(())
}

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
    let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/runners", None)?;
    assert_eq!(v["runners"].as_array().map(Vec::len), Some(0), "{v}");
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
    let runners = || -> anyhow::Result<usize> {
        let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/runners", None)?;
        Ok(v["runners"].as_array().map(Vec::len).unwrap_or(usize::MAX))
    };
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

/// `tests/scripts/idle_clients.py`: `count` TLS connections from `source` that go quiet after
/// the handshake (and, for h2, HTTP/2's preface and SETTINGS); what the server did with them.
fn idle_clients(c: &Coordinator, source: &str, count: u32, alpn: &str) -> anyhow::Result<Value> {
    let script = muster_tests::os::repo().join("tests/scripts/idle_clients.py");
    let out = tool(
        Command::new("python3")
            .arg(script)
            .args(["127.0.0.1", &c.port.to_string(), source])
            .args([&count.to_string(), alpn, "20"]),
    )?;
    Ok(serde_json::from_str(&out)?)
}

#[test]
fn idle_connections_are_closed_and_one_source_cannot_hold_them_all() -> R {
    let c = Coordinator::with(Opts {
        config: "idle_timeout_seconds: 2\nmax_connections_per_source: 40\n".into(),
        start: true,
        ..Opts::default()
    })?;
    // Two quiet crowds at once, HTTP/1.1 from one address and HTTP/2 from another, while a
    // client from elsewhere asks for /healthz.
    let (h1, h2, healthz) = std::thread::scope(|s| {
        let h1 = s.spawn(|| idle_clients(&c, "127.0.0.4", 60, "http/1.1"));
        let h2 = s.spawn(|| idle_clients(&c, "127.0.0.5", 30, "h2"));
        std::thread::sleep(Duration::from_millis(700));
        let url = c.url("/healthz");
        let healthz = c.curl(&["-sS", "-o", "/dev/null", "-w", "%{http_code}", &url]);
        (h1.join(), h2.join(), healthz)
    });
    let h1 = h1.map_err(|_| anyhow::anyhow!("the HTTP/1.1 crowd panicked"))??;
    let h2 = h2.map_err(|_| anyhow::anyhow!("the HTTP/2 crowd panicked"))??;
    let healthz = healthz?;
    println!("quiet HTTP/1.1 crowd: {h1}; quiet HTTP/2 crowd: {h2}");
    assert_eq!(
        String::from_utf8_lossy(&healthz.stdout),
        "200",
        "{healthz:?}"
    );
    // One address holds at most its 40; the rest are closed at once.
    assert_eq!(h1["opened"], 40, "{h1}");
    assert_eq!(h1["refused"], 20, "{h1}");
    assert_eq!(h2["opened"], 30, "{h2}");
    // Every quiet connection was closed by the server, HTTP/1.1 and HTTP/2 alike.
    assert_eq!(h1["closed_by_server"], h1["opened"], "{h1}");
    assert_eq!(h2["closed_by_server"], h2["opened"], "{h2}");
    Ok(())
}

#[test]
fn an_http2_client_that_never_reads_its_downloads_cannot_grow_the_server() -> R {
    let c = Coordinator::with(Opts {
        config: format!("installer_path: {}\n", static_installer().display()),
        start: true,
        ..Opts::default()
    })?;
    let pid = c.pid().unwrap_or(0);
    let (rss0, _) = rss_kib(pid);
    let size = std::fs::metadata(static_installer())?.len();
    // 200 downloads of the installer over HTTP/2, read at one byte a second: curl multiplexes
    // them on as few connections as the server lets it, and reads next to nothing.
    let list = c.dir.path().join("downloads.curl");
    let url = c.url("/download/muster-x86_64");
    let mut cfg = String::new();
    for _ in 0..200 {
        cfg.push_str(&format!("url = \"{url}\"\noutput = \"/dev/null\"\n"));
    }
    std::fs::write(&list, cfg)?;
    let mut crowd = Command::new("curl")
        .args(["-sk", "--http2", "--parallel", "--parallel-max", "200"])
        .args(["--limit-rate", "1", "-K"])
        .arg(&list)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(4));
    let (rss1, hwm) = rss_kib(pid);
    // A host elsewhere still gets the whole installer meanwhile.
    let out = c.curl(&[
        "-sS",
        "--interface",
        "127.0.0.6",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &url,
    ])?;
    let _ = crowd.kill();
    let _ = crowd.wait();
    let got: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    assert_eq!(got, size, "{out:?}");
    println!(
        "200 unread HTTP/2 downloads of a {size}-byte installer: musterd RSS {rss0} KiB before, \
         {rss1} KiB during, peak {hwm} KiB"
    );
    // Each download held in memory whole would be 200 x the file (about 1 GiB); streamed and
    // bounded it is a few MiB. The bound asserted is far above what it takes and far below
    // the unbounded case.
    let grew = hwm.saturating_sub(rss0);
    assert!(
        grew < 128 * 1024,
        "musterd grew by {grew} KiB under unread downloads"
    );
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

/// Owner and mode of one file.
fn tree_mode(p: &std::path::Path) -> anyhow::Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p)?;
    Ok((m.uid(), m.mode() & 0o7777))
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

/// Under a low file limit (256 open files: 128 connections after what the server keeps for
/// itself), quiet crowds from two addresses cannot make `/healthz` from a third wait.
#[test]
fn under_a_low_file_limit_quiet_crowds_leave_room_for_a_real_request() -> R {
    let c = Coordinator::with(Opts {
        config: "idle_timeout_seconds: 30\n".into(),
        start: true,
        file_limit: Some(256),
        ..Opts::default()
    })?;
    let (a, b, healthz) = std::thread::scope(|s| {
        let a = s.spawn(|| idle_clients(&c, "127.0.0.6", 120, "http/1.1"));
        let b = s.spawn(|| idle_clients(&c, "127.0.0.7", 120, "h2"));
        std::thread::sleep(Duration::from_secs(3));
        let url = c.url("/healthz");
        let healthz = c.curl(&[
            "-sS",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ]);
        (a.join(), b.join(), healthz)
    });
    let a = a.map_err(|_| anyhow::anyhow!("the HTTP/1.1 crowd panicked"))??;
    let b = b.map_err(|_| anyhow::anyhow!("the HTTP/2 crowd panicked"))??;
    let healthz = healthz?;
    println!("file limit 256: HTTP/1.1 crowd {a}; HTTP/2 crowd {b}");
    assert_eq!(
        String::from_utf8_lossy(&healthz.stdout),
        "200",
        "{healthz:?}"
    );
    // Each address holds a quarter of the 128 connections; the rest are refused at once.
    assert_eq!(a["opened"], 32, "{a}");
    assert_eq!(b["opened"], 32, "{b}");
    assert!(c.log().contains("raise LimitNOFILE"), "{}", c.log());
    Ok(())
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

/// The subject alternative names of a host's transport certificate, as openssl prints them.
fn node_sans(h: &Host) -> anyhow::Result<String> {
    tool(
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(h.path("etc/muster/tls/node.crt")),
    )
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
