//! The storm on a shared store: musterd on etcd (one coordinator and two, a member and a
//! cluster of three) beside the same storm on SQLite, with what each enrollment cost the
//! servers: musterd's and etcd's CPU (from /proc, every process of each), etcd's proposals and
//! range reads (from its own `/metrics`), and the store writes musterd had to go round again.

use crate::load::{self, Load, Target};
use crate::{cpu_seconds, sibling, tool, wait_port};
use anyhow::Context;
use muster_tests::Etcd;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// One platform to storm: its store and how many coordinators serve it.
#[derive(Clone, Copy)]
struct Setup {
    name: &'static str,
    /// etcd members (0: SQLite).
    members: usize,
    coordinators: usize,
    /// Each coordinator held to this share of a core (a cgroup CPU quota), as on a small
    /// machine of its own: then a second coordinator adds what the first cannot do.
    cap: Option<f64>,
}

const SETUPS: &[Setup] = &[
    Setup {
        name: "SQLite, 1 coordinator",
        members: 0,
        coordinators: 1,
        cap: None,
    },
    Setup {
        name: "etcd (1 member), 1 coordinator",
        members: 1,
        coordinators: 1,
        cap: None,
    },
    Setup {
        name: "etcd (1 member), 2 coordinators",
        members: 1,
        coordinators: 2,
        cap: None,
    },
    Setup {
        name: "etcd (3 members), 2 coordinators",
        members: 3,
        coordinators: 2,
        cap: None,
    },
    Setup {
        name: "etcd (1 member), 1 coordinator of 0.3 core",
        members: 1,
        coordinators: 1,
        cap: Some(CAP),
    },
    Setup {
        name: "etcd (1 member), 2 coordinators of 0.3 core",
        members: 1,
        coordinators: 2,
        cap: Some(CAP),
    },
];

/// The share of a core each coordinator gets in the capped setups.
const CAP: f64 = 0.3;

/// What one storm cost, per enrollment.
struct Figures {
    setup: Setup,
    ok: usize,
    failed: usize,
    wall: Duration,
    musterd_ms: f64,
    etcd_ms: f64,
    /// The load generator's own CPU (this process) per enrollment.
    generator_ms: f64,
    /// musterd's, etcd's and the generator's CPU over the storm ÷ (its wall time × the cores):
    /// near 1, the machine was the limit, not the servers.
    busy: f64,
    proposals: f64,
    ranges: f64,
    retries: f64,
}

/// The coordinators of one platform, each a `musterd serve` with its data folder.
struct Platform {
    children: Vec<Child>,
    ports: Vec<u16>,
    token: String,
    /// The cgroups holding capped coordinators, removed once they are gone.
    cgroups: Vec<std::path::PathBuf>,
}

impl Drop for Platform {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for g in &self.cgroups {
            let _ = std::fs::remove_dir(g);
        }
    }
}

/// Where cgroup v1's CPU controller is mounted (this machine's layout; the bench runs as root).
const CPU_CGROUPS: &str = "/sys/fs/cgroup/cpu";

impl Platform {
    /// Holds every coordinator to `cores` of CPU, each in a cgroup of its own.
    fn cap(&mut self, cores: f64) -> anyhow::Result<()> {
        for c in &self.children {
            let g = Path::new(CPU_CGROUPS).join(format!("muster-storm-{}", c.id()));
            std::fs::create_dir(&g).with_context(|| {
                format!(
                    "{}: capping a coordinator needs cgroup v1's cpu controller and root",
                    g.display()
                )
            })?;
            self.cgroups.push(g.clone());
            std::fs::write(g.join("cpu.cfs_period_us"), "100000")?;
            std::fs::write(
                g.join("cpu.cfs_quota_us"),
                format!("{}", (cores * 100_000.0) as u64),
            )?;
            std::fs::write(g.join("cgroup.procs"), c.id().to_string())?;
        }
        Ok(())
    }
}

impl Platform {
    fn cpu(&self) -> f64 {
        self.children
            .iter()
            .map(|c| cpu_seconds(&c.id().to_string()))
            .sum()
    }
}

