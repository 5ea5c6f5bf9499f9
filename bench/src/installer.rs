//! The real installer, timed: five enrollments by the static `muster` binary into scratch
//! roots, beside the storms' simulated ones.

use crate::report::ms;
use anyhow::bail;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Wall time of one real enrollment by the `muster` binary, and its size.
pub(crate) fn time(installer: &Path, port: u16, token: &str) -> anyhow::Result<(Vec<f64>, u64)> {
    let size = std::fs::metadata(installer)?.len();
    let mut times = Vec::new();
    for i in 0..5 {
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join("etc"))?;
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nmuster:x:0:0::/:/bin/sh\n",
        )?;
        std::fs::write(root.path().join("etc/group"), "root:x:0:\n")?;
        let t0 = Instant::now();
        let out = Command::new(installer)
            .args(["install", "--output", "json", "--coordinator-host"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--hostname", &format!("timed-{i}"), "--root"])
            .arg(root.path())
            .env("MUSTER_ROLES_TOKEN", token)
            .output()?;
        let took = t0.elapsed();
        if !out.status.success() {
            bail!("muster install: {}", String::from_utf8_lossy(&out.stderr));
        }
        times.push(ms(took));
    }
    times.sort_by(f64::total_cmp);
    Ok((times, size))
}
