//! Helpers more than one area uses.

use muster_tests::*;
use std::process::Command;

pub(crate) type R = anyhow::Result<()>;
pub(crate) const TOKENS: &str = "/api/v1/platform/configuration/security/enrollment-tokens";
pub(crate) const JOIN: &str = "/api/v1/node/join";
pub(crate) const RUNNERS: &str = "/api/v1/platform/infrastructure/runners";
pub(crate) const ALLOCATORS: &str = "/api/v1/platform/infrastructure/allocators";

pub(crate) fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
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

/// A CSR from openssl, P-256.
pub(crate) fn csr(dir: &std::path::Path) -> anyhow::Result<String> {
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
pub(crate) fn join_as(
    c: &Coordinator,
    source: &str,
    token: &str,
    csr: &str,
) -> anyhow::Result<(u16, String)> {
    join_named(c, source, token, csr, "h", "allocator")
}

/// [`join_as`] for host `hostname`, asking for `role`.
pub(crate) fn join_named(
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

pub(crate) fn enabled(o: &muster_tests::os::Overlay, unit: &str) -> bool {
    o.path(&format!(
        "etc/systemd/system/multi-user.target.wants/{unit}"
    ))
    .symlink_metadata()
    .is_ok()
}

/// Two coordinators serving one platform from `etcd`; both addresses go into tokens.
pub(crate) fn pair(etcd: &Etcd) -> anyhow::Result<(Coordinator, Coordinator)> {
    pair_with(etcd, "")
}

/// [`pair`] with `extra` server config lines. The first advertised address is the first
/// coordinator's: install lines name it.
pub(crate) fn pair_with(etcd: &Etcd, extra: &str) -> anyhow::Result<(Coordinator, Coordinator)> {
    let (p1, p2) = (free_port(), free_port());
    let opts = |port| Opts {
        config: format!("{}{extra}", etcd.store_config("/muster/")),
        start: true,
        port: Some(port),
        advertise: Some(format!("127.0.0.1:{p1},127.0.0.1:{p2}")),
        ..Opts::default()
    };
    let c1 = Coordinator::with(opts(p1))?;
    let c2 = Coordinator::alongside(&c1, opts(p2))?;
    Ok((c1, c2))
}
