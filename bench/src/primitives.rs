//! The cryptographic primitives of an enrollment, each alone, from the same build as the
//! servers: what no server of this protocol can avoid. `muster-storm primitives` runs each
//! many times on one thread and prints what one costs; `run` starts it on the servers' core and
//! sets the sum of an enrollment's primitives beside each server's measured CPU
//! (efficiency = primitives ÷ measured), `instructions` under callgrind for their instructions.
//!
//! - handshake: the server's side of one full TLS 1.3 handshake, with musterd's provider and
//!   tuning and a P-256 serving key (as musterd and the floors serve), the client's side not
//!   counted;
//! - token: one roles-token verification (EdDSA signature and claims);
//! - csr: one CSR check (parse, the SAN rules, the P-256 signature);
//! - signature: one certificate issued from a P-256 CA;
//! - proof: one proof of possession checked at a commit that comes on a connection other than
//!   its join's (a P-256 signature);
//! - handshake-certreq: the handshake as musterd's listener makes it, asking for a client
//!   certificate (enrolled nodes present one there; an installer answers with none).

use anyhow::Context;
use muster::install::Key;
use muster_protocol::node::commit_message;
use muster_protocol::token;
use musterd::pki::{self, Ca, Leaf};
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The primitives, in the order they run and print.
pub const NAMES: [&str; 6] = [
    "handshake",
    "token",
    "csr",
    "signature",
    "proof",
    "handshake-certreq",
];

/// How many of each primitive an enrollment costs each kind of server. musterd and the
/// protocol floor check a token's signature once per token, not per enrollment, and a
/// commit's proof only when it does not ride its join's connection (the storm's never do).
/// musterd's listener asks every connection for a client certificate; the floors do not.
pub fn per_enrollment(server: &str) -> Option<[f64; 6]> {
    match server {
        "muster" => Some([0.0, 0.0, 2.0, 2.0, 0.0, 1.0]),
        "protocol" => Some([1.0, 0.0, 2.0, 2.0, 0.0, 0.0]),
        "floor" => Some([1.0, 1.0, 1.0, 1.0, 0.0, 0.0]),
        _ => None,
    }
}

/// What one enrollment's primitives cost, from per-primitive costs in [`NAMES`] order.
pub fn enrollment_cost(server: &str, each: &[f64]) -> Option<f64> {
    let n = per_enrollment(server)?;
    Some(n.iter().zip(each).map(|(n, c)| n * c).sum())
}

/// Everything the primitives need, made once.
struct Bench {
    server_tls: Arc<rustls::ServerConfig>,
    /// As musterd's listener: client certificates of its transport CA asked for, not required.
    certreq_tls: Arc<rustls::ServerConfig>,
    client_tls: Arc<rustls::ClientConfig>,
    token: String,
    verify_key: Vec<u8>,
    csr: String,
    ca: Ca,
    /// The checked CSR's key, certified again and again by the signature primitive.
    csr_key: pki::CsrKey,
    spki: Vec<u8>,
    message: Vec<u8>,
    proof: Vec<u8>,
}

impl Bench {
    fn new() -> anyhow::Result<Bench> {
        let now = time::OffsetDateTime::now_utc();
        let ca = Ca::generate("Muster primitives CA", now)?;
        let (chain, key) = crate::floor::serving_cert(&ca, "primitives", now)?;
        let server = crate::floor::tls_config(chain.clone(), key.clone_key())?;
        // musterd's listener config, which asks for client certificates of its transport CA.
        let provider = musterd::serve::tls_provider();
        let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider)?;
        let certreq = musterd::tls::listener_config(
            &ca.cert_der,
            Arc::new(rustls::sign::SingleCertAndKey::from(certified)),
        )?;
        let (tok, verify_key) = crate::floor::roles_token("primitives", &ca, now)?;

