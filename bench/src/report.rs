//! The storm's figures: one row per server and load, the summary of paired rounds, and the
//! markdown that docs/benchmarks.md takes.

use crate::load::{Load, Run};
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

/// One measured storm: the client's view and the server's cost.
pub(crate) struct Row {
    pub(crate) target: &'static str,
    /// How the installers came: so many in flight, or arriving at a rate.
    pub(crate) load: Load,
    pub(crate) registered: usize,
    /// The comparison round (1, 2, …) of a 100-concurrent storm; 0 for the others.
    pub(crate) round: usize,
    pub(crate) run: Run,
    pub(crate) cpu_per: f64,
    /// The part of `cpu_per` spent in the kernel.
    pub(crate) sys_per: f64,
    /// The part of `cpu_per` spent by musterd's store threads (its SQLite writer and
    /// checkpointer; 0 for the other servers).
    pub(crate) store_per: f64,
    /// The server's context switches (all threads) per enrollment.
    pub(crate) switches_per: f64,
    /// The load generator's own CPU per enrollment: it shares the machine's cores.
    pub(crate) client_cpu_per: f64,
    pub(crate) peak_mib: f64,
    /// Full TLS handshakes per enrollment (no session is ever resumed).
    pub(crate) handshakes_per: f64,
    /// Session tickets the server offered per enrollment, declined.
    pub(crate) tickets_per: f64,
    /// How busy the generator's own cores were over the storm (1.0 = saturated).
    pub(crate) generator_busy: f64,
}

/// A generator this busy may be what limits the storm, not the server.
pub(crate) const GENERATOR_SATURATED: f64 = 0.9;

impl Row {
    /// Installers in flight, for a closed-loop storm.
    fn in_flight(&self) -> Option<usize> {
        match self.load {
            Load::Concurrent(c) => Some(c),
            Load::Arrivals(_) => None,
        }
    }

    /// A burst: as many installers in flight as there are in all, each starting at once.
    fn burst(&self) -> bool {
        self.in_flight() == Some(self.run.ok + self.run.failed)
    }

    /// Arrivals per second, for an open-loop storm.
    fn arrivals(&self) -> Option<f64> {
        match self.load {
            Load::Arrivals(rate) => Some(rate),
            Load::Concurrent(_) => None,
        }
    }
}

