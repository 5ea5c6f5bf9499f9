//! The testkit: starts the real `musterd` on 127.0.0.1 at a free port and runs the real
//! `muster`, with `curl` and `openssl` as the outside tools a person would use.
//!
//! The binaries come from the same target folder as the test (`cargo build --workspace --bins`
//! first; the README's test command does it). They are debug builds, which have the crash
//! points the crash tests use (`MUSTER_FAILPOINT`); release builds have none.

use anyhow::{bail, Context};
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod os;

mod etcd;
pub use etcd::Etcd;

pub mod admin;
pub use admin::{expect_refused, Admin, Refused};

/// Path of a workspace binary next to the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/e2e-HASH -> target/debug/NAME
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// The static release installer built by `scripts/build-static.sh`.
pub fn static_installer() -> PathBuf {
    let debug = bin("muster");
    let target = debug
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let p = target.join("x86_64-unknown-linux-gnu/release/muster");
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-static.sh first",
        p.display()
    );
    p
}

/// A port to listen on, free now. Taken at random below the kernel's ephemeral range
/// (32768 and up on Linux), so the outgoing connections of tests running alongside (thousands,
/// in the storms) cannot take it between this check and the server's bind.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A running coordinator in its own scratch data folder.
pub struct Coordinator {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub secrets: Value,
    /// The network namespace musterd runs in, if not the test's own.
    pub netns: Option<String>,
    file_limit: Option<u64>,
    data_dir: PathBuf,
    config_file: PathBuf,
    child: Option<Child>,
}

/// Extra server config lines (YAML), and where the coordinator runs.
#[derive(Default, Clone)]
pub struct Opts {
    pub config: String,
    pub start: bool,
    /// Run musterd (and `curl`, `api`) in this network namespace, listening on every address.
    pub netns: Option<String>,
    /// The addresses put into tokens, comma-separated (default 127.0.0.1:PORT); `{port}`
    /// stands for the port.
    pub advertise: Option<String>,
    /// Listen on this port rather than a free one picked here.
    pub port: Option<u16>,
    /// Start `serve` with this many open files at most (soft and hard), through `prlimit`.
    pub file_limit: Option<u64>,
}