/// `setup`'s coordinators in `dir`, on `etcd` when there is one: the first made with `init`,
/// the others unsealed with the emergency token, as docs/ha.md has it.
async fn platform(dir: &Path, etcd: Option<&Etcd>, n: usize) -> anyhow::Result<Platform> {
    let musterd = sibling("musterd")?;
    let mut p = Platform {
        children: vec![],
        ports: vec![],
        token: String::new(),
        cgroups: vec![],
    };
    let mut emergency = String::new();
    for i in 0..n {
        let port = crate::free_port()?;
        let d = dir.join(format!("c{i}"));
        std::fs::create_dir_all(&d)?;
        let config = d.join("musterd.yaml");
        let mut yaml = format!("listen: 127.0.0.1:{port}\nadvertise: [\"127.0.0.1:{port}\"]\n");
        if let Some(e) = etcd {
            yaml.push_str(&e.store_config("/storm/"));
        }
        std::fs::write(&config, yaml)?;
        let cmd = |args: &[&str]| {
            let mut c = Command::new(&musterd);
            c.args(args)
                .arg("--data-dir")
                .arg(d.join("data"))
                .arg("--config")
                .arg(&config);
            c
        };
        if i == 0 {
            let v: serde_json::Value =
                serde_json::from_str(&tool(&mut cmd(&["init", "--output", "json"]))?)?;
            emergency = v["emergency_token"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let t: serde_json::Value =
                serde_json::from_str(&tool(&mut cmd(&crate::servers::ALLOCATOR_TOKEN))?)?;
            p.token = t["token"].as_str().unwrap_or_default().to_string();
        } else {
            tool(cmd(&["unseal"]).env("MUSTER_EMERGENCY_TOKEN", &emergency))
                .context("musterd unseal")?;
        }
        let child = cmd(&["serve"])
            .env("MUSTERD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("musterd.log"))?)
            .spawn()?;
        p.children.push(child);
        p.ports.push(port);
        wait_port(port).await?;
    }
    Ok(p)
}

/// The sum over `etcd`'s members of a counter of theirs.
fn etcd_sum(etcd: Option<&Etcd>, name: &str) -> f64 {
    let Some(e) = etcd else { return 0.0 };
    (0..e.client_urls.len())
        .map(|i| e.metric(i, name).unwrap_or(0.0))
        .sum()
}

fn etcd_cpu(etcd: Option<&Etcd>) -> f64 {
    etcd.map_or(0.0, |e| {
        e.pids().iter().map(|p| cpu_seconds(&p.to_string())).sum()
    })
}

/// musterd's `muster_store_retries_total`, summed over the coordinators.
async fn retries(p: &Platform, tls: &Arc<rustls::ClientConfig>) -> f64 {
    let Ok(http) = reqwest::Client::builder()
        .use_preconfigured_tls((**tls).clone())
        .build()
    else {
        return 0.0;
    };
    let mut sum = 0.0;
    for port in &p.ports {
        let text = match http
            .get(format!("https://127.0.0.1:{port}/metrics"))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => continue,
        };
        sum += text
            .lines()
            .find_map(|l| l.strip_prefix("muster_store_retries_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    sum
}

async fn storm_one(setup: Setup, hosts: usize, at_once: usize) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let etcd = match setup.members {
        0 => None,
        n => Some(Etcd::start(n)?),
    };
    let mut p = platform(dir.path(), etcd.as_ref(), setup.coordinators).await?;
    if let Some(cores) = setup.cap {
        p.cap(cores)?;
    }
    let claims = muster_protocol::token::inspect(&p.token)?;
    let tls = load::tls(claims.pins.clone())?;
    let target = Target::Spread {
        bases: p
            .ports
            .iter()
            .map(|port| format!("https://127.0.0.1:{port}"))
            .collect(),
        token: p.token.clone(),
    };
    // A few enrollments first, so connections to etcd are up and caches warm.
    load::storm(
        &target,
        &tls,
        Load::Concurrent(4),
        Arc::new(load::prepare("warm", 8)?),
    )
    .await;
    let work = Arc::new(load::prepare("storm", hosts)?);
    let (m0, e0, g0) = (p.cpu(), etcd_cpu(etcd.as_ref()), cpu_seconds("self"));
    let proposals0 = etcd_sum(etcd.as_ref(), "etcd_server_proposals_committed_total");
    let ranges0 = etcd_sum(etcd.as_ref(), "etcd_mvcc_range_total");
    let retries0 = retries(&p, &tls).await;
    let run = load::storm(&target, &tls, Load::Concurrent(at_once), work).await;
    let (m, e, g) = (
        p.cpu() - m0,
        etcd_cpu(etcd.as_ref()) - e0,
        cpu_seconds("self") - g0,
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let ok = run.ok.max(1) as f64;
    let members = setup.members.max(1) as f64;
    Ok(Figures {
        setup,
        ok: run.ok,
        failed: run.failed,
        wall: run.wall,
        musterd_ms: m * 1000.0 / ok,
        etcd_ms: e * 1000.0 / ok,
        generator_ms: g * 1000.0 / ok,
        busy: (m + e + g) / (run.wall.as_secs_f64().max(1e-9) * cores),
        // Every member commits every proposal: counted once, as the leader's.
        proposals: (etcd_sum(etcd.as_ref(), "etcd_server_proposals_committed_total") - proposals0)
            / members
            / ok,
        // Each range is counted by the member that served it (a transaction's compares by
        // every member, as each applies it).
        ranges: (etcd_sum(etcd.as_ref(), "etcd_mvcc_range_total") - ranges0) / ok,
        retries: (retries(&p, &tls).await - retries0) / ok,
    })
}

/// Storms each setup with `hosts` enrollments, `at_once` in flight, and reports.
pub async fn run(hosts: usize, at_once: usize, report: Option<&Path>) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    println!("shared-store storm: {hosts} hosts, {at_once} at once, one persistent token");
    let mut skipped = Vec::new();
    for setup in SETUPS {
        let f = match storm_one(*setup, hosts, at_once).await {
            Ok(f) => f,
            // A machine without the cgroup controller (or not root) runs the rest.
            Err(e) if setup.cap.is_some() => {
                println!("  {:<44} skipped: {e:#}", setup.name);
                skipped.push(format!("{}: skipped ({e:#})", setup.name));
                continue;
            }
            Err(e) => return Err(e),
        };
        println!(
            "  {:<44} {:>4} ok {:>3} failed {:>6.2} s  musterd {:>5.2} ms  etcd {:>5.2} ms  generator {:>5.2} ms  busy {:>3.0} %  proposals {:>5.2}  ranges {:>5.2}  retries {:>5.2}",
            f.setup.name, f.ok, f.failed, f.wall.as_secs_f64(), f.musterd_ms, f.etcd_ms,
            f.generator_ms, f.busy * 100.0, f.proposals, f.ranges, f.retries
        );
        rows.push(f);
    }
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks: the storm on a shared store\n");
    let _ = writeln!(
        md,
        "Regenerated by `sh scripts/bench.sh` (`muster-storm shared`); nothing here is asserted by a test.\n"
    );
    let _ = writeln!(md, "Machine: {}\n", crate::report::machine());
    let _ = writeln!(
        md,
        "{hosts} simulated installers, {at_once} in flight at once, one persistent allocator token, against musterd on SQLite and on etcd (a member, or a cluster of three, on loopback), with one coordinator or two (each installer enrolls through one, chosen by its host name). musterd, etcd and the load generator share the machine's cores. CPU is user+system time from /proc of every musterd and every etcd member over the storm, divided by the enrollments; the generator's is the benchmark process's own. Machine busy is all three together ÷ (the storm's wall time × the cores): near 100 %, the machine was the limit, not the servers, and a second coordinator cannot make the storm faster. Proposals are `etcd_server_proposals_committed_total` (every member commits every proposal: counted once); range reads are `etcd_mvcc_range_total` summed over the members (a transaction's guards are ranges too, evaluated by every member that applies it, so a cluster of three counts them three times), and per member. Store retries are musterd's `muster_store_retries_total`: guarded writes that found their records changed and went round again.\n"
    );
    let _ = writeln!(md, "| store and coordinators | enrolled | failed | took | musterd CPU per enrollment | etcd CPU per enrollment | generator CPU per enrollment | machine busy | etcd proposals per enrollment | etcd range reads per enrollment (per member) | store retries per enrollment |");
    let _ = writeln!(
        md,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for f in &rows {
        let etcd = f.setup.members > 0;
        let dash = |v: f64, unit: &str| {
            if etcd {
                format!("{v:.2}{unit}")
            } else {
                "—".into()
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} s | {:.2} ms | {} | {:.2} ms | {:.0} % | {} | {} | {} |",
            f.setup.name,
            f.ok,
            f.failed,
            f.wall.as_secs_f64(),
            f.musterd_ms,
            dash(f.etcd_ms, " ms"),
            f.generator_ms,
            f.busy * 100.0,
            dash(f.proposals, ""),
            if etcd {
                format!(
                    "{:.2} ({:.2})",
                    f.ranges,
                    f.ranges / f.setup.members.max(1) as f64
                )
            } else {
                "—".into()
            },
            dash(f.retries, "")
        );
    }
    let sqlite = rows.first().map_or(0.0, |f| f.musterd_ms);
    let find = |coordinators: usize, capped: bool| {
        rows.iter().find(|f| {
            f.setup.members == 1
                && f.setup.coordinators == coordinators
                && f.setup.cap.is_some() == capped
        })
    };
    let (one, two) = (find(1, false), find(2, false));
    if let (Some(one), Some(two)) = (one, two) {
        let _ = writeln!(
            md,
            "\nmusterd CPU per enrollment on etcd (two coordinators) ÷ on SQLite: {:.2}. Two coordinators took {:.2} s, one {:.2} s.",
            two.musterd_ms / sqlite.max(1e-9),
            two.wall.as_secs_f64(),
            one.wall.as_secs_f64()
        );
        // What each server would enroll with a core of its own, from its own CPU figures: on
        // a machine the storm keeps busy, the wall times above cannot tell one coordinator
        // from two.
        let per_core = |ms: f64| 1000.0 / ms.max(1e-9);
        let (m1, e1) = (per_core(one.musterd_ms), per_core(one.etcd_ms));
        let (m2, e2) = (per_core(two.musterd_ms), per_core(two.etcd_ms));
        let _ = writeln!(
            md,
            "\nPer server: the machine was {:.0} % and {:.0} % busy in those two storms, so their wall times measure the machine, not the servers. From each server's own CPU per enrollment, a core of musterd enrolls {m1:.0} hosts a second and a core of etcd serves {e1:.0} (one coordinator); with each coordinator and the etcd member on a core of its own, one coordinator would enroll min({m1:.0}, {e1:.0}) = {:.0} hosts a second and two min(2 × {m2:.0}, {e2:.0}) = {:.0}.",
            one.busy * 100.0,
            two.busy * 100.0,
            m1.min(e1),
            (2.0 * m2).min(e2)
        );
    }
    if let (Some(one), Some(two)) = (find(1, true), find(2, true)) {
        let _ = writeln!(
            md,
            "\nMeasured with each coordinator held to {CAP} of a core (a cgroup CPU quota), as if each ran on a small machine of its own while etcd and the generator share the rest: one coordinator took {:.2} s ({:.0} hosts a second), two took {:.2} s ({:.0} hosts a second), {:.2}× as fast.",
            one.wall.as_secs_f64(),
            one.ok as f64 / one.wall.as_secs_f64().max(1e-9),
            two.wall.as_secs_f64(),
            two.ok as f64 / two.wall.as_secs_f64().max(1e-9),
            one.wall.as_secs_f64() / two.wall.as_secs_f64().max(1e-9)
        );
    }
    for line in &skipped {
        let _ = writeln!(md, "\n{line}");
    }
    print!("{md}");
    if let Some(path) = report {
        std::fs::write(path, md)?;
    }
    Ok(())
}
