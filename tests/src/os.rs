//! The operating system around Muster, for the packaging and cloud-init tests: the workspace's
//! files, the built packages, a cached Debian root with copy-on-write views of it, network
//! namespaces joined by a veth pair.
//!
//! Everything here is made by the test and removed by `Drop`: nothing touches the machine's
//! own root, network or mounts.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::{bin, tool};

/// The workspace's top folder.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The cargo target folder the test binaries run from.
pub fn target_dir() -> PathBuf {
    bin("muster")
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A package built by `packaging/build`: `kind` is "deb" or "rpm".
pub fn package(name: &str, kind: &str) -> anyhow::Result<PathBuf> {
    let dir = target_dir().join("packages");
    let wanted = |f: &str| match kind {
        "deb" => f.starts_with(&format!("{name}_")) && f.ends_with("_amd64.deb"),
        _ => {
            f.starts_with(&format!("{name}-"))
                && f.ends_with(".x86_64.rpm")
                && f[name.len() + 1..].starts_with(|c: char| c.is_ascii_digit())
        }
    };
    for e in std::fs::read_dir(&dir).with_context(|| {
        format!(
            "{} is missing: run packaging/build (the README's test command does)",
            dir.display()
        )
    })? {
        let e = e?;
        if wanted(&e.file_name().to_string_lossy()) {
            return Ok(e.path());
        }
    }
    bail!(
        "no {kind} of {name} in {}: run packaging/build",
        dir.display()
    )
}

/// The Debian root the OS tests start from, made once by `scripts/debian-root.sh` and kept
/// in the target folder between runs. Never written to: tests work on an [`Overlay`].
pub fn debian_root() -> anyhow::Result<PathBuf> {
    static MADE: OnceLock<Mutex<()>> = OnceLock::new();
    let _one_at_a_time = MADE
        .get_or_init(|| Mutex::new(()))
        .lock()
        .map_err(|_| anyhow::anyhow!("an earlier test panicked while making the Debian root"))?;
    let dir = target_dir().join("debian-root");
    tool(
        Command::new("sh")
            .arg(repo().join("scripts/debian-root.sh"))
            .arg(&dir),
    )
    .context("making the Debian root")?;
    Ok(dir)
}

/// A copy-on-write view of a root: overlayfs with the root below and a scratch folder on
/// top, so every change a test makes is in `upper` and the cached root stays as it was.
pub struct Overlay {
    pub dir: tempfile::TempDir,
}

impl Overlay {
    pub fn new(lower: &Path) -> anyhow::Result<Overlay> {
        let dir = tempfile::Builder::new().prefix("muster-root-").tempdir()?;
        for d in ["upper", "work", "root"] {
            std::fs::create_dir(dir.path().join(d))?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            dir.path().join("upper").display(),
            dir.path().join("work").display()
        );
        tool(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &opts])
                .arg(dir.path().join("root")),
        )?;
        Ok(Overlay { dir })
    }

    /// The merged root.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// What has changed relative to the lower root.
    pub fn upper(&self) -> PathBuf {
        self.dir.path().join("upper")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// A command run inside the root (chroot), with /proc mounted for it in a mount
    /// namespace of its own.
    pub fn chroot(&self, script: &str) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "set -e; r=$1; shift; mount -t proc proc \"$r/proc\"; exec chroot \"$r\" /bin/sh -c \"$0\" \"$@\"",
            )
            .arg(script)
            .arg(self.root());
        c.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C");
        c
    }

    /// Runs `script` in the root and returns its output, failing with it.
    pub fn run(&self, script: &str) -> anyhow::Result<String> {
        tool(&mut self.chroot(script))
    }

    /// `stat -c '%U:%G %a'` of a path in the root, names resolved by the root's own files.
    pub fn stat(&self, rel: &str) -> anyhow::Result<String> {
        Ok(self
            .run(&format!("stat -c '%U:%G %a' '{rel}'"))?
            .trim()
            .to_string())
    }
}

/// Runs `$3` in root `$1` as host `$2`: in PID, UTS and mount namespaces of its own, with
/// /proc, /sys, /run and a minimal /dev (/dev/null over /dev/console) mounted for it.
const INSTANCE: &str = r#"
set -eu
r=$1; name=$2
hostname "$name"
mount -t proc proc "$r/proc"
mount -t sysfs sysfs "$r/sys"
mount -t tmpfs tmpfs "$r/run"
mount -t tmpfs -o mode=0755 tmpfs "$r/dev"
for d in null zero full random urandom tty; do
    touch "$r/dev/$d"
    mount --bind "/dev/$d" "$r/dev/$d"
done
touch "$r/dev/console"
mount --bind /dev/null "$r/dev/console"
ln -s /proc/self/fd "$r/dev/fd"
mkdir "$r/dev/pts" "$r/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$r/dev/pts"
ln -s pts/ptmx "$r/dev/ptmx"
exec chroot "$r" /bin/sh -c "$3"
"#;

/// cloud-init's four boot stages, in order.
const STAGES: &str = "cloud-init init --local; cloud-init init; \
    cloud-init modules --mode config; cloud-init modules --mode final";

