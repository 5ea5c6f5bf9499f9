//! `muster-storm`: the enrollment-storm benchmark.
//!
//! Starts a real `musterd` on the embedded store (SQLite, WAL, fsynced commits), then storms it
//! with simulated installers doing the real protocol: a new TLS connection each (from its own
//! loopback address, as separate hosts would), a real roles token, fresh keys and CSRs, join,
//! and the commit on the join's connection. The same load generator then storms four
//! references: the protocol floor and the floor (see `floor.rs`), Debian's `cfssl serve` and
//! smallstep's step-ca (`stepca.rs`). Servers run on a core of their own, the generator on the
//! others; every connection is a full TLS handshake. It prints figures and writes them to a
//! Markdown report; it asserts nothing about time.
//!
//! Run it with `scripts/bench.sh` (builds in release mode and writes docs/benchmarks.md).

mod floor;
mod installer;
mod load;
mod report;
mod shared;
mod stepca;

use report::*;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use load::{Load, Target};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "muster-storm", about = "Muster's enrollment-storm benchmark")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark and print the figures.
    Run {
        /// A small run (seconds, not minutes): checks the benchmark works; figures are rough.
        #[arg(long)]
        quick: bool,
        /// Skip the 1,000-concurrent storms and the 10,000/100,000-host registries.
        #[arg(long)]
        no_scale: bool,
        /// Also write the report here (Markdown).
        #[arg(long)]
        report: Option<PathBuf>,
        /// The static installer to time one real enrollment with.
        #[arg(long)]
        installer: Option<PathBuf>,
        /// Rounds of the 100-concurrent comparison (every server in turn, in an order that
        /// changes each round); ratios are medians of the per-round ratios.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Storm only this server (muster, protocol, floor, cfssl or step-ca): for profiling.
        #[arg(long)]
        only: Option<String>,
        /// Leave every process free to run on any core (by default the servers get the last
        /// core and the load generator the others).
        #[arg(long)]
        no_pin: bool,
    },
    /// Storm musterd on etcd (one member and three, one coordinator and two) beside SQLite,
    /// with what each enrollment cost musterd and etcd.
    Shared {
        /// Enrollments per storm.
        #[arg(long, default_value_t = 300)]
        hosts: usize,
        /// Installers in flight at once.
        #[arg(long, default_value_t = 100)]
        at_once: usize,
        /// Also write the table here (Markdown).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Serve the floor (used by `run`).
    Floor {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        dir: PathBuf,
    },
}

/// The core every stormed server is pinned to (`taskset`), when pinning.
static SERVER_CPU: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();

/// Cores the load generator runs on.
static GENERATOR_CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Gives the servers the last core and this process (the load generator, and every thread it
/// starts after this) the others, on a machine with two or more.
fn pin(enabled: bool) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server = (enabled && cores >= 2).then(|| cores - 1);
    if let Some(last) = server {
        let mut set = nix::sched::CpuSet::new();
        for c in 0..last {
            let _ = set.set(c);
        }
        if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
            eprintln!("could not pin the load generator ({e}); running unpinned");
            let _ = SERVER_CPU.set(None);
            let _ = GENERATOR_CPUS.set(cores);
            return;
        }
    }
    let _ = SERVER_CPU.set(server);
    let _ = GENERATOR_CPUS.set(server.unwrap_or(cores));
}

