//! Crash safety: installers and `musterd` killed at every step and at random moments.

use crate::common::*;
const AT_ONCE: usize = 64;
const INSTALLERS: usize = 1000;
use muster_tests::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn installer(h: &Host, c: &Coordinator, token: &str) -> anyhow::Result<Child> {
    Ok(Command::new(bin("muster"))
        .args(["install", "--output", "json", "--timeout", "300s"])
        .args([
            "--coordinator-host",
            &c.host(),
            "--hostname",
            &h.name,
            "--root",
        ])
        .arg(h.root.path())
        .env("MUSTER_ROLES_TOKEN", token)
        .env_remove("MUSTER_FAILPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// A small deterministic generator, so a failing run can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

#[test]
fn killed_at_every_step_a_rerun_converges() -> R {
    let c = Coordinator::start()?;
    for point in [
        "after-keys",
        "write-before-rename",
        "after-join",
        "after-files",
        "after-commit-answer",
    ] {
        let (tok, id) = c.token(r#"{"persistent":true,"roles":["allocator"],"max_uses":1}"#)?;
        let h = Host::new(&format!("crash-{point}"))?;
        let killed = Run::from(
            h.install_cmd(&c.host(), &tok)
                .env("MUSTER_FAILPOINT", point)
                .output()?,
        );
        assert_eq!(killed.code, 137, "{point}: {killed:?}");
        let r = h.install(&c.host(), &tok, &[])?;
        assert_eq!(
            r.code, 0,
            "{point}: the one-use token must still enroll the host: {r:?}"
        );
        assert_eq!(c.token_uses(&id)?.unwrap_or(999), 1, "{point}");
        let tls = h.path("etc/muster/tls");
        tool(Command::new("openssl").current_dir(&tls).args([
            "verify",
            "-CAfile",
            "transport-ca.pem",
            "node.crt",
        ]))?;
        let litter: Vec<_> = walk(h.root.path())
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(litter.is_empty(), "{point}: temporaries left: {litter:?}");
        if point == "after-join" || point == "after-files" {
            // Retry-safe redemption: the same key got the same node id back.
            assert!(
                r.stderr.contains("resuming") || r.json()["result"] == "enrolled",
                "{point}"
            );
        }
    }
    assert_eq!(c.admin().runners()?.len(), 5);
    Ok(())
}

#[test]
fn killing_musterd_and_installers_during_a_storm_loses_and_doubles_nothing() -> R {
    let c = Coordinator::start()?;
    storm(&mut [c], INSTALLERS, AT_ONCE, Some(INSTALLERS))
}

/// The same storm on etcd, through two coordinators (each installer enrolls through one of
/// them), each killed now and then, with a token without a use limit (the path where a
/// coordinator reads least, from what it remembers): a use counted on one and a commit on the
/// other, or an answer lost with a coordinator, must still add up to one use and one host per
/// installer.
#[test]
fn on_etcd_killing_coordinators_and_installers_during_a_storm_loses_and_doubles_nothing() -> R {
    let etcd = Etcd::start(1)?;
    let (c1, c2) = pair(&etcd)?;
    storm(&mut [c1, c2], 300, 32, None)
}

/// `installers` hosts enrolled with one token, `at_once` at a time, through `coordinators`
/// (host i through coordinator i mod n), while coordinators are killed (SIGKILL) and started
/// again and installers are killed and run again; then every host is registered once, every
/// use counted once, and the audit log says so. A token with a use limit (`max_uses`) then
/// refuses one more host.
fn storm(
    coordinators: &mut [Coordinator],
    installers: usize,
    at_once: usize,
    max_uses: Option<usize>,
) -> R {
    let n = coordinators.len();
    let limit = max_uses.map_or(String::new(), |m| format!(r#","max_uses":{m}"#));
    let (tok, id) = coordinators[0].token(&format!(
        r#"{{"persistent":true,"roles":["allocator"]{limit}}}"#
    ))?;
    let hosts: Vec<Host> = (0..installers)
        .map(|i| Host::new(&format!("storm-{i}")))
        .collect::<anyhow::Result<_>>()?;
    let mut rng = Lcg(0x6d75_7374_6572);

    let mut next = 0usize;
    let mut running: Vec<(usize, Child)> = Vec::new();
    let mut rerun: Vec<usize> = Vec::new();
    let mut failed: Vec<(usize, i32)> = Vec::new();
    let mut done = 0usize;
    let (mut server_kills, mut installer_kills) = (0usize, 0usize);
    let mut next_server_kill = Instant::now() + Duration::from_millis(300 + rng.next(700));
    let start = Instant::now();
    while done < installers {
        // Keep `at_once` installers running; killed ones go again first.
        while running.len() < at_once {
            let i = match rerun.pop() {
                Some(i) => i,
                None if next < installers => {
                    next += 1;
                    next - 1
                }
                None => break,
            };
            running.push((i, installer(&hosts[i], &coordinators[i % n], &tok)?));
        }
        // A musterd dies without warning a few times, and comes back on the same address.
        if server_kills < 8 && Instant::now() >= next_server_kill {
            let c = &mut coordinators[rng.next(n as u64) as usize];
            c.stop();
            server_kills += 1;
            std::thread::sleep(Duration::from_millis(rng.next(300)));
            c.serve()?;
            next_server_kill = Instant::now() + Duration::from_millis(400 + rng.next(1500));
        }
        // Now and then an installer dies too, at whatever step it is.
        if installer_kills < 100 && !running.is_empty() && rng.next(20) == 0 {
            let k = rng.next(running.len() as u64) as usize;
            let (i, mut child) = running.swap_remove(k);
            let _ = child.kill();
            let _ = child.wait();
            installer_kills += 1;
            rerun.push(i);
        }
        let mut still = Vec::new();
        for (i, mut child) in running.drain(..) {
            match child.try_wait()? {
                None => still.push((i, child)),
                Some(st) if st.success() => done += 1,
                Some(st) => {
                    failed.push((i, st.code().unwrap_or(-1)));
                    done += 1;
                }
            }
        }
        running = still;
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed();
    let c = &coordinators[0];
    let logs = || {
        coordinators
            .iter()
            .map(Coordinator::log)
            .collect::<Vec<_>>()
    };
    assert!(
        failed.is_empty(),
        "installers failed: {failed:?}\n{:?}",
        logs()
    );

    // Every installer holds an acknowledged enrollment; the registry has each, once.
    let (_, v) = c.api("GET", "/api/v1/platform/infrastructure/runners", None)?;
    let runners: HashMap<String, String> = v["runners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["public_hostname"].as_str()?.to_string(),
                r["runner_id"].as_str()?.to_string(),
            ))
        })
        .collect();
    let mut ids = HashSet::new();
    let mut missing = Vec::new();
    for h in &hosts {
        let st = h.state();
        let node = st["node_id"].as_str().unwrap_or_default().to_string();
        assert_eq!(st["stage"], "committed", "{}: {st}", h.name);
        match runners.get(&h.name) {
            Some(n) if *n == node => {}
            _ => missing.push(h.name.clone()),
        }
        assert!(ids.insert(node), "node id issued twice");
    }
    assert!(
        missing.is_empty(),
        "acknowledged but not registered: {missing:?}"
    );
    assert_eq!(runners.len(), installers);
    // One use per host: none lost, none spent twice.
    let uses = c.token_uses(&id)?;
    assert_eq!(uses, Some(installers as u64));
    // The audit log tells the same story: a use and a commit for each registered host, once.
    let (_, v) = c.api(
        "GET",
        &format!("{}/_audit?limit=10000", muster_protocol::paths::TOKENS),
        None,
    )?;
    let mut audited: HashMap<(String, String), usize> = HashMap::new();
    for e in v["events"].as_array().into_iter().flatten() {
        let (Some(event), Some(node)) = (e["event"].as_str(), e["node_id"].as_str()) else {
            continue;
        };
        *audited
            .entry((event.to_string(), node.to_string()))
            .or_default() += 1;
    }
    let count = |event: &str| audited.keys().filter(|(e, _)| e == event).count();
    for node in runners.values() {
        for event in ["used", "committed"] {
            let n = audited.get(&(event.to_string(), node.clone())).copied();
            assert_eq!(n, Some(1), "{event} events for {node}");
        }
    }
    assert_eq!(
        (count("used"), count("committed")),
        (installers, installers),
        "audited uses and commits"
    );
    // And one more is refused: the limit holds.
    if max_uses.is_some() {
        let r = Host::new("one-too-many")?.install(&c.host(), &tok, &[])?;
        assert_eq!(
            r.json()["code"],
            Value::from("token.use_limit_reached"),
            "{r:?}"
        );
    }
    println!(
        "crash storm: {installers} installers ({at_once} at once, {n} coordinator(s)) in {:.1} s; \
         musterd killed (SIGKILL) and restarted {server_kills} times, installers killed {installer_kills} times \
         and run again; {} hosts registered, {} distinct node ids, token uses {}, audited uses {} \
         and commits {}, 0 failed",
        took.as_secs_f64(),
        runners.len(),
        ids.len(),
        uses.unwrap_or(0),
        count("used"),
        count("committed")
    );
    Ok(())
}

/// The crash points are in debug builds only: the shipped (static, release) installer given
/// `MUSTER_FAILPOINT` at a point a debug build dies at enrolls as if it were not there.
#[test]
fn the_shipped_installer_has_no_crash_points() -> R {
    let c = Coordinator::start()?;
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let h = Host::new("no-failpoints")?;
    let r = Run::from(
        h.install_cmd_with(&static_installer(), &c.host(), &tok)
            .env("MUSTER_FAILPOINT", "after-join")
            .output()?,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(h.state()["stage"], "committed");
    Ok(())
}