/// `cmd`, run inside network namespace `ns` if there is one.
pub fn in_netns(ns: Option<&str>, program: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

impl Coordinator {
    pub fn start() -> anyhow::Result<Coordinator> {
        Coordinator::with(Opts {
            start: true,
            ..Opts::default()
        })
    }

    /// Initializes a platform and, if `opts.start`, serves it.
    pub fn with(opts: Opts) -> anyhow::Result<Coordinator> {
        Coordinator::make(opts, None)
    }

    /// Another coordinator over the platform `first` made in their shared store (etcd in
    /// `opts.config`): no init, the same admin secrets.
    pub fn alongside(first: &Coordinator, opts: Opts) -> anyhow::Result<Coordinator> {
        Coordinator::make(opts, Some(first.secrets.clone()))
    }

    fn make(opts: Opts, shared: Option<Value>) -> anyhow::Result<Coordinator> {
        let dir = tempfile::tempdir()?;
        let port = opts.port.unwrap_or_else(free_port);
        let listen = if opts.netns.is_some() {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let advertise = opts
            .advertise
            .as_deref()
            .unwrap_or("127.0.0.1:{port}")
            .replace("{port}", &port.to_string());
        let advertise = advertise
            .split(',')
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "listen: {listen}:{port}\nadvertise: [{advertise}]\n{}",
            opts.config
        );
        std::fs::write(dir.path().join("server.yaml"), config)?;
        let musterd = |args: &[&str]| {
            let mut c = Command::new(bin("musterd"));
            c.args(args)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .arg("--config")
                .arg(dir.path().join("server.yaml"));
            c
        };
        let secrets = match shared {
            // A new coordinator over the shared store: its data folder gets the unseal key
            // from the emergency token.
            Some(secrets) => {
                let token = secrets["emergency_token"].as_str().unwrap_or_default();
                tool(musterd(&["unseal"]).env("MUSTER_EMERGENCY_TOKEN", token))
                    .context("musterd unseal")?;
                secrets
            }
            None => serde_json::from_str(
                &tool(&mut musterd(&["init", "--output", "json"])).context("musterd init")?,
            )
            .context("init --output json")?,
        };
        let mut c = Coordinator {
            data_dir: dir.path().join("data"),
            config_file: dir.path().join("server.yaml"),
            dir,
            port,
            secrets,
            netns: opts.netns.clone(),
            file_limit: opts.file_limit,
            child: None,
        };
        if opts.start {
            c.serve()?;
        }
        Ok(c)
    }

    /// A musterd over a config file and data folder made elsewhere (by `muster install`
    /// recovering the coordinator role), listening on `port`, with the platform's `secrets`.
    /// Not started.
    pub fn adopt(
        config_file: &Path,
        data_dir: &Path,
        port: u16,
        secrets: Value,
    ) -> anyhow::Result<Coordinator> {
        Ok(Coordinator {
            dir: tempfile::tempdir()?,
            port,
            secrets,
            netns: None,
            file_limit: None,
            data_dir: data_dir.to_path_buf(),
            config_file: config_file.to_path_buf(),
            child: None,
        })
    }

    pub fn data(&self) -> PathBuf {
        self.data_dir.clone()
    }

    /// The process id of the serving musterd.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("musterd.log")).unwrap_or_default()
    }

    pub fn serve(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("musterd.log"))?;
        let mut cmd = match self.file_limit {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(bin("musterd"));
                c
            }
            None => in_netns(self.netns.as_deref(), &bin("musterd")),
        };
        let child = cmd
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data())
            .arg("--config")
            .arg(&self.config_file)
            .env("MUSTERD_LOG", "info,musterd=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(o) = self.curl(&["-sf", &self.url("/healthz")]) {
                if o.status.success() {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("musterd did not become healthy; log:\n{}", self.log())
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn secret(&self, key: &str) -> String {
        self.secrets[key].as_str().unwrap_or_default().to_string()
    }

    pub fn user_pass(&self) -> String {
        format!("admin:{}", self.secret("admin_password"))
    }

    /// Runs curl against this coordinator, trusting its CA.
    pub fn curl(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(in_netns(self.netns.as_deref(), Path::new("curl"))
            .arg("--cacert")
            .arg(self.data().join("ca.pem"))
            .args(args)
            .output()?)
    }

    /// An admin API call: returns (HTTP status, JSON body).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let up = self.user_pass();
        let url = self.url(path);
        let mut args = vec![
            "-s",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
            "-u",
            &up,
            "-H",
            "Content-Type: application/json",
            &url,
        ];
        if let Some(b) = body {
            args.push("-d");
            args.push(b);
        }
        Ok(status_and_json(&self.curl(&args)?))
    }

    /// POSTs `body` as JSON to `path`, unauthenticated, from a file (so a token in it never
    /// reaches an argument list); `extra` goes to curl first. The status and the parsed answer.
    pub fn post_json(
        &self,
        path: &str,
        body: &Value,
        extra: &[&str],
    ) -> anyhow::Result<(u16, Value)> {
        let f = tempfile::NamedTempFile::new_in(self.dir.path())?;
        std::fs::write(f.path(), body.to_string())?;
        let at = format!("@{}", f.path().display());
        let mut args: Vec<&str> = extra.to_vec();
        args.extend([
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &at,
        ]);
        let url = self.url(path);
        args.push(&url);
        Ok(status_and_json(&self.curl(&args)?))
    }

    /// How many times the token with id `id` has been used, from the API.
    pub fn token_uses(&self, id: &str) -> anyhow::Result<Option<u64>> {
        let tokens = self.admin().tokens()?;
        Ok(tokens
            .iter()
            .find(|t| t.token_id == id)
            .map(|t| u64::from(t.uses)))
    }

    /// Creates a token through the API with its install line
    /// (`?install_command=true`): (token, token_id, line).
    pub fn token_with_line(&self, body: &str) -> anyhow::Result<(String, String, String)> {
        let (code, v) = self.api(
            "POST",
            "/api/v1/platform/configuration/security/enrollment-tokens?install_command=true",
            Some(body),
        )?;
        if code != 200 {
            bail!("creating a token: HTTP {code}: {v}");
        }
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Ok((s("token"), s("token_id"), s("install_command")))
    }

    /// The host names of every registered runner, as `GET …/runners` lists them.
    pub fn hostnames(&self) -> anyhow::Result<Vec<String>> {
        let runners = self.admin().runners()?;
        Ok(runners.into_iter().map(|r| r.public_hostname).collect())
    }

    /// Creates a token through the API from a raw JSON `body`; returns (token, token_id).
    pub fn token(&self, body: &str) -> anyhow::Result<(String, String)> {
        let (code, v) = self.api(
            "POST",
            "/api/v1/platform/configuration/security/enrollment-tokens",
            Some(body),
        )?;
        if code != 200 {
            bail!("creating a token: HTTP {code}: {v}");
        }
        Ok((
            v["token"].as_str().unwrap_or_default().into(),
            v["token_id"].as_str().unwrap_or_default().into(),
        ))
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A scratch root for one host, with a `muster` user in its etc/passwd.
pub struct Host {
    pub root: tempfile::TempDir,
    pub name: String,
}

pub const MUSTER_UID: u32 = 4242;

impl Host {
    pub fn new(name: &str) -> anyhow::Result<Host> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join("etc"))?;
        std::fs::write(root.path().join("etc/passwd"), format!("root:x:0:0::/root:/bin/sh\nmuster:x:{MUSTER_UID}:{MUSTER_UID}::/var/lib/muster:/usr/sbin/nologin\n"))?;
        std::fs::write(
            root.path().join("etc/group"),
            format!("root:x:0:\nmuster:x:{MUSTER_UID}:\n"),
        )?;
        Ok(Host {
            root,
            name: name.into(),
        })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    /// `muster install` into this root with the token in the environment.
    pub fn install_cmd(&self, c: &str, token: &str) -> Command {
        self.install_cmd_with(&bin("muster"), c, token)
    }

    /// `muster install` with a given installer binary.
    pub fn install_cmd_with(&self, exe: &Path, c: &str, token: &str) -> Command {
        let mut cmd = Command::new(exe);
        cmd.args([
            "install",
            "--output",
            "json",
            "--timeout",
            "20s",
            "--coordinator-host",
            c,
            "--hostname",
            &self.name,
            "--root",
        ])
        .arg(self.root.path())
        .env("MUSTER_ROLES_TOKEN", token)
        .env_remove("MUSTER_FAILPOINT");
        cmd
    }

    /// Waits (up to 30 s) for the installer `child`, recovering the coordinator role, to write
    /// musterd's config; its path. Fails with the installer's output if it ends first.
    pub fn wait_for_musterd_yaml(&self, child: &mut Child) -> anyhow::Result<PathBuf> {
        let yaml = self.path("etc/muster/musterd.yaml");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !yaml.exists() && Instant::now() < deadline && child.try_wait()?.is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !yaml.exists() {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("no musterd.yaml from the installer: {err}");
        }
        Ok(yaml)
    }

    pub fn install(&self, c: &str, token: &str, extra: &[&str]) -> anyhow::Result<Run> {
        let out = self.install_cmd(c, token).args(extra).output()?;
        Ok(Run::from(out))
    }

    /// The subject alternative names of this host's HTTP certificate, as openssl prints them.
    pub fn http_sans(&self) -> anyhow::Result<String> {
        tool(
            Command::new("openssl")
                .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
                .arg(self.path("etc/muster/tls/http.crt")),
        )
    }

    pub fn muster(&self, args: &[&str]) -> anyhow::Result<Run> {
        let out = Command::new(bin("muster"))
            .args(args)
            .arg("--root")
            .arg(self.root.path())
            .output()?;
        Ok(Run::from(out))
    }

    pub fn state(&self) -> Value {
        std::fs::read(self.path("var/lib/muster/enrollment.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// `stat -c '%u:%g %a'` of a file, from the real tool.
    pub fn stat(&self, rel: &str) -> String {
        let out = Command::new("stat")
            .args(["-c", "%u:%g %a"])
            .arg(self.path(rel))
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}

/// Starts every command at once and waits for all: the racing installers of the tests.
pub fn run_all(cmds: impl IntoIterator<Item = Command>) -> anyhow::Result<Vec<Run>> {
    let children: Vec<Child> = cmds
        .into_iter()
        .map(|mut c| c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn())
        .collect::<Result<_, _>>()?;
    Ok(children
        .into_iter()
        .map(|ch| ch.wait_with_output().map(Run::from))
        .collect::<Result<_, _>>()?)
}

/// A finished command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or(Value::Null)
    }
}

/// Everything under `dir`, for comparing a whole tree before and after: each path (relative,
/// folders too) with its owner, mode, kind and, for files, the SHA-256 of its content.
pub fn tree(dir: &Path) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            let m = std::fs::symlink_metadata(&p)?;
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p)?.display())
            } else if m.is_dir() {
                todo.push(p.clone());
                "dir".to_string()
            } else {
                format!(
                    "file {}",
                    hex::encode(sha2::Sha256::digest(std::fs::read(&p)?))
                )
            };
            let rel = p.strip_prefix(dir)?.display().to_string();
            out.insert(
                rel,
                format!("{}:{} {:o} {what}", m.uid(), m.gid(), m.mode() & 0o7777),
            );
        }
    }
    Ok(out)
}