/// A command that starts a stormed server: on the servers' core when pinning.
fn server_command(program: &Path) -> Command {
    match SERVER_CPU.get().copied().flatten() {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    pin(!matches!(
        cli.cmd,
        Cmd::Run { no_pin: true, .. } | Cmd::Floor { .. } | Cmd::Shared { .. }
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Floor { listen, dir } => rt.block_on(floor::serve(listen, &dir)),
        Cmd::Shared {
            hosts,
            at_once,
            report,
        } => rt.block_on(shared::run(hosts, at_once, report.as_deref())),
        Cmd::Run {
            quick,
            no_scale,
            report,
            installer,
            rounds,
            only,
            no_pin: _,
        } => rt.block_on(run(
            quick,
            no_scale,
            report.as_deref(),
            installer.as_deref(),
            rounds.max(1),
            only.as_deref(),
        )),
    }
}

/// A server process under measurement: CPU time and peak RSS from /proc.
struct Server {
    child: Child,
    name: &'static str,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU seconds so far.
    fn cpu(&self) -> f64 {
        cpu_seconds(&self.pid().to_string())
    }

    /// Peak resident memory since the last reset, KiB.
    fn peak_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User plus system CPU seconds of process `pid` ("self" for this one) so far.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 of stat; after the command name, indexes 11 and 12.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A server to storm: the process, how to talk to it, and the TLS config pinned to it.
type Subject<'a> = (&'a Server, &'a Target, &'a Arc<rustls::ClientConfig>);

async fn measure(
    (server, target, tls): Subject<'_>,
    load: Load,
    n: usize,
    registered: usize,
    prefix: &str,
    round: usize,
) -> anyhow::Result<Row> {
    use std::sync::atomic::Ordering::Relaxed;
    let work = Arc::new(load::prepare(prefix, n)?);
    server.reset_peak();
    let cpu0 = server.cpu();
    let client0 = cpu_seconds("self");
    let (hs0, tk0) = (
        load::FULL_HANDSHAKES.load(Relaxed),
        load::TICKETS_DECLINED.load(Relaxed),
    );
    let run = load::storm(target, tls, load, work).await;
    let cpu = server.cpu() - cpu0;
    let client = cpu_seconds("self") - client0;
    let per = |x: f64| x / run.ok.max(1) as f64;
    let cores = GENERATOR_CPUS.get().copied().unwrap_or(1) as f64;
    let row = Row {
        target: server.name,
        load,
        registered,
        round,
        cpu_per: per(cpu),
        client_cpu_per: per(client),
        peak_mib: server.peak_kib() as f64 / 1024.0,
        handshakes_per: per((load::FULL_HANDSHAKES.load(Relaxed) - hs0) as f64),
        tickets_per: per((load::TICKETS_DECLINED.load(Relaxed) - tk0) as f64),
        generator_busy: client / run.wall.as_secs_f64().max(1e-9) / cores,
        run,
    };
    println!("{}", line(&row));
    if let Some(e) = &row.run.first_error {
        println!("    {} failed; first error: {e}", row.run.failed);
    }
    Ok(row)
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} is missing: build it next to muster-storm (scripts/bench.sh does)",
            p.display()
        );
    }
    Ok(p)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) async fn wait_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on port {port}")
}

fn tool(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into())
}

/// A coordinator on the embedded store in `dir`, and a persistent allocator token for it.
async fn start_musterd(dir: &Path) -> anyhow::Result<(Server, u16, String)> {
    let musterd = sibling("musterd")?;
    let port = free_port()?;
    let data = dir.join("musterd");
    let config = dir.join("musterd.yaml");
    std::fs::write(
        &config,
        format!("listen: 127.0.0.1:{port}\nadvertise: [\"127.0.0.1:{port}\"]\n"),
    )?;
    let base = |cmd: &mut Command| {
        cmd.arg("--data-dir")
            .arg(&data)
            .arg("--config")
            .arg(&config);
    };
    let mut init = Command::new(&musterd);
    init.args(["init", "--output", "json"]);
    base(&mut init);
    tool(&mut init)?;
    let mut create = Command::new(&musterd);
    create.args([
        "token",
        "create",
        "--persistent",
        "--roles",
        "allocator",
        "--output",
        "json",
    ]);
    base(&mut create);
    let v: serde_json::Value = serde_json::from_str(&tool(&mut create)?)?;
    let token = v["token"].as_str().unwrap_or_default().to_string();
    let mut serve = server_command(&musterd);
    serve.arg("serve");
    base(&mut serve);
    let child = serve
        .env("MUSTERD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("musterd.log"))?)
        .spawn()?;
    let server = Server {
        child,
        name: "muster",
    };
    wait_port(port).await?;
    Ok((server, port, token))
}

/// A floor server process (`muster-storm floor`); `name` tells which of its two floors it is
/// stormed as.
async fn start_floor(dir: &Path, name: &'static str) -> anyhow::Result<(Server, floor::Ready)> {
    let port = free_port()?;
    let child = server_command(&std::env::current_exe()?)
        .args(["floor", "--listen", &format!("127.0.0.1:{port}"), "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()?;
    let server = Server { child, name };
    wait_port(port).await?;
    let ready: floor::Ready = serde_json::from_slice(&std::fs::read(dir.join("ready.json"))?)?;
    Ok((server, ready))
}

/// `cfssl serve` over TLS with an authenticated signing profile, its CA made like musterd's.
async fn start_cfssl(dir: &Path) -> anyhow::Result<Option<(Server, u16, Vec<u8>, Vec<String>)>> {
    if Command::new("cfssl").arg("version").output().is_err() {
        return Ok(None);
    }
    let now = time::OffsetDateTime::now_utc();
    let ca = musterd::pki::Ca::generate("cfssl CA", now)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let leaf = musterd::pki::Leaf {
        common_name: "cfssl".into(),
        sans: vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())],
        coordinator: true,
        validity: time::Duration::days(1),
    };
    let cert = ca.sign(&key, &leaf, now)?;
    let mut auth_key = vec![0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut auth_key[..]);
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
    std::fs::write(dir.join("ca-key.pem"), ca.key_pem())?;
    std::fs::write(dir.join("tls.pem"), format!("{}{}", cert.pem, ca.cert_pem))?;
    std::fs::write(dir.join("tls-key.pem"), key.serialize_pem())?;
    let config = serde_json::json!({
        "signing": {"default": {
            "auth_key": "storm", "expiry": "2160h",
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"]
        }},
        "auth_keys": {"storm": {"type": "standard", "key": hex::encode(&auth_key)}}
    });
    std::fs::write(dir.join("config.json"), config.to_string())?;
    let port = free_port()?;
    let f = |n: &str| dir.join(n);
    let child = server_command(Path::new("cfssl"))
        .args([
            "serve",
            "-address",
            "127.0.0.1",
            "-port",
            &port.to_string(),
            "-loglevel",
            "5",
        ])
        .arg("-ca")
        .arg(f("ca.pem"))
        .arg("-ca-key")
        .arg(f("ca-key.pem"))
        .arg("-config")
        .arg(f("config.json"))
        .arg("-tls-cert")
        .arg(f("tls.pem"))
        .arg("-tls-key")
        .arg(f("tls-key.pem"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("cfssl.log"))?)
        .spawn()?;
    let server = Server {
        child,
        name: "cfssl",
    };
    wait_port(port).await?;
    Ok(Some((server, port, auth_key, vec![ca.pin()])))
}

/// The servers in the order round `round` storms them: turned by one each round and reversed
/// every other, so each server goes early and late, after each of the others.
fn in_turn<'a>(servers: &[Subject<'a>], round: usize) -> Vec<Subject<'a>> {
    let mut order = servers.to_vec();
    if !order.is_empty() {
        let turn = (round / 2) % order.len();
        order.rotate_left(turn);
    }
    if round.is_multiple_of(2) {
        order.reverse();
    }
    order
}

