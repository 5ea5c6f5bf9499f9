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
mod instructions;
mod load;
mod primitives;
mod report;
mod servers;
mod shared;
mod stepca;

use report::*;
use servers::*;

use anyhow::bail;
use clap::{Parser, Subcommand};
use load::{Load, Target};
use std::path::PathBuf;
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
    Run(RunArgs),
    /// Count the instructions per enrollment of musterd and the floors, and of each
    /// primitive, under callgrind (valgrind): a figure to judge a change by on a noisy machine.
    Instructions {
        /// Enrollments counted per server.
        #[arg(long, default_value_t = 500)]
        hosts: usize,
        /// Count only this server (muster, protocol or floor).
        #[arg(long)]
        only: Option<String>,
        /// Keep callgrind's files here (read them with callgrind_annotate).
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Time each primitive of an enrollment (used by `run` and `instructions`).
    Primitives {
        /// Runs of each.
        #[arg(long, default_value_t = 500)]
        n: usize,
        /// Wait for a line on stdin before and after each primitive's runs.
        #[arg(long)]
        step: bool,
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

#[derive(clap::Args)]
struct RunArgs {
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
    /// changes each round); ratios are medians of the per-round ratios. 15: on a shared VM one
    /// round's ratio can land anywhere in a band 0.3 wide, and the median of 7 moved by 0.1
    /// between two runs of one build.
    #[arg(long, default_value_t = 15)]
    rounds: usize,
    /// Storm only these servers (muster, muster-b, protocol, floor, cfssl or step-ca; several
    /// separated by commas): for profiling, or an A/B run of two builds alone.
    #[arg(long)]
    only: Option<String>,
    /// Leave every process free to run on any core (by default the servers get the last
    /// core and the load generator the others).
    #[arg(long)]
    no_pin: bool,
    /// Skip counting instructions under callgrind (done when valgrind is installed).
    #[arg(long)]
    no_instructions: bool,
    /// Another build of musterd to storm beside this one, as `muster-b`, in the same
    /// rounds: an A/B comparison of a change on this noisy machine.
    #[arg(long)]
    against: Option<PathBuf>,
    /// Rounds of the open-loop storms (every server in turn, in an order that changes each
    /// round): for an A/B run, whose open-loop latencies swing from one round to the next.
    /// Every round is a row of the report; the targets read the first.
    #[arg(long, default_value_t = 1)]
    fleet_rounds: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    pin(!matches!(
        cli.cmd,
        Cmd::Run(RunArgs { no_pin: true, .. })
            | Cmd::Floor { .. }
            | Cmd::Shared { .. }
            | Cmd::Primitives { .. }
    ));
    // No runtime for the primitives: their process has the threads it starts and no other.
    if let Cmd::Primitives { n, step } = cli.cmd {
        return primitives::main(n, step);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        // On a worker, as musterd serves (`block_on` would poll the accept loop on this thread).
        Cmd::Floor { listen, dir } => rt
            .block_on(rt.spawn(async move { floor::serve(listen, &dir).await }))
            .unwrap_or_else(|e| Err(e.into())),
        Cmd::Shared {
            hosts,
            at_once,
            report,
        } => rt.block_on(shared::run(hosts, at_once, report.as_deref())),
        Cmd::Run(args) => rt.block_on(run(args)),
        Cmd::Instructions { hosts, only, keep } => rt.block_on(async {
            let counts = instructions::count(hosts, only.as_deref(), keep.as_deref()).await?;
            print!("{}", instructions::summary(&counts));
            Ok(())
        }),
        Cmd::Primitives { .. } => Ok(()),
    }
}

/// What musterd names its store's threads (the SQLite writer and checkpointer).
const STORE_THREADS: &str = "muster-sqlite-";

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
    let (cpu0, sys0, sw0) = (server.cpu(), server.system(), server.switches());
    let store0 = server.cpu_of_threads(STORE_THREADS);
    let client0 = cpu_seconds("self");
    let (hs0, tk0) = (
        load::FULL_HANDSHAKES.load(Relaxed),
        load::TICKETS_DECLINED.load(Relaxed),
    );
    let run = load::storm(target, tls, load, work).await;
    let (cpu, sys) = (server.cpu() - cpu0, server.system() - sys0);
    let switches = server.switches().saturating_sub(sw0) as f64;
    let store = server.cpu_of_threads(STORE_THREADS) - store0;
    let client = cpu_seconds("self") - client0;
    let per = |x: f64| x / run.ok.max(1) as f64;
    let cores = GENERATOR_CPUS.get().copied().unwrap_or(1) as f64;
    let row = Row {
        target: server.name,
        load,
        registered,
        round,
        cpu_per: per(cpu),
        sys_per: per(sys),
        store_per: per(store),
        switches_per: per(switches),
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

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        quick,
        no_scale,
        report,
        installer,
        rounds,
        only,
        no_pin: _,
        no_instructions,
        against,
        fleet_rounds,
    } = args;
    let (report, installer, only) = (report.as_deref(), installer.as_deref(), only.as_deref());
    let (rounds, count_instructions, against) =
        (rounds.max(1), !no_instructions, against.as_deref());
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
    let (mserver, port, token) = start_musterd(&sub("muster")?, None).await?;
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
    let b = match against {
        Some(binary) => {
            let (server, port, token) = start_musterd(&sub("muster-b")?, Some(binary)).await?;
            let pins = muster_protocol::token::inspect(&token)?.pins;
            let base = format!("https://127.0.0.1:{port}");
            Some((server, Target::Muster { base, token }, load::tls(pins)?))
        }
        None => None,
    };
    let mut servers: Vec<Subject> = vec![
        (&mserver, &muster.0, &muster.1),
        (&pserver, &protocol.0, &protocol.1),
        (&fserver, &floor.0, &floor.1),
    ];
    if let Some((server, target, tls)) = &b {
        servers.push((server, target, tls));
    }
    if let Some((server, target, tls)) = &cfssl {
        servers.push((server, target, tls));
    }
    if let Some((server, target, tls)) = &step {
        servers.push((server, target, tls));
    }
    if let Some(only) = only {
        let names: Vec<&str> = only.split(',').map(str::trim).collect();
        servers.retain(|(server, _, _)| names.contains(&server.name));
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
    // on their own at half the rate musterd sustained above, then at 80 % of it, the same rate
    // for every server.
    let fleet_rates = [0.5, 0.8].map(|share| (share, fleet_rate(&rows, share)));
    for (fround, (share, rate)) in
        (1..=fleet_rounds.max(1)).flat_map(|r| fleet_rates.map(|f| (r, f)))
    {
        let load = Load::Arrivals(rate);
        for (server, target, tls) in &in_turn(&servers, fround) {
            let prefix = format!("{}-f{:.0}-{fround}", server.name, share * 100.0);
            let at = if server.name == "muster" {
                registered
            } else {
                0
            };
            let n = measure((server, target, tls), load, scale(1000, 50), at, &prefix, 0).await?;
            storm(n, &mut registered, &mut rows);
        }
    }
    // The registry at 10,000 hosts, the 1,000-concurrent storms, the registry at 100,000.
    enum Next {
        Registry(usize),
        Thousand,
        Fleets,
        InFlight(usize),
    }
    for next in [
        Next::Registry(big(10_000)),
        Next::Thousand,
        Next::Fleets,
        Next::Registry(big(100_000)),
        Next::InFlight(big(10_000)),
    ] {
        match next {
            // musterd alone: 1,000 hosts at once, each on a new connection (how long from the
            // first request to the last enrollment), then 10,000 arriving at random over 10 s.
            Next::Fleets if big(1) > 0 => {
                for (server, _, _) in servers.iter().filter(|(s, _, _)| s.name != "muster") {
                    server.stop();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                let subject = (&mserver, &muster.0, &muster.1);
                let load = Load::Concurrent(1000);
                let n = measure(subject, load, 1000, registered, "burst", 0).await?;
                storm(n, &mut registered, &mut rows);
                let load = Load::Arrivals(1000.0);
                let n = measure(subject, load, 10_000, registered, "tenk", 0).await?;
                storm(n, &mut registered, &mut rows);
            }
            // musterd's memory with 10,000 installers in flight at once, 100,000 registered.
            Next::InFlight(n) if n > 0 => {
                let subject = (&mserver, &muster.0, &muster.1);
                let load = Load::Concurrent(n);
                let n = measure(subject, load, n, registered, "inflight", 0).await?;
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
    drop((mserver, pserver, fserver, b, cfssl, step));
    // What the primitives cost alone, on the servers' core; then the instructions, under
    // callgrind (minutes, so not in a quick run or a run of one server).
    let extra = Extra {
        primitives_ms: (!quick).then(|| primitives::measure(500)).transpose()?,
        instructions: if count_instructions && !quick && only.is_none() {
            if instructions::available() {
                println!("counting instructions under callgrind");
                Some(instructions::count(500, None, None).await?)
            } else {
                println!("valgrind is not installed (apt install valgrind): no instruction counts");
                None
            }
        } else {
            None
        },
    };

    let failed: usize = rows.iter().map(|r| r.run.failed).sum();
    let summary = summarize(&rows, installer_times.as_ref(), &extra);
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