        let host = Key::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
        let csr = host
            .csr("primitives-host", &[])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let checked = pki::check_csr(&csr, &pki::host_sans("primitives-host", &[]))?;
        let message = commit_message("0190c2f4-0000-7000-8000-000000000000", "psk");
        let proof = host.sign(&message).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Bench {
            server_tls: Arc::new(server),
            certreq_tls: Arc::new(certreq),
            client_tls: crate::load::tls(vec![ca.pin()])?,
            token: tok,
            verify_key,
            csr,
            ca,
            spki: checked.spki_der,
            csr_key: checked.public_key,
            message,
            proof,
        })
    }

    /// Runs primitive `name` once, its server-side work on `server`'s thread; the time that
    /// work took.
    fn once(self: &Arc<Self>, name: &str, server: &ServerThread) -> anyhow::Result<Duration> {
        let tls = match name {
            "handshake" => &self.server_tls,
            "handshake-certreq" => &self.certreq_tls,
            _ => {
                let (bench, name) = (self.clone(), name.to_string());
                return server.run(move || {
                    let t0 = Instant::now();
                    bench.alone(&name)?;
                    Ok(t0.elapsed())
                })?;
            }
        };
        self.handshake(tls, server)
    }

    /// A primitive that needs no client: token, csr, signature, proof.
    fn alone(&self, name: &str) -> anyhow::Result<()> {
        match name {
            "token" => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
                token::verify(&self.token, &self.verify_key, now)?;
            }
            "csr" => {
                pki::check_csr(&self.csr, &pki::host_sans("primitives-host", &[]))?;
            }
            "signature" => {
                let leaf = Leaf {
                    common_name: "primitives-host".into(),
                    sans: vec![],
                    coordinator: false,
                    validity: time::Duration::days(90),
                };
                self.ca
                    .sign(&self.csr_key, &leaf, time::OffsetDateTime::now_utc())?;
            }
            "proof" => {
                anyhow::ensure!(
                    pki::verify_proof(&self.spki, &self.message, &self.proof),
                    "the proof of possession does not verify"
                );
            }
            other => anyhow::bail!("no primitive {other}"),
        }
        Ok(())
    }

    /// One full handshake in memory: the client's side here, the server's on `thread`, where
    /// it alone is timed.
    fn handshake(
        &self,
        config: &Arc<rustls::ServerConfig>,
        thread: &ServerThread,
    ) -> anyhow::Result<Duration> {
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
        let mut client = rustls::ClientConnection::new(self.client_tls.clone(), name)?;
        let mut server = Some(rustls::ServerConnection::new(config.clone())?);
        let mut spent = Duration::ZERO;
        for _ in 0..10 {
            let mut to_server = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut to_server)?;
            }
            let mut conn = server.take().context("the server connection was lost")?;
            let (conn, to_client, took) = thread.run(move || {
                let t0 = Instant::now();
                if !to_server.is_empty() {
                    conn.read_tls(&mut &to_server[..])?;
                    conn.process_new_packets()?;
                }
                let mut to_client = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut to_client)?;
                }
                anyhow::Ok((conn, to_client, t0.elapsed()))
            })??;
            spent += took;
            if !to_client.is_empty() {
                client.read_tls(&mut &to_client[..])?;
                client.process_new_packets()?;
            }
            let done = !client.is_handshaking() && !conn.is_handshaking() && !client.wants_write();
            server = Some(conn);
            if done {
                return Ok(spent);
            }
        }
        anyhow::bail!("the handshake did not finish")
    }
}

/// The thread every server-side step runs on, apart from the client's: callgrind counts each
/// thread apart (`--separate-threads=yes`), so a primitive's server work is counted alone.
struct ServerThread {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl ServerThread {
    fn start() -> anyhow::Result<ServerThread> {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("server".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    job();
                }
            })?;
        Ok(ServerThread { jobs })
    }

    /// Runs `f` on the server thread; what it returned.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| anyhow::anyhow!("the server thread stopped"))?;
        rx.recv().context("the server thread stopped")
    }
}

/// `muster-storm primitives`: `n` of each primitive; prints one JSON object of milliseconds per
/// primitive. With `step`, waits for a line on stdin before and after each primitive's runs
/// (saying `ready NAME` and `done NAME`), so a caller can count their instructions alone.
pub fn main(n: usize, step: bool) -> anyhow::Result<()> {
    let bench = Arc::new(Bench::new()?);
    let server = ServerThread::start()?;
    let mut out = std::io::stdout().lock();
    let mut lines = std::io::stdin().lock().lines();
    let mut wait = |what: &str, name: &str, out: &mut std::io::StdoutLock| -> anyhow::Result<()> {
        if step {
            writeln!(out, "{what} {name}")?;
            out.flush()?;
            lines.next().context("the caller went away")??;
        }
        Ok(())
    };
    let mut costs = serde_json::Map::new();
    for name in NAMES {
        // A few unmeasured first: caches, lazy tables.
        for _ in 0..n.min(10) {
            bench.once(name, &server)?;
        }
        wait("ready", name, &mut out)?;
        let mut total = Duration::ZERO;
        for _ in 0..n {
            total += bench.once(name, &server)?;
        }
        wait("done", name, &mut out)?;
        let ms = total.as_secs_f64() * 1000.0 / n.max(1) as f64;
        costs.insert(name.into(), ms.into());
    }
    writeln!(out, "{}", serde_json::Value::Object(costs))?;
    Ok(())
}

/// Per-primitive milliseconds, [`NAMES`] order, from `muster-storm primitives` run on the
/// servers' core.
pub fn measure(n: usize) -> anyhow::Result<Vec<f64>> {
    let out = crate::server_command(&std::env::current_exe()?)
        .args(["primitives", "--n", &n.to_string()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "muster-storm primitives: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(NAMES.iter().map(|n| v[n].as_f64().unwrap_or(0.0)).collect())
}