async fn run(
    quick: bool,
    no_scale: bool,
    report: Option<&Path>,
    installer: Option<&Path>,
    rounds: usize,
    only: Option<&str>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let scale = |full: usize, small: usize| if quick { small } else { full };
    // The large storms: skipped in a quick run and with --no-scale.
    let big = |full: usize| if quick || no_scale { 0 } else { full };
    let rounds = if quick { 1 } else { rounds };
    let started = Instant::now();
    println!("machine: {}", machine());

    // All three servers up at once (idle ones cost nothing), so the comparison storms can take
    // turns: the machine's ups and downs then fall on all three alike.
    let sub = |name: &str| -> anyhow::Result<PathBuf> {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    };
    let (mserver, port, token) = start_musterd(&sub("muster")?).await?;
    let claims = muster_protocol::token::inspect(&token)?;
    let muster = (
        Target::Muster {
            base: format!("https://127.0.0.1:{port}"),
            token: token.clone(),
        },
        load::tls(claims.pins.clone())?,
    );
    // The protocol floor: musterd's protocol on the same load-generator path, nothing stored.
    let (pserver, pready) = start_floor(&sub("protocol")?, "protocol").await?;
    let protocol = (
        Target::Muster {
            base: format!("https://127.0.0.1:{}", pready.port),
            token: pready.token.clone(),
        },
        load::tls(pready.pins.clone())?,
    );
    let (fserver, ready) = start_floor(&sub("floor")?, "floor").await?;
    let floor = (
        Target::Floor {
            base: format!("https://127.0.0.1:{}", ready.port),
            token: ready.token.clone(),
        },
        load::tls(ready.pins.clone())?,
    );
    let cfssl = match start_cfssl(&sub("cfssl")?).await? {
        Some((server, cport, key, pins)) => Some((
            server,
            Target::Cfssl {
                base: format!("https://127.0.0.1:{cport}"),
                auth_key: key,
            },
            load::tls(pins)?,
        )),
        None => {
            println!("cfssl is not installed (apt install golang-cfssl): no peer figures");
            None
        }
    };
    let step = match stepca::binary() {
        Some(bin) => {
            let d = sub("step-ca")?;
            let port = free_port()?;
            let (child, minter, root) = stepca::start(&bin, &d, port, server_command).await?;
            Some((
                Server {
                    child,
                    name: "step-ca",
                },
                Target::StepCa {
                    base: format!("https://127.0.0.1:{port}"),
                    minter: Arc::new(minter),
                },
                load::tls_to_root(root)?,
            ))
        }
        None => {
            println!("step-ca is not built (sh bench/stepca/build.sh): no step-ca figures");
            None
        }
    };
    let mut servers: Vec<Subject> = vec![
        (&mserver, &muster.0, &muster.1),
        (&pserver, &protocol.0, &protocol.1),
        (&fserver, &floor.0, &floor.1),
    ];
    if let Some((server, target, tls)) = &cfssl {
        servers.push((server, target, tls));
    }
    if let Some((server, target, tls)) = &step {
        servers.push((server, target, tls));
    }
    if let Some(only) = only {
        servers.retain(|(server, _, _)| server.name == only);
        anyhow::ensure!(!servers.is_empty(), "--only {only}: no such server here");
    }

    let mut rows = Vec::new();
    let mut registered = 0usize;
    let storm = |row: Row, registered: &mut usize, rows: &mut Vec<Row>| {
        if row.target == "muster" {
            *registered += row.run.ok;
        }
        rows.push(row);
    };
    let n = measure(
        (&mserver, &muster.0, &muster.1),
        Load::Concurrent(1),
        scale(300, 20),
        0,
        "m1",
        0,
    )
    .await?;
    storm(n, &mut registered, &mut rows);
    for round in 1..=rounds {
        for (server, target, tls) in in_turn(&servers, round) {
            let prefix = format!("{}-r{round}", server.name);
            let at = if server.name == "muster" {
                registered
            } else {
                0
            };
            let n = measure(
                (server, target, tls),
                Load::Concurrent(100),
                scale(3000, 200),
                at,
                &prefix,
                round,
            )
            .await?;
            storm(n, &mut registered, &mut rows);
        }
    }
    // A fleet booting over a while rather than a crowd always in flight: 1,000 hosts arriving
    // on their own at half the rate musterd sustained above, the same rate for every server.
    let fleet_rate = rate_of(&rows, "muster", 100)
        .or_else(|| rows.last().map(|r| r.run.rate()))
        .unwrap_or(100.0)
        * 0.5;
    for (server, target, tls) in &servers {
        let prefix = format!("{}-f", server.name);
        let at = if server.name == "muster" {
            registered
        } else {
            0
        };
        let load = Load::Arrivals(fleet_rate);
        let n = measure((server, target, tls), load, scale(1000, 50), at, &prefix, 0).await?;
        storm(n, &mut registered, &mut rows);
    }
    // The registry at 10,000 hosts, the 1,000-concurrent storms, the registry at 100,000.
    enum Next {
        Registry(usize),
        Thousand,
        Fleets,
    }
    for next in [
        Next::Registry(big(10_000)),
        Next::Thousand,
        Next::Fleets,
        Next::Registry(big(100_000)),
    ] {
        match next {
            // musterd alone: 1,000 hosts at once, each on a new connection (how long from the
            // first request to the last enrollment), then 10,000 arriving at random over 10 s.
            Next::Fleets if big(1) > 0 => {
                let subject = (&mserver, &muster.0, &muster.1);
                let load = Load::Concurrent(1000);
                let n = measure(subject, load, 1000, registered, "burst", 0).await?;
                storm(n, &mut registered, &mut rows);
                let load = Load::Arrivals(1000.0);
                let n = measure(subject, load, 10_000, registered, "tenk", 0).await?;
                storm(n, &mut registered, &mut rows);
            }
            Next::Thousand if big(1) > 0 => {
                for (server, target, tls) in &servers {
                    let prefix = format!("{}-k", server.name);
                    let at = if server.name == "muster" {
                        registered
                    } else {
                        0
                    };
                    let load = Load::Concurrent(1000);
                    let n = measure((server, target, tls), load, 6000, at, &prefix, 0).await?;
                    storm(n, &mut registered, &mut rows);
                }
            }
            Next::Registry(goal) if goal > 0 => {
                let t0 = Instant::now();
                let more = goal.saturating_sub(registered);
                let prefix = format!("fill{goal}");
                let failed = load::fill(&muster.0, &muster.1, &prefix, more, 64).await;
                registered += more - failed;
                println!(
                    "        grew the registry to {registered} hosts in {:.0} s ({failed} failed)",
                    t0.elapsed().as_secs_f64()
                );
                let prefix = format!("at{goal}");
                let subject = (&mserver, &muster.0, &muster.1);
                let load = Load::Concurrent(100);
                let n = measure(subject, load, 3000, registered, &prefix, 0).await?;
                storm(n, &mut registered, &mut rows);
            }
            _ => {}
        }
    }
    let installer_times = match installer {
        Some(p) => Some(installer::time(p, port, &token)?),
        None => None,
    };
    drop(servers);
    drop((mserver, pserver, fserver, cfssl, step));

    let failed: usize = rows.iter().map(|r| r.run.failed).sum();
    let summary = summarize(&rows, installer_times.as_ref());
    println!("{summary}");
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = report {
        std::fs::write(path, markdown(&rows, &summary, quick))?;
        println!("report written to {}", path.display());
    }
    if failed > 0 {
        bail!("{failed} enrollments failed");
    }
    Ok(())
}
