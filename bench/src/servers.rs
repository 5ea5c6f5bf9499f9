//! The stormed servers' processes: starting musterd, the floors and cfssl (pinned to the
//! servers' core, or under callgrind), and reading their CPU time and memory from /proc.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
/// The core every stormed server is pinned to (`taskset`), when pinning.
pub(crate) static SERVER_CPU: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();

/// Cores the load generator runs on.
pub(crate) static GENERATOR_CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Gives the servers the last core and this process (the load generator, and every thread it
/// starts after this) the others, on a machine with two or more.
pub(crate) fn pin(enabled: bool) {
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

/// Where the servers started from now on write callgrind's counts, when they run under it
/// (`instructions`); `None`: they run natively.
static CALLGRIND: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Servers started from now on run under callgrind, writing into `dir` (`None`: natively).
pub(crate) fn under_callgrind(dir: Option<PathBuf>) {
    if let Ok(mut c) = CALLGRIND.lock() {
        *c = dir;
    }
}

/// valgrind running callgrind, its counts in `DIR/PID.callgrind` (each dump `….N`) and its own
/// messages in `DIR/PID.valgrind.log`: the program and its arguments follow.
pub(crate) fn callgrind(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut out = std::ffi::OsString::from("--callgrind-out-file=");
    out.push(dir.join("%p.callgrind"));
    let mut log = std::ffi::OsString::from("--log-file=");
    log.push(dir.join("%p.valgrind.log"));
    vec!["valgrind".into(), "--tool=callgrind".into(), out, log]
}

/// A command that starts a stormed server: on the servers' core when pinning, under callgrind
/// when counting instructions (its counts in `DIR/PID.callgrind`, each dump `….N`).
pub(crate) fn server_command(program: &Path) -> Command {
    let mut wrap: Vec<std::ffi::OsString> = Vec::new();
    if let Some(cpu) = SERVER_CPU.get().copied().flatten() {
        wrap.extend(["taskset".into(), "-c".into(), cpu.to_string().into()]);
    }
    if let Some(dir) = CALLGRIND.lock().ok().and_then(|c| c.clone()) {
        wrap.extend(callgrind(&dir));
    }
    match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A server process under measurement: CPU time and peak RSS from /proc.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) name: &'static str,
}

impl Server {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU seconds so far.
    pub(crate) fn cpu(&self) -> f64 {
        cpu_seconds(&self.pid().to_string())
    }

    /// Context switches of all its threads so far, voluntary (it waited: a lock, a disk, a
    /// queue) and not (its time ran out).
    pub(crate) fn switches(&self) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return 0;
        };
        let mut n = 0;
        for task in tasks.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            n += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
        n
    }

    /// CPU seconds so far of its threads whose names start with `prefix` (musterd's store
    /// threads are `muster-sqlite-…`): those alive now, so only long-lived threads add up.
    pub(crate) fn cpu_of_threads(&self, prefix: &str) -> f64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return 0.0;
        };
        let mut secs = 0.0;
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.starts_with(prefix) {
                let tid = task.file_name().to_string_lossy().into_owned();
                let (user, system) = cpu_split(&format!("{}/task/{tid}", self.pid()));
                secs += user + system;
            }
        }
        secs
    }

    /// System CPU seconds so far: the kernel working for it (system calls, its sockets' and
    /// files' work done in its time).
    pub(crate) fn system(&self) -> f64 {
        cpu_split(&self.pid().to_string()).1
    }

    /// Peak resident memory since the last reset, KiB.
    pub(crate) fn peak_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Stops it now (SIGKILL); reaped when dropped. A peer done with its storms stops, so
    /// its background work (a Go collector, a database compacting) leaves the servers' core
    /// to the storms of musterd alone.
    pub(crate) fn stop(&self) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }

    pub(crate) fn reset_peak(&self) {
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
pub(crate) fn cpu_seconds(pid: &str) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// User and system CPU seconds of process `pid` so far, apart.
pub(crate) fn cpu_split(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 of stat; after the command name, indexes 11 and 12.
    let tick = clock_ticks();
    let at = |i: usize| f.get(i).copied().unwrap_or(0) as f64 / tick;
    (at(11), at(12))
}

pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

pub(crate) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
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

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) async fn wait_port(port: u16) -> anyhow::Result<()> {
    // Generous: a server under callgrind takes seconds to start.
    let deadline = Instant::now() + Duration::from_secs(90);
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

pub(crate) fn tool(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into())
}

/// `musterd` arguments that make the persistent allocator token the storms enroll with.
pub(crate) const ALLOCATOR_TOKEN: [&str; 7] = [
    "token",
    "create",
    "--persistent",
    "--roles",
    "allocator",
    "--output",
    "json",
];

/// A coordinator on the embedded store in `dir`, and a persistent allocator token for it.
/// `binary` is another build of musterd to storm as `muster-b` beside this one (`--against`).
pub(crate) async fn start_musterd(
    dir: &Path,
    binary: Option<&Path>,
) -> anyhow::Result<(Server, u16, String)> {
    let musterd = match binary {
        Some(b) => b.to_path_buf(),
        None => sibling("musterd")?,
    };
    let port = free_port()?;
    let data = dir.join("musterd");
    let config = dir.join("musterd.yaml");
    std::fs::write(
        &config,
        // Room for the storm of 10,000 in flight (the default is 4,096 connections).
        format!(
            "listen: 127.0.0.1:{port}\nadvertise: [\"127.0.0.1:{port}\"]\nmax_connections: 12000\n"
        ),
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
    create.args(ALLOCATOR_TOKEN);
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
        name: if binary.is_some() {
            "muster-b"
        } else {
            "muster"
        },
    };
    wait_port(port).await?;
    Ok((server, port, token))
}

/// A floor server process (`muster-storm floor`); `name` tells which of its two floors it is
/// stormed as.
pub(crate) async fn start_floor(
    dir: &Path,
    name: &'static str,
) -> anyhow::Result<(Server, crate::floor::Ready)> {
    let port = free_port()?;
    let child = server_command(&std::env::current_exe()?)
        .args(["floor", "--listen", &format!("127.0.0.1:{port}"), "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()?;
    let server = Server { child, name };
    wait_port(port).await?;
    // The floor listens, then writes ready.json: under callgrind there is time between.
    let file = dir.join("ready.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !file.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready: crate::floor::Ready = serde_json::from_slice(&std::fs::read(&file)?)?;
    Ok((server, ready))
}

/// `cfssl serve` over TLS with an authenticated signing profile, its CA made like musterd's.
pub(crate) async fn start_cfssl(
    dir: &Path,
) -> anyhow::Result<Option<(Server, u16, Vec<u8>, Vec<String>)>> {
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