/// A count of hosts as the report writes it: 1,000 and 10,000.
fn hosts(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How the installers came: "100" in flight, or "arriving at 500/s".
pub(crate) fn load_of(r: &Row) -> String {
    match r.load {
        Load::Concurrent(c) if r.burst() => format!("{c} at once"),
        Load::Concurrent(c) => c.to_string(),
        Load::Arrivals(rate) => format!("arriving at {rate:.0}/s"),
    }
}

pub(crate) fn line(r: &Row) -> String {
    format!(
        "{:<8} {:>20}  {:>6} registered  {:>6} ok {:>3} failed  {:>7.0}/s  p50 {:>6.1} ms  p95 {:>6.1} ms  p99 {:>6.1} ms  cpu {:>6.3} ms/enrollment (load generator {:>6.3}, its cores {:>3.0} % busy{})  full handshakes {:.2}/enrollment, tickets declined {:.2}  peak RSS {:>6.1} MiB",
        r.target,
        match r.load {
            Load::Concurrent(c) => format!("{c} concurrent"),
            Load::Arrivals(_) => load_of(r),
        },
        r.registered,
        r.run.ok,
        r.run.failed,
        r.run.rate(),
        ms(r.run.pct(0.50)),
        ms(r.run.pct(0.95)),
        ms(r.run.pct(0.99)),
        r.cpu_per * 1000.0,
        r.client_cpu_per * 1000.0,
        r.generator_busy * 100.0,
        if r.generator_busy > GENERATOR_SATURATED {
            ": GENERATOR-BOUND"
        } else {
            ""
        },
        r.handshakes_per,
        r.tickets_per,
        r.peak_mib
    )
}

/// `a`'s figure over `b`'s in each comparison round at 100 concurrent (`f`: throughput or
/// server CPU per enrollment): the median, the lowest and the highest, and how many rounds.
pub(crate) fn per_round(
    rows: &[Row],
    a: &str,
    b: &str,
    f: fn(&Row) -> f64,
) -> Option<(f64, f64, f64, usize)> {
    let at = |target: &str, round: usize| {
        rows.iter()
            .find(|r| r.target == target && r.round == round && r.in_flight() == Some(100))
            .map(f)
    };
    let mut ratios: Vec<f64> = (1..)
        .map_while(|round| Some((at(a, round)?, at(b, round)?)))
        .filter(|(_, y)| *y > 0.0)
        .map(|(x, y)| x / y)
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len();
    let median = if n % 2 == 1 {
        ratios[n / 2]
    } else {
        (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
    };
    Some((median, ratios[0], ratios[n - 1], n))
}

fn rate(r: &Row) -> f64 {
    r.run.rate()
}

fn cpu(r: &Row) -> f64 {
    r.cpu_per
}

/// The median server CPU per enrollment of `target` over the comparison rounds, ms.
pub(crate) fn cpu_of(rows: &[Row], target: &str) -> Option<f64> {
    median_of(rows, target, |r| r.cpu_per * 1000.0)
}

/// The median of `f` over `target`'s comparison rounds.
fn median_of(rows: &[Row], target: &str, f: impl Fn(&Row) -> f64) -> Option<f64> {
    let mut v: Vec<f64> = rows
        .iter()
        .filter(|r| r.target == target && r.round > 0)
        .map(f)
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// The median kernel CPU per enrollment of `target` over the comparison rounds, ms.
pub(crate) fn kernel_of(rows: &[Row], target: &str) -> Option<f64> {
    median_of(rows, target, |r| r.sys_per * 1000.0)
}

/// The median CPU per enrollment of `target`'s store threads over the comparison rounds, ms.
pub(crate) fn store_of(rows: &[Row], target: &str) -> Option<f64> {
    median_of(rows, target, |r| r.store_per * 1000.0)
}

/// The median context switches per enrollment of `target` over the comparison rounds.
pub(crate) fn switches_of(rows: &[Row], target: &str) -> Option<f64> {
    median_of(rows, target, |r| r.switches_per)
}

/// The throughput of `target` at `c` concurrent installers: the median of the comparison
/// rounds at 100, the one storm at 1,000 (not the burst, which is over as soon as it starts).
pub(crate) fn rate_of(rows: &[Row], target: &str, c: usize) -> Option<f64> {
    let mut rates: Vec<f64> = rows
        .iter()
        .filter(|r| r.target == target && r.in_flight() == Some(c) && !r.burst())
        .filter(|r| c != 100 || r.round > 0)
        .map(|r| r.run.rate())
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied()
}

/// What a run measures besides the storms.
pub(crate) struct Extra {
    /// Each primitive's cost on the servers' core, ms ([`crate::primitives::NAMES`] order).
    pub(crate) primitives_ms: Option<Vec<f64>>,
    pub(crate) instructions: Option<crate::instructions::Counts>,
}

/// The rate the open-loop fleets arrive at: `share` of musterd's throughput at 100
/// concurrent (the median of the rounds), the same for every server.
pub(crate) fn fleet_rate(rows: &[Row], share: f64) -> f64 {
    rate_of(rows, "muster", 100)
        .or_else(|| rows.last().map(|r| r.run.rate()))
        .unwrap_or(100.0)
        * share
}

/// The open-loop storm of `target` at `share` of musterd's capacity.
fn fleet<'a>(rows: &'a [Row], target: &str, share: f64) -> Option<&'a Row> {
    let rate = fleet_rate(rows, share);
    rows.iter().find(|r| {
        r.target == target
            && r.arrivals().is_some_and(|a| (a - rate).abs() < 1e-6)
            && r.run.ok + r.run.failed < 10_000
    })
}

pub(crate) fn summarize(
    rows: &[Row],
    installer: Option<&(Vec<f64>, u64)>,
    extra: &Extra,
) -> String {
    let mut s = String::new();
    let servers = [
        "muster", "muster-b", "protocol", "floor", "cfssl", "step-ca",
    ];
    let _ = writeln!(
        s,
        "server CPU per enrollment (median of the rounds at 100 concurrent; the headline, per server):"
    );
    for t in servers {
        if let Some(c) = cpu_of(rows, t) {
            let rate = rate_of(rows, t, 100).unwrap_or(0.0);
            let kernel = kernel_of(rows, t).unwrap_or(0.0);
            let switches = switches_of(rows, t).unwrap_or(0.0);
            let store = match store_of(rows, t).unwrap_or(0.0) {
                0.0 => String::new(),
                ms => format!(", {ms:.3} ms in the store's threads"),
            };
            let _ = writeln!(
                s,
                "  {t:<9} {c:.3} ms, of it {kernel:.3} ms in the kernel{store}, {switches:.1} context switches  (one core of it: {:.0} enrollments/s; measured {rate:.0}/s)",
                1000.0 / c
            );
        }
    }
    if let Some(each) = &extra.primitives_ms {
        let named: Vec<String> = crate::primitives::NAMES
            .iter()
            .zip(each)
            .map(|(n, ms)| format!("{n} {ms:.3}"))
            .collect();
        let _ = writeln!(
            s,
            "primitives alone, on the servers' core, ms each: {}",
            named.join(", ")
        );
        for t in ["muster", "protocol", "floor"] {
            let (Some(p), Some(c)) = (crate::primitives::enrollment_cost(t, each), cpu_of(rows, t))
            else {
                continue;
            };
            let _ = writeln!(
                s,
                "  {t:<9} its primitives {p:.3} ms of {c:.3} ms measured: efficiency {:.0} %",
                100.0 * p / c
            );
        }
    }
    if let (Some(each), Some(c)) = (&extra.primitives_ms, cpu_of(rows, "muster")) {
        // NAMES order: handshake, token, csr, signature, proof, handshake-certreq.
        let parts = [
            (
                "the second (HTTP) certificate: a CSR check and a signature",
                each[2] + each[3],
            ),
            (
                "the proof of possession, were it checked at every commit (it is checked only at a commit on another connection than its join's)",
                each[4],
            ),
            (
                "asking every connection for a client certificate",
                each[5] - each[0],
            ),
        ];
        let _ = writeln!(
            s,
            "what the design's parts cost musterd per enrollment (from the primitives):"
        );
        for (what, ms) in parts {
            let _ = writeln!(
                s,
                "  {what}: {ms:.3} ms ({:.0} % of its CPU per enrollment)",
                100.0 * ms / c
            );
        }
    }
    if let Some(c) = &extra.instructions {
        s.push_str(&crate::instructions::summary(c));
    }
    let _ = writeln!(
        s,
        "ratios, median of the per-round ratios [lowest, highest] over n rounds:"
    );
    let pairs = [
        ("muster", "muster-b"),
        ("muster", "protocol"),
        ("muster", "floor"),
        ("muster", "cfssl"),
        ("muster", "step-ca"),
        ("protocol", "cfssl"),
        ("protocol", "step-ca"),
        ("cfssl", "step-ca"),
    ];
    for (a, b) in pairs {
        let (Some(c), Some(t)) = (per_round(rows, a, b, cpu), per_round(rows, a, b, rate)) else {
            continue;
        };
        let _ = writeln!(
            s,
            "  {a} / {b}: server CPU {:.2}x [{:.2}, {:.2}], throughput {:.2}x [{:.2}, {:.2}] (n={})",
            c.0, c.1, c.2, t.0, t.1, t.2, c.3
        );
    }
    if let Some(m) = rate_of(rows, "muster", 1000) {
        for peer in ["protocol", "floor", "cfssl", "step-ca"] {
            if let Some(p) = rate_of(rows, peer, 1000) {
                let _ = writeln!(
                    s,
                    "at 1000 concurrent: muster {m:.0}/s is {:.2}x {peer} ({p:.0}/s)",
                    m / p
                );
            }
        }
    }
    let bound: Vec<String> = rows
        .iter()
        .filter(|r| r.generator_busy > GENERATOR_SATURATED)
        .map(|r| format!("{} {}", r.target, load_of(r)))
        .collect();
    if !bound.is_empty() {
        let _ = writeln!(
            s,
            "generator-bound storms (its cores over {:.0} % busy; their throughput measures the generator): {}",
            GENERATOR_SATURATED * 100.0,
            bound.join(", ")
        );
    }
    for share in [0.5, 0.8] {
        let all: Vec<String> = ["muster", "protocol", "floor", "cfssl", "step-ca"]
            .iter()
            .filter_map(|t| fleet(rows, t, share))
            .map(|r| format!("{} {:.1} ms", r.target, ms(r.run.pct(0.99))))
            .collect();
        if let Some(r) = fleet(rows, "muster", share) {
            let _ = writeln!(
                s,
                "{} hosts arriving at {:.0}/s ({:.0} % of musterd's capacity), p99: {}",
                r.run.ok + r.run.failed,
                fleet_rate(rows, share),
                share * 100.0,
                all.join(", ")
            );
        }
    }
    if let Some((times, size)) = installer {
        let _ = writeln!(
            s,
            "static installer: {size} bytes ({:.1} MiB); one real enrollment on loopback: median {:.1} ms (of {:?} ms)",
            *size as f64 / 1048576.0,
            times[times.len() / 2],
            times.iter().map(|t| (t * 10.0).round() / 10.0).collect::<Vec<_>>()
        );
    }
    let _ = writeln!(s, "\ntargets (this run):");
    let mut target = |what: &str, got: Option<f64>, goal: f64, higher: bool, unit: &str| {
        if let Some(g) = got {
            let met = if higher { g >= goal } else { g <= goal };
            // Ratios to three places, so one just past its goal does not print as the goal.
            let places = if unit == "x" { 3 } else { 2 };
            let _ = writeln!(
                s,
                "  {:<7} {what}: {g:.places$}{unit} ({} {goal}{unit})",
                if met { "met" } else { "NOT MET" },
                if higher { "goal >=" } else { "goal <=" }
            );
        }
    };
    let cpu_ratio = |peer: &str| per_round(rows, "muster", peer, cpu).map(|r| r.0);
    target(
        "server CPU / protocol floor's, 100 concurrent",
        cpu_ratio("protocol"),
        1.25,
        false,
        "x",
    );
    target(
        "server CPU / cfssl's, 100 concurrent",
        cpu_ratio("cfssl"),
        0.8,
        false,
        "x",
    );
    // The same number of hosts as the closed loop, coming on their own at half the rate
    // musterd sustained, then at 80 % of it (the 10,000 come later).
    for (share, p50, p99) in [(0.5, Some(5.0), 25.0), (0.8, None, 100.0)] {
        let Some(f) = fleet(rows, "muster", share) else {
            continue;
        };
        let what = format!(
            "{} hosts arriving at {:.0}/s (open loop, {:.0} % of the capacity at 100 concurrent)",
            f.run.ok + f.run.failed,
            fleet_rate(rows, share),
            share * 100.0
        );
        if let Some(goal) = p50 {
            target(
                &format!("p50 of {what}"),
                Some(ms(f.run.pct(0.5))),
                goal,
                false,
                " ms",
            );
        }
        target(
            &format!("p99 of {what}"),
            Some(ms(f.run.pct(0.99))),
            p99,
            false,
            " ms",
        );
    }
    let muster = || rows.iter().filter(|r| r.target == "muster");
    if let Some(b) = muster().find(|r| r.burst() && r.in_flight() == Some(1000)) {
        target(
            "1,000 hosts at once, each on a new connection: the last enrolled after the first request",
            Some(b.run.wall.as_secs_f64()),
            1.0,
            false,
            " s",
        );
        target(
            "1,000 hosts at once: refused",
            Some(b.run.failed as f64),
            0.0,
            false,
            "",
        );
    }
    if let Some(t) = muster().find(|r| r.arrivals().is_some() && r.run.ok + r.run.failed == 10_000)
    {
        target(
            "p99 of 10,000 hosts arriving at random over 10 s",
            Some(ms(t.run.pct(0.99))),
            100.0,
            false,
            " ms",
        );
    }
    if let Some(r) = muster().find(|r| r.burst() && r.in_flight() == Some(10_000)) {
        target(
            &format!(
                "musterd peak RSS with 10,000 in flight ({} hosts registered)",
                r.registered
            ),
            Some(r.peak_mib),
            100.0,
            false,
            " MiB",
        );
    }
    if let Some((times, size)) = installer {
        target(
            "one enrollment by the installer",
            Some(times[times.len() / 2]),
            50.0,
            false,
            " ms",
        );
        target(
            "static installer size",
            Some(*size as f64 / 1048576.0),
            8.0,
            false,
            " MiB",
        );
    }
    // Flat from an empty registry to 100,000 hosts: the rounds at 100 concurrent (their median;
    // one round alone can be a noisy minute) against the storm at 100,000.
    let full = muster().find(|r| r.in_flight() == Some(100) && r.registered >= 100_000);
    let rounds_p50 = median_of(rows, "muster", |r| ms(r.run.pct(0.5)));
    let most = muster().filter(|r| r.round > 0).map(|r| r.registered).max();
    if let (Some(c), Some(p50), Some(full), Some(most)) =
        (cpu_of(rows, "muster"), rounds_p50, full, most)
    {
        let _ = writeln!(
            s,
            "  (not a target) 100 concurrent, the rounds (up to {most} hosts registered) then {}: server CPU {c:.3} then {:.3} ms, p50 {p50:.1} then {:.1} ms",
            full.registered,
            full.cpu_per * 1000.0,
            ms(full.run.pct(0.5))
        );
    }
    if let Some(peak) = muster().map(|r| r.peak_mib).reduce(f64::max) {
        let _ = writeln!(
            s,
            "  (not a target) musterd's highest peak RSS of any storm: {peak:.1} MiB"
        );
    }
    // An open loop's tail depends on how busy the server is: the arrival rate times its CPU
    // per enrollment, the share of its one core the fleet asks for. Near 100 %, the queue (and
    // the p99) grows without bound, so a minute when the VM is slow swings it.
    // A host arriving alone costs more than one in a storm (its steps commit in small batches
    // of their own), so "half the capacity at 100 concurrent" asks for more than half the core.
    for t in muster().filter(|r| r.arrivals().is_some() && !r.burst()) {
        let _ = writeln!(
            s,
            "  (not a target) the {} arriving at {:.0}/s asked for {:.0} % of musterd's core ({:.0}/s × {:.3} ms per enrollment): the nearer 100 %, the longer the queue and its p99",
            hosts(t.run.ok + t.run.failed),
            t.arrivals().unwrap_or_default(),
            t.run.rate() * t.cpu_per * 100.0,
            t.run.rate(),
            t.cpu_per * 1000.0
        );
    }
    // Bounded by 1,000 / throughput (Little's law) for every server: reported, not a target.
    if let Some(r) = rows
        .iter()
        .find(|r| r.target == "muster" && r.in_flight() == Some(1000) && !r.burst())
    {
        let _ = writeln!(
            s,
            "  (not a target) p99 at 1,000 concurrent: {:.2} ms, about 1,000 / {:.0} per second",
            ms(r.run.pct(0.99)),
            r.run.rate()
        );
    }
    s
}

pub(crate) fn markdown(rows: &[Row], summary: &str, quick: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Regenerated by `sh scripts/bench.sh`{}; nothing here is asserted by a test.\n",
        if quick {
            " --quick (a small run: rough figures)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "Machine: {}\n", machine());
    let _ = writeln!(
        s,
        "The storm on a shared store (musterd on etcd, one coordinator and two) is in [benchmarks-shared.md](benchmarks-shared.md).\n"
    );
    let _ = writeln!(s, "How it measures. Every stormed server runs pinned to the machine's last core (`taskset`), the load generator on the others; a storm whose generator cores were over 90 % busy is marked generator-bound in the summary, since its throughput then measures the generator. Each simulated installer opens its own TLS connection from its own loopback address, with fresh keys and CSRs made before the clock starts; against `muster` and the protocol floor it joins and then commits on the same connection, against the floor, cfssl and step-ca it makes one request (step-ca's one-time token is minted for it as it goes). No client keeps a TLS session: every connection is a full handshake, as a new host's is, and the tickets servers offer are counted and declined (the columns say how many of each per enrollment). Server CPU is user+system time of the server process (all its threads) from /proc over the storm, divided by the enrollments: the headline per server. The load generator's own CPU is beside it. Peak RSS is VmHWM, reset before each storm. The servers run side by side and the 100-concurrent storms take turns over the rounds, in an order that changes every round (turned by one, reversed every other); every ratio is the median of the per-round ratios, given with its lowest and highest.\n");
    let _ = writeln!(
        s,
        "What each server does per enrollment, so like is read against like:\n"
    );
    let _ = writeln!(s, "| server | credential | replay protection | certificates signed | CSRs checked | stored and fsynced | requests |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    let _ = writeln!(s, "| muster | roles token (Ed25519 JWT), looked up by id, use counted | use limits counted in the store; the commit bound to the joined key by the join's connection (or, on another, by its ECDSA proof of possession) and its PSK | 2 (transport, HTTP) | 2 | reservation, host record, token use, 2 audit events (SQLite WAL, group-committed, fsynced) | join + commit on one connection |");
    let _ = writeln!(s, "| protocol (floor) | the same token, checked | none | 2 | 2 | nothing (the reservation in memory) | join + commit on one connection |");
    let _ = writeln!(
        s,
        "| floor | the same token, checked | none | 1 | 1 | nothing | 1 |"
    );
    let _ = writeln!(s, "| cfssl 1.2 `authsign` | HMAC-SHA256 over the request, shared key | none: the same request can be replayed | 1 | 1 | nothing | 1 |");
    let _ = writeln!(s, "| step-ca 0.19 `/1.0/sign` | one-time token (ES256 JWT from a JWK provisioner) | each token once: its id stored in badger (`step ca init`'s database) | 1 (with its chain) | 1 | the used token's id (badger; its own syncing) | 1 |\n");
    let _ = writeln!(s, "| server | concurrent (or arriving) | round | hosts already registered | enrolled | failed | per second | p50 ms | p95 ms | p99 ms | server CPU ms/enrollment | of it in the kernel | of it in the store's threads | server context switches/enrollment | load generator CPU ms/enrollment | generator cores busy | full handshakes/enrollment | tickets declined/enrollment | peak RSS MiB |");
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.3} | {:.3} | {} | {:.1} | {:.3} | {:.0} % | {:.2} | {:.2} | {:.1} |",
            r.target,
            load_of(r),
            if r.round > 0 { r.round.to_string() } else { String::new() },
            r.registered,
            r.run.ok,
            r.run.failed,
            r.run.rate(),
            ms(r.run.pct(0.5)),
            ms(r.run.pct(0.95)),
            ms(r.run.pct(0.99)),
            r.cpu_per * 1000.0,
            r.sys_per * 1000.0,
            if r.store_per > 0.0 {
                format!("{:.3}", r.store_per * 1000.0)
            } else {
                String::new()
            },
            r.switches_per,
            r.client_cpu_per * 1000.0,
            r.generator_busy * 100.0,
            r.handshakes_per,
            r.tickets_per,
            r.peak_mib
        );
    }
    let _ = writeln!(s, "\n```\n{}```", summary);
    let _ = writeln!(s, "\nReading these figures:\n");
    let _ = writeln!(s, "- Read the server CPU per enrollment first: it is each server's own cost, whatever the machine. Throughput on this machine is what one core of server does with the generator on the other; the rounds swing by ±20 % from minute to minute on this shared VM, which is why ratios are taken within rounds.");
    let _ = writeln!(s, "- The latency at 1,000 concurrent installers is bound by throughput (Little's law: 1,000 in flight at ~1,000/s is ~1 s each), for every server alike. What that storm shows is that nothing fails, memory stays bounded and throughput holds.");
    let _ = writeln!(s, "- The rows \"arriving at …/s\" are the other way a fleet comes: 1,000 hosts each starting on its own (exponential gaps, as independent machines booting), at half the rate musterd sustained at 100 concurrent and then at 80 % of it, the same rates for every server; latency counts from each host's arrival.");
    let _ = writeln!(s, "- Three fleets for musterd alone, the other servers stopped first (step-ca's database and Go's collector kept working on the servers' core after their storms): \"1000 at once\" is a burst, 1,000 hosts starting together, each on a new connection (its target is the time from the first request to the last enrollment); \"arriving at 1000/s\" is 10,000 hosts arriving at random over about 10 s; \"10000 at once\", last, is 10,000 installers in flight together with 100,000 hosts registered, for musterd's memory (its target is the peak RSS over that storm).");
    let _ = writeln!(s, "- The primitives are timed alone, from the same build, on the servers' core (`muster-storm primitives`): the server's side of a full TLS 1.3 handshake (P-256 certificate, X25519; `handshake-certreq` as musterd's listener makes it, asking for a client certificate), a roles-token verification, a CSR check, a certificate signature and a proof-of-possession check. An enrollment costs musterd a handshake-certreq, two CSR checks and two signatures (it verifies a token's signature once per token, not per host, and a commit's proof only when the commit comes on another connection than its join's, which no storm's does); the protocol floor the same with a plain handshake; the floor a handshake, a token, a CSR and a signature. Efficiency is that sum over the server's measured CPU per enrollment.");
    let _ = writeln!(s, "- Instructions per enrollment are counted by callgrind (`muster-storm instructions`; this VM has no hardware counters): each Rust server under valgrind, zeroed after 50 enrollments, dumped after 500 more, 10 in flight; user space only, every thread. They do not move with the machine's load, so a change is judged by them; valgrind takes ring's generic code paths (no ADX, no SHA extensions), so they are not the native instruction mix. The primitives are counted the same way, the server's side alone.");
    let _ = writeln!(s, "- What musterd's store does per enrollment (read from its code, SQLite schema version 7): the join reads once (is the name registered?) and runs one step of five statements (the token, an earlier reservation of the same key (the rows an index in the server's memory names, read by row id), the use counted in the token's `uses` column, the reservation, its audit event); the commit runs one step of six (the reservation's record without its certificates, the token, a host of that name, the host, the reservation's node id in `reservations_committed`, the audit event). A batch's steps share one `BEGIN` and one `COMMIT`, each in a savepoint of its own. Four JSON records are encoded (reservation, host, two audit events) and three decoded (the token twice, the reservation). Version 3 took out the rewrite of the token's record on every join and the two certificates from what the commit reads: 4.684 to 4.694 M instructions per enrollment before, 4.638 to 4.661 M after (three counts of each, 2026-12-03). Version 4 marks a commit in a table of its own rather than in a column of the reservation's row, which holds both certificates (about 2.2 KB, one row to a page), so the commit no longer writes that page again: 10.57 to 10.65 `pwrite` calls per enrollment against 11.75 to 12.28 (`scripts/syscalls.sh`, three runs each, 2026-12-03); instructions unchanged (4.539 M against 4.534 M). Keeping the certificates as DER rather than PEM by converting the PEM in the writer took 1.1 to 1.4 more `pwrite` calls off per enrollment but cost 0.13 M instructions more (4.673 M): dropped then. Version 5 numbers the audit log by its row id rather than AUTOINCREMENT (its rows are never deleted), so no commit reads and rewrites `sqlite_sequence`: 3.759 to 3.762 M instructions per enrollment against 3.775 to 3.789 M (two counts of each, 2026-12-03). Moving the index of reservations by key (a hash, so each join wrote a page of its own there, 1.6 pages of the log per join) out of the file into a temporary table in the writer's memory kept up by triggers took `pwrite` from 9.86 to 6.23 calls per enrollment and `pread` from 2.48 to 1.52, but SQLite's temporary database cost 0.05 M instructions more (3.823 M; its pager, journal and glibc's allocator), and the CPU did not move (0.99x [0.88, 1.11] and 1.01x [0.92, 1.05] against the build before, 7 rounds each): a frame of the log costs about 1.6 µs of the kernel here (two `pwrite` calls timed alone), so a join's index page was about 3 µs of 490: dropped. Keeping the savepoints' journal in memory (`temp_store = MEMORY`), where SQLite moves it into a file of its own in /var/tmp past 64 KiB in a large batch, took `pwrite` from 9.85 to 9.44 calls per enrollment but cost 1 % more instructions (3.789 to 3.807 M; the in-memory journal grows in 1 KiB chunks): dropped. Version 6 keeps a new reservation's certificates as the DER the signer made, which the join had at hand, so nothing is converted: about 1.8 KB a row rather than 2.2, two reservations to a page of the file rather than one (550 reservations in 275 leaf pages). `pwrite` fell from 9.8 to 10.0 calls per enrollment to 8.6 and `pread` from 2.6 to 1.95 (`scripts/syscalls.sh`, 2026-12-04); instructions from 3.761 to 3.764 M to 3.742 to 3.758 M (three counts); server CPU 1.00x [0.93, 1.12] against the build before (7 rounds: this machine does not resolve 1 %). A join answered again gets the DER encoded back to the very PEM the signer wrote. Since 239953d the bundled SQLite is built with three options of SQLite's own (`.cargo/config.toml`): `HAVE_FDATASYNC`, so a commit syncs its log with `fdatasync` rather than `fsync`, which also wrote the log's inode back for its modification time (a fifth of the writer's time in its syncs, perf, 2026-12-04); `SQLITE_DEFAULT_MEMSTATUS=0`, no memory statistics and no global lock on each of SQLite's allocations for them; and `SQLITE_STMTJRNL_SPILL` at 256 KiB rather than 64: a step whose savepoint journal grew past 64 KiB had moved it into a temporary file for the rest of its batch, 0.7 `pwrite` calls per enrollment under the storm (strace of the writer). `pwrite` per enrollment 7.92 against 8.28 before (`scripts/syscalls.sh`, 2026-12-04); instructions 3.744 to 3.750 M against 3.752 M; server CPU 0.98x [0.86, 1.07] against the build before (21 rounds: this machine does not resolve 2 %). `temp_store = MEMORY` stops the spills too, but its journal grows in 1 KiB chunks: 3.775 to 3.779 M. Version 7 (50e6469) takes the index of reservations by token and key out of the file for good: the writer keeps row ids by a keyed hash of token and key in a `BTreeSet` (about 24 bytes a reservation, read in when the store opens) and checks each row it names, so an entry left by a rolled-back step matches nothing. In the file that index was 11 of the 28 pages a commit wrote to the log under the storm (`sh scripts/walpages.sh`: 10 leaf and 1 interior page, per commit, over the last 40 commits; 23.6 pages with version 7, most of them the new rows themselves). Unlike the temporary table tried before, it costs fewer instructions, not more: 3.722 M per enrollment (two counts) against 3.740 M. `pwrite` per enrollment 4.72 against 7.75 and `pread` 1.05 against 2.12 (`scripts/syscalls.sh`, 2026-12-04); the writer's own CPU 0.029 to 0.032 ms per enrollment against 0.036 to 0.039 (perf stat on its thread, two runs each); server CPU 0.93x [0.76, 1.14] against the build before (21 rounds), the store's threads 0.067 against 0.083 ms in that run.");
    let _ = writeln!(s, "- Where musterd's kernel time goes beyond the protocol floor's (`sh scripts/syscalls.sh`: perf's system-call tracepoints over 8 s of each one's 100-concurrent storm, per connection accepted; 2026-12-04, schema version 7): the store's writes to its log and its checkpoints, 4.72 `pwrite` calls per enrollment (7.75 with version 6, 8.6 before 239953d, 9.8 to 10.0 with version 5; the floor none); its reads of pages, 1.05 `pread` (2.12 with version 6); its locks, 0.61 `fcntl`; 0.08 `fdatasync` (one per 12 or 13 enrollments, checkpoints included; `fsync` before 239953d); 0.8 context switches against 0.2 (0.69 against 0.26 since b529008, on another machine, 2026-12-04: musterd's and the floors' accept loops had run on the main thread, which `block_on` polls, so each connection woke that thread and then a worker; they now run on a worker, and at half capacity musterd made 4.0 to 6.1 context switches per enrollment rather than 7.2 to 8.2). The TLS and HTTP calls (`recvfrom`, `writev`, `epoll_ctl`, `getrandom`) are the same for both. Until 47a94a1 musterd also made 0.74 `write` calls per enrollment to its runtime's eventfd (the floor 0.03): each new connection's idle check was an interval whose first tick was due at once, earlier than any timer the runtime waited for, so arming it woke the runtime's driver (perf on the `write` tracepoint with call graphs: 88 % of those calls); it now ticks first one period on, and makes 0.03. Most commits rewrite the same few pages besides the new records: the database header, the token's record and the tables' roots.");
    let _ = writeln!(s, "- \"Of it in the store's threads\" is the CPU of musterd's SQLite writer and checkpointer (from /proc, per thread): the store's own cost, apart from the async workers that do the TLS, the HTTP and the cryptography. What the workers spend beyond the protocol floor is the rest of the gap: musterd sampled with perf during its 100-concurrent storm (a release build keeping its symbols, 2026-12-03, Xeon VM; `sh scripts/profile.sh` does the same) spent 52 % of its samples in P-256, X25519, SHA-2 and AES (the primitives), 17.5 % in the kernel (sockets, the store's writes and fsyncs, context switches), 9 % in glibc's allocator (since replaced by mimalloc, which took musterd's instructions per enrollment from 4.644 to 4.664 M to 4.541 to 4.559 M and its CPU down 4 to 5 %), 5.6 % in SQLite (writer and point reads), 4.9 % in tokio, hyper and axum, and under 2 % each in rustls's own code, serde, x509 building and musterd's own code. On the AMD VM (2026-12-04, `sh scripts/profile.sh` and `sh scripts/profile.sh protocol`, read against the cryptography both do alike: musterd's shares of P-256 and X25519 were 0.68 and 0.71 of the floor's, so it spent about 1.43 times the floor's CPU), what musterd spent beyond the protocol floor came to, in hundredths of the floor's CPU: 16 in the kernel (the log's syncs 5.6, its `pwrite` calls 4.8, `pread` 1.3, the disk's interrupts about 3), 7 in SQLite's own code, 7 in the allocator and memory copies, 4 in hyper and axum, 3 in the runtime and its timers, 6 elsewhere. The store, its kernel time and SQLite's own, is about half of the gap: a commit on disk before it is answered is the design's price. musterd makes about 660 allocations per enrollment, the protocol floor about 420 (callgrind, 2026-12-04); some 90 of the difference were axum's and tower's boxed services and futures (axum boxes a route again for each layer and clones it, with a boxed future, for each request), so since e66dc58 the coordinator's per-request deadline, refusal of bodies declared too large and access log are one layer rather than three: 3.738 to 3.739 M instructions per enrollment against 3.744 to 3.750 M. Read per round from the tables of three full runs of 50e6469's server (2026-12-04; this one and the two before), musterd's CPU apart from its store's threads was 1.07, 1.09 and 1.08 times the protocol floor's (medians of 15 rounds; 0.98 to 1.33, 0.99 to 1.38 and 0.97 to 1.53) and its store's threads 0.15 times in each (0.12 to 0.23, 0.14 to 0.25 and 0.13 to 0.27): the store is still most of the gap. The three runs' headline ratios: 1.21x, 1.25x (1.247) and 1.21x.");
    let _ = writeln!(s, "- The group commit's gather (5 ms once two or more steps wait) kept the open-loop p50 at half capacity above 5 ms: every step of an enrollment waited for it, twice. Policies measured against it (`--against`, five to seven rounds each, 2026-12-03): committing at once unless 8 or more steps wait, then gathering to 5 ms after the oldest, p50 4.4 to 7.1 ms but the store's threads 0.19 to 0.21 ms per enrollment at 100 concurrent instead of 0.14 to 0.16; 250 µs per waiting step (up to 5 ms), p50 5.9 to 7.4 ms, server CPU +6 % (median of five runs); 1 or 2 ms, or only from 4 to 12 steps waiting, p50 5.4 to 10 ms, CPU +8 to +16 %; never gathering, p99 289 ms. Each bought p50 with capacity. What the steps waiting at the writer do not say is whether more are coming: on the one core the server is given, the writer wakes as soon as one step is queued, so it mostly committed small batches under the 100-host storm (4 context switches per enrollment). The gather now goes by the joins and commits being answered besides the batch's own (PostgreSQL's `commit_siblings`): from 8 of them a batch gathers, a lone step too, whatever waits at the writer. Counted at the writer under the storm: 15, 33 and 50 of them (10th, 50th, 90th percentile); 0, 1 and 10 with hosts arriving at half its capacity. Against gathering from two steps waiting (7 rounds each, three runs): server CPU at 100 concurrent 0.88x, 0.91x and 0.91x, the store's threads 0.077 to 0.083 ms per enrollment instead of 0.113 to 0.120, 1.1 context switches instead of 3.9 to 4.2, so the capacity (and with it the rates of the open-loop rows) rose by about a tenth; the open-loop p50 at half capacity 4.4 to 8.0 ms over four runs. Gathering only from 16 or 32 gathered too seldom under the storm (the store's threads 0.127 and 0.147 ms); never gathering with the writer under `SCHED_BATCH` (no wake-up preemption, so steps pile up while the worker runs) matched it at 100 concurrent (0.587 ms) but held hosts at half capacity longer (p50 9.4 ms). Gathering the full 5 ms from 8 of them still let a burst of hosts arriving at half capacity hold the hosts behind it long enough to make the next burst: over 13 open-loop rounds (`--fleet-rounds`) its p50 swung from 3.5 to 11.9 ms. A batch now gathers 150 µs for each of them, up to 5 ms (from 34): about what one core takes to bring one more step to the writer under the storm, so the storm's batches gather much as before and a burst's 1.2 to 1.8 ms. Against the full 5 ms (2026-12-04, 7 storm rounds and 3 to 5 open-loop rounds, four runs): p50 at half capacity 4.4, 4.0, 3.9 and 3.6 ms (the medians of the rounds) against 11.2, 5.1, 5.1 and 4.2 ms; server CPU at 100 concurrent 0.99x, 1.02x, 1.01x and 1.02x. Tried and not kept the same day: sleeping in 0.5 or 1 ms slices until one brought no step (server CPU +5 % under the storm, whose worker is sometimes busy with handshakes for a slice); counting a join or commit only until its step is answered rather than until its task ends (under the storm the count then stayed under 3 at the writer's decisions, since the steps answered but not yet resumed were most of it, and it hardly gathered: server CPU 1.35x).");
    let _ = writeln!(s, "- The protocol floor does what the design fixes for an enrollment and nothing else; it is not a ceiling for any server of this protocol (it has overheads of its own above the cryptographic primitives). The gap from it to musterd is the price of the durable store, the token records, the audit log and the bookkeeping.");
    let _ = writeln!(s, "- step-ca is configured as `step ca init` would (badger database, text request log on stderr, one JWK provisioner); its token is minted by the generator per request, as a provisioning tool would, and that minting counts as generator CPU.");
    let _ = writeln!(s, "- The design's parts, priced above from the primitives: the second certificate gives the HTTP layer a key of its own, so a host's transport key never serves HTTPS (ECE's split); the proof of possession is what binds the commit to the key the join certified, so a stolen PSK alone registers nothing; asking for a client certificate is how enrolled nodes authenticate on the same port. The second certificate and the client-certificate request cost a few percent of an enrollment or less, against what they protect: both are kept. The proof, checked at every commit, cost 0.068 ms, 11 % of musterd's CPU per enrollment (2026-12-03), on a connection whose peer had just made the reservation and been answered its PSK there: a commit riding the connection whose join made its reservation (every installer's, unless the connection dropped between the two) is now bound to it by that connection, and the proof is checked only at a commit on another connection (docs/protocol.md says what that gives up: a token holder could register a host carrying a copied CSR's key, useless to them). Installers in the field send it as before; nothing changed on the wire. The protocol floor takes the same shortcut (it is allowed every one musterd takes), so both came down by the same 0.07 ms: musterd from 4.536 M to 3.775 M instructions per enrollment and to 0.86x [0.85, 0.88] the CPU of the build before (`--against`, 7 rounds; 0.480 to 0.497 ms in four full runs, 2026-12-03), the floor from 4.226 M to 3.474 M; against cfssl musterd went from 0.89 to 0.94 times its CPU to 0.76 to 0.77 times, against the floor from 1.24 to 1.27 times to 1.26 to 1.29 times (the same absolute gap over a smaller floor).");
    let _ = writeln!(s, "- `--against PATH` storms another build of musterd as `muster-b` in the same rounds, for an A/B comparison of a change. Run with a copy of the same binary it reads 1.10x [1.00, 1.20] over 5 rounds (2026-12-03): differences under about 10 % in CPU are noise on this VM; judge those by instructions.");
    let _ = writeln!(s, "- Where each server's CPU goes (P-256 and X25519 arithmetic, the kernel, SQLite, HTTP, …): `sh scripts/profile.sh [muster|protocol|floor|generator]` samples one of them with perf during these storms.");
    s
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|x| x.1.trim().to_string())
        .unwrap_or_default();
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cfssl = Command::new("cfssl")
        .arg("version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_else(|_| "absent".into());
    format!(
        "{model}, {cores} cores, {mem} MiB, Linux {}; cfssl: {cfssl}",
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_counts_are_written_with_thousands_separated() {
        let written: Vec<String> = [7, 999, 1000, 10_000, 100_000, 1_234_567]
            .into_iter()
            .map(super::hosts)
            .collect();
        assert_eq!(
            written,
            ["7", "999", "1,000", "10,000", "100,000", "1,234,567"]
        );
    }
}