/// The install line in what `musterd token create` printed (the line that starts with curl).
pub fn printed_install_line(out: &str) -> &str {
    out.lines()
        .map(str::trim)
        .find(|l| l.starts_with("curl "))
        .unwrap_or_default()
}

/// A command line typed into a shell, as a person pastes it: read by `sh` from its input, so
/// it is in no process's argument list (as `sh -c LINE` would put it).
pub fn typed(line: &str) -> anyhow::Result<Run> {
    use std::io::Write;
    let mut child = Command::new("sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{line}")?;
    }
    Ok(Run::from(child.wait_with_output()?))
}

/// The `curl … /install.sh` part of a printed install line, run as typed: whether curl took
/// the coordinator's key for the line's pin (curl's exit code, 90 when it did not).
pub fn install_line_fetch(line: &str) -> anyhow::Result<Run> {
    let (fetch, _) = line
        .split_once(" | ")
        .ok_or_else(|| anyhow::anyhow!("no pipe in the install line {line:?}"))?;
    typed(&format!("{fetch} > /dev/null"))
}

/// Runs a command and returns its stdout, failing with its stderr.
pub fn tool(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into())
}

/// The status and the parsed JSON answer of a curl run with `-w "\n%{http_code}"`.
pub fn status_and_json(out: &Output) -> (u16, Value) {
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}