impl Overlay {
    /// Runs `script` in this root as host `name`, in network namespace `netns` (see
    /// [`INSTANCE`]).
    pub fn instance(&self, netns: &str, name: &str, script: &str) -> anyhow::Result<crate::Run> {
        let out = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(["unshare", "--uts", "--mount", "--pid", "--fork"])
            .args(["--propagation", "private", "--", "sh", "-c", INSTANCE, "sh"])
            .arg(self.root())
            .arg(name)
            .arg(script)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LC_ALL", "C")
            .output()?;
        Ok(crate::Run::from(out))
    }

    /// Boots cloud-init over a NoCloud seed in this root as host `name` in network namespace
    /// `netns`: its four stages, as the boot runs them. Module lists are pinned and the network
    /// config, growpart and resize_rootfs are off, so nothing reaches the machine.
    pub fn boot_cloud_init(
        &self,
        netns: &str,
        name: &str,
        user_data: &str,
    ) -> anyhow::Result<crate::Run> {
        self.boot_cloud_init_with(
            netns,
            name,
            user_data,
            Some("[package_update_upgrade_install, scripts_user, final_message]"),
        )
    }

    /// [`Overlay::boot_cloud_init`] with the final stage's modules given (`None`: the root's
    /// own list, as its packages left it).
    pub fn boot_cloud_init_with(
        &self,
        netns: &str,
        name: &str,
        user_data: &str,
        final_modules: Option<&str>,
    ) -> anyhow::Result<crate::Run> {
        let seed = self.path("var/lib/cloud/seed/nocloud");
        std::fs::create_dir_all(&seed)?;
        std::fs::write(
            seed.join("meta-data"),
            format!("instance-id: iid-{name}\nlocal-hostname: {name}\n"),
        )?;
        std::fs::write(seed.join("user-data"), user_data)?;
        let mut cfg = "datasource_list: [NoCloud, None]\n\
             network: {config: disabled}\n\
             growpart: {mode: \"off\"}\n\
             resize_rootfs: false\n\
             cloud_init_modules: [write_files]\n\
             cloud_config_modules: [runcmd]\n"
            .to_string();
        if let Some(m) = final_modules {
            cfg.push_str(&format!("cloud_final_modules: {m}\n"));
        }
        std::fs::write(self.path("etc/cloud/cloud.cfg.d/99-muster-test.cfg"), cfg)?;
        self.instance(netns, name, STAGES)
    }

    /// What systemd does to start a `Type=oneshot` unit of this root: if its
    /// `ConditionPathExists=` holds, `ExecStart=` then, if that succeeded, `ExecStartPost=`.
    /// As a shell snippet to run inside the root.
    pub fn oneshot_unit(&self, unit: &str) -> anyhow::Result<String> {
        let text = std::fs::read_to_string(self.path(&format!("lib/systemd/system/{unit}")))?;
        let get = |key: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_string)
                .collect()
        };
        anyhow::ensure!(get("Type") == ["oneshot"], "{unit} is not Type=oneshot");
        let conditions = get("ConditionPathExists")
            .iter()
            .map(|p| format!("[ -e '{p}' ]"))
            .collect::<Vec<_>>();
        let mut run = get("ExecStart");
        run.extend(get("ExecStartPost"));
        anyhow::ensure!(!run.is_empty(), "{unit} runs nothing");
        Ok(format!(
            "if {}; then {}; else echo '{unit}: condition failed, skipped'; fi",
            if conditions.is_empty() {
                "true".to_string()
            } else {
                conditions.join(" && ")
            },
            run.join(" && ")
        ))
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(self.root())
            .status();
    }
}

/// Two network namespaces joined by a veth pair: `server` at 10.213.0.1/24 and `host` at
/// 10.213.0.2/24, each with its loopback up. Both go away on drop, the veth pair with them.
pub struct NetPair {
    pub server: String,
    pub host: String,
}

impl NetPair {
    pub const SERVER_IP: &'static str = "10.213.0.1";
    pub const HOST_IP: &'static str = "10.213.0.2";

    pub fn new() -> anyhow::Result<NetPair> {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let pair = NetPair {
            server: format!("mst{id}s"),
            host: format!("mst{id}h"),
        };
        let (vs, vh) = (format!("mv{id}s"), format!("mv{id}h"));
        let ip = |args: &[&str]| tool(Command::new("ip").args(args));
        ip(&["netns", "add", &pair.server])?;
        ip(&["netns", "add", &pair.host])?;
        // Made inside the namespaces: the machine's own network never sees the pair.
        ip(&[
            "-n",
            &pair.server,
            "link",
            "add",
            &vs,
            "type",
            "veth",
            "peer",
            "name",
            &vh,
            "netns",
            &pair.host,
        ])?;
        for (ns, dev, addr) in [
            (&pair.server, &vs, Self::SERVER_IP),
            (&pair.host, &vh, Self::HOST_IP),
        ] {
            let cidr = format!("{addr}/24");
            ip(&["-n", ns, "addr", "add", &cidr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.server, &self.host] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}
