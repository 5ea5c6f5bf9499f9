//! Instructions per enrollment, counted by callgrind: a figure that stays the same on a busy
//! machine, so a change can be judged by it (this VM has no hardware counters for
//! `perf stat -e instructions:u`). Each Rust server runs under valgrind; after a warm-up its
//! counts are zeroed, it enrolls `hosts` installers (10 in flight), and its counts are dumped:
//! the instructions of all its threads in user space (the kernel's share of the work, the
//! system calls, is not in them). The primitives are counted the same way, one at a time.

use crate::load::{self, Load};
use crate::primitives::{self, NAMES};
use crate::servers::{start_floor, start_musterd, under_callgrind, Server};
use anyhow::{bail, Context};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// Installers in flight while counting.
const IN_FLIGHT: usize = 10;
/// Enrollments (and primitives of each kind) run before the counts are zeroed.
const WARM_UP: usize = 50;
/// Primitives counted, of each kind.
const PRIMITIVES: usize = 50;

pub struct Counts {
    pub hosts: usize,
    /// Instructions per enrollment, by server.
    pub servers: Vec<(&'static str, f64)>,
    /// Instructions per primitive, [`NAMES`] order.
    pub primitives: Vec<f64>,
}

/// Whether valgrind and callgrind_control are here.
pub fn available() -> bool {
    ["valgrind", "callgrind_control"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Counts `only` (or musterd and the two floors) and the primitives, `hosts` enrollments each.
pub async fn count(
    hosts: usize,
    only: Option<&str>,
    keep: Option<&Path>,
) -> anyhow::Result<Counts> {
    let scratch = tempfile::tempdir()?;
    let dir = keep.unwrap_or(scratch.path());
    std::fs::create_dir_all(dir)?;
    let mut servers = Vec::new();
    for name in ["muster", "protocol", "floor"] {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let work = dir.join(format!("{name}-data"));
        std::fs::create_dir_all(&work)?;
        under_callgrind(Some(dir.to_path_buf()));
        let started = start(name, &work).await;
        under_callgrind(None);
        let (server, target, tls) = started?;
        let per = count_server(&server, &target, &tls, hosts, dir).await?;
        println!("  {name:<9} {:.3} M instructions per enrollment", per / 1e6);
        servers.push((server.name, per));
    }
    let primitives = count_primitives(dir)?;
    Ok(Counts {
        hosts,
        servers,
        primitives,
    })
}

type Started = (Server, load::Target, std::sync::Arc<rustls::ClientConfig>);

async fn start(name: &'static str, dir: &Path) -> anyhow::Result<Started> {
    if name == "muster" {
        let (server, port, token) = start_musterd(dir, None).await?;
        let pins = muster_protocol::token::inspect(&token)?.pins;
        let base = format!("https://127.0.0.1:{port}");
        return Ok((
            server,
            load::Target::Muster { base, token },
            load::tls(pins)?,
        ));
    }
    let (server, ready) = start_floor(dir, name).await?;
    let base = format!("https://127.0.0.1:{}", ready.port);
    let target = match name {
        "protocol" => load::Target::Muster {
            base,
            token: ready.token,
        },
        _ => load::Target::Floor {
            base,
            token: ready.token,
        },
    };
    Ok((server, target, load::tls(ready.pins)?))
}

async fn count_server(
    server: &Server,
    target: &load::Target,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    hosts: usize,
    dir: &Path,
) -> anyhow::Result<f64> {
    let prefix = format!("cg-{}", server.name);
    let warm = std::sync::Arc::new(load::prepare(&format!("{prefix}-warm"), WARM_UP)?);
    let work = std::sync::Arc::new(load::prepare(&prefix, hosts)?);
    let run = load::storm(target, tls, Load::Concurrent(IN_FLIGHT), warm).await;
    if let Some(e) = run.first_error {
        bail!("{} under callgrind: {e}", server.name);
    }
    control("--zero", server.pid())?;
    let run = load::storm(target, tls, Load::Concurrent(IN_FLIGHT), work).await;
    control("--dump", server.pid())?;
    if let Some(e) = run.first_error {
        bail!("{} under callgrind: {e}", server.name);
    }
    Ok(last_dump(dir, server.pid())? / run.ok.max(1) as f64)
}

/// `callgrind_control ARG PID`.
fn control(arg: &str, pid: u32) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .args([arg, &pid.to_string()])
        .output()
        .context("callgrind_control")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {arg} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The instructions in process `pid`'s newest dump (`PID.callgrind.N`, the largest N); with
/// `--separate-threads=yes` (`PID.callgrind.N-TT`, a file per thread), those of every thread
/// but the main one.
fn last_dump(dir: &Path, pid: u32) -> anyhow::Result<f64> {
    let stem = format!("{pid}.callgrind.");
    let mut dumps: Vec<(u64, Option<u32>, std::path::PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some(rest) = name.strip_prefix(&stem) else {
            continue;
        };
        let (n, thread) = match rest.split_once('-') {
            Some((n, t)) => (n, t.parse().ok()),
            None => (rest, None),
        };
        if let Ok(n) = n.parse() {
            dumps.push((n, thread, path));
        }
    }
    let newest = dumps.iter().map(|d| d.0).max();
    let newest =
        newest.with_context(|| format!("no callgrind dump of {pid} in {}", dir.display()))?;
    let mut total = 0.0;
    for (_, _, path) in dumps
        .iter()
        .filter(|(n, thread, _)| *n == newest && *thread != Some(1))
    {
        let text = std::fs::read_to_string(path)?;
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("totals:"))
            .and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.parse::<f64>().ok())
            .with_context(|| format!("no totals in {}", path.display()))?;
    }
    Ok(total)
}

/// Runs `muster-storm primitives --step` under callgrind: zeroed before each primitive's runs,
/// dumped after them, each thread apart so the client's side of a handshake (the main thread)
/// is left out.
fn count_primitives(dir: &Path) -> anyhow::Result<Vec<f64>> {
    let valgrind = crate::servers::callgrind(dir);
    let (program, options) = valgrind.split_first().context("no valgrind command")?;
    let mut child = Command::new(program)
        .args(options)
        .arg("--separate-threads=yes")
        .arg(std::env::current_exe()?)
        .args(["primitives", "--step", "--n", &PRIMITIVES.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let (mut to, from) = (
        child.stdin.take().context("primitives' stdin")?,
        child.stdout.take().context("primitives' stdout")?,
    );
    let mut lines = BufReader::new(from).lines();
    let mut expect = |what: &str| -> anyhow::Result<()> {
        let line = lines
            .next()
            .context("muster-storm primitives ended early")??;
        anyhow::ensure!(
            line == what,
            "muster-storm primitives said {line:?}, not {what:?}"
        );
        Ok(())
    };
    let mut counts = Vec::new();
    for name in NAMES {
        expect(&format!("ready {name}"))?;
        control("--zero", pid)?;
        writeln!(to)?;
        expect(&format!("done {name}"))?;
        control("--dump", pid)?;
        counts.push(last_dump(dir, pid)? / PRIMITIVES as f64);
        writeln!(to)?;
    }
    drop(to);
    child.wait()?;
    Ok(counts)
}

/// The figures, as the summary prints them.
pub fn summary(c: &Counts) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "instructions per enrollment (callgrind, user space, all threads; {} enrollments, {IN_FLIGHT} in flight, after {WARM_UP} uncounted):",
        c.hosts
    );
    for (name, per) in &c.servers {
        let prims = primitives::enrollment_cost(name, &c.primitives);
        let _ = write!(s, "  {name:<9} {:.3} M", per / 1e6);
        if let Some(p) = prims {
            let _ = write!(
                s,
                "  (its primitives {:.3} M: efficiency {:.0} %)",
                p / 1e6,
                100.0 * p / per
            );
        }
        let _ = writeln!(s);
    }
    let each: Vec<String> = NAMES
        .iter()
        .zip(&c.primitives)
        .map(|(n, i)| format!("{n} {:.3} M", i / 1e6))
        .collect();
    let _ = writeln!(s, "  primitives, instructions each: {}", each.join(", "));
    s
}
