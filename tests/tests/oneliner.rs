//! The ways Muster plugs into other installers, run for real: the install one-liner served by
//! `musterd` and piped into `sh`, the cloud-init examples through cloud-init's own schema
//! check, and every shell script through shellcheck.

use crate::common::*;
use muster_tests::os::repo;
use muster_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// A coordinator that serves the static installer.
fn serving_coordinator() -> anyhow::Result<Coordinator> {
    Coordinator::with(Opts {
        config: format!("installer_path: {}\n", static_installer().display()),
        start: true,
        ..Opts::default()
    })
}

/// The pinned `curl … | MUSTER_ROLES_TOKEN=… sudo --preserve-env=… sh` line as printed (sudo
/// and all), with `muster install` options after it that put the host into its scratch root.
fn local(line: &str, h: &Host) -> String {
    format!(
        "{line} -s -- --root '{}' --hostname {} --timeout 20s",
        h.root.path().display(),
        h.name
    )
}

/// The line as musterd prints it: the token in an assignment to `sh`'s environment, passed on
/// by sudo, never as an argument.
fn printed_line(token: &str) -> String {
    format!("| MUSTER_ROLES_TOKEN='{token}' sudo --preserve-env=MUSTER_ROLES_TOKEN sh")
}

fn sha256(p: &Path) -> anyhow::Result<String> {
    let out = tool(Command::new("sha256sum").arg(p))?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn executable(p: &Path, body: &str) -> R {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(p, body)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The served script, fetched as the one-liner fetches it, saved to a file.
fn served_script(c: &Coordinator, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let p = dir.join("install.sh");
    let out = c.curl(&[
        "-fsS",
        "-o",
        &p.display().to_string(),
        &c.url("/install.sh"),
    ])?;
    anyhow::ensure!(out.status.success(), "fetching install.sh: {out:?}");
    let text = std::fs::read_to_string(&p)?;
    assert!(
        text.contains(&format!("served_coordinator='{}'", c.host())),
        "the script names the coordinator it came from"
    );
    assert!(!text.contains("@PIN@") && text.contains("served_pin='sha256//"));
    assert!(text.contains("served_ca='-----BEGIN CERTIFICATE-----"));
    Ok(p)
}

/// A PATH holding only these tools (links to the machine's), and `sh`.
fn bare_path(dir: &Path, tools: &[&str]) -> anyhow::Result<String> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    for t in tools.iter().chain(&["sh"]) {
        let real = tool(Command::new("sh").arg("-c").arg(format!("command -v {t}")))?;
        std::os::unix::fs::symlink(real.trim(), bin.join(t))?;
    }
    Ok(bin.display().to_string())
}

#[test]
fn the_one_liner_enrolls_a_host_over_pinned_tls_without_showing_the_token() -> R {
    let c = serving_coordinator()?;
    let (token, _, line) = c.token_with_line(r#"{"persistent":false,"roles":["allocator"]}"#)?;
    assert!(
        line.starts_with("curl -fsSk --pinnedpubkey 'sha256//")
            && line.contains(&format!("https://{}/install.sh", c.host()))
            && line.ends_with(&printed_line(&token)),
        "{line}"
    );
    let h = Host::new("one-liner")?;
    // A pre-enroll hook records what `muster` was started with, whether it sees the token,
    // and every process on the machine whose argument list holds the token (curl, sudo, sh and
    // muster are all running then).
    let seen = h.path("seen");
    executable(
        &h.path("etc/muster/hooks.d/pre-enroll/10-argv"),
        &format!(
            "#!/bin/sh\ntr '\\000' ' ' < /proc/$PPID/cmdline > {s}.argv\nenv > {s}.env\n\
             grep -l -F -f {s}.token /proc/[0-9]*/cmdline > {s}.holders 2>/dev/null || true\n\
             ls /proc | grep -c '^[0-9]' > {s}.procs\n",
            s = seen.display()
        ),
    )?;
    std::fs::write(seen.with_extension("token"), &token)?;
    let r = typed(&local(&line, &h))?;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("enrolled as"), "{r:?}");
    assert!(
        !r.stdout.contains(&token) && !r.stderr.contains(&token),
        "the token was printed"
    );
    // The installer came from the coordinator, whole.
    assert_eq!(
        sha256(&h.path("usr/local/bin/muster"))?,
        sha256(&static_installer())?
    );
    assert_eq!(h.stat("usr/local/bin/muster"), "0:0 755");
    assert_eq!(h.state()["stage"], "committed", "{}", h.state());
    let argv = std::fs::read_to_string(seen.with_extension("argv"))?;
    assert!(
        argv.contains(" install ") && argv.contains("--coordinator-host"),
        "{argv}"
    );
    assert!(
        !argv.contains(&token),
        "the token reached muster's argv: {argv}"
    );
    let env = std::fs::read_to_string(seen.with_extension("env"))?;
    assert!(!env.contains(&token), "a hook saw the token");
    let holders = std::fs::read_to_string(seen.with_extension("holders"))?;
    assert_eq!(holders, "", "processes whose argument list held the token");
    let procs: u32 = std::fs::read_to_string(seen.with_extension("procs"))?
        .trim()
        .parse()?;
    assert!(procs > 1, "the hook saw no processes to check");
    Ok(())
}

#[test]
fn the_one_liner_refuses_a_coordinator_with_another_key() -> R {
    let c = serving_coordinator()?;
    let (_, _, line) = c.token_with_line(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    let (_, rest) = line
        .split_once("sha256//")
        .ok_or_else(|| anyhow::anyhow!("no pin in {line}"))?;
    let pin = &rest[..44];
    let wrong = line.replacen(pin, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 1);
    let h = Host::new("wrong-pin")?;
    let out = Command::new("sh")
        .arg("-c")
        .arg(local(&wrong, &h))
        .output()?;
    let r = Run::from(out);
    assert!(
        r.stderr
            .contains("public key does not match pinned public key"),
        "{r:?}"
    );
    assert!(!h.path("usr/local/bin/muster").exists());
    assert!(!h.path("var/lib/muster").exists());
    Ok(())
}

const BASE_TOOLS: &[&str] = &[
    "id",
    "uname",
    "sha256sum",
    "cut",
    "mktemp",
    "rm",
    "mkdir",
    "cp",
    "chmod",
    "mv",
    "sync",
    "grep",
];

#[test]
fn install_sh_fetches_with_wget_and_the_ca_when_curl_is_missing() -> R {
    let c = serving_coordinator()?;
    let (token, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let scratch = tempfile::tempdir()?;
    let script = served_script(&c, scratch.path())?;
    let mut tools = BASE_TOOLS.to_vec();
    tools.push("wget");
    let path = bare_path(scratch.path(), &tools)?;
    let h = Host::new("wget-only")?;
    let out = Command::new("/bin/sh")
        .arg(&script)
        .args(["--root"])
        .arg(h.root.path())
        .args(["--hostname", &h.name])
        .env("PATH", &path)
        .env("MUSTER_ROLES_TOKEN", &token)
        .output()?;
    let r = Run::from(out);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(h.state()["stage"], "committed");
    Ok(())
}

#[test]
fn install_sh_names_what_is_missing_and_installs_nothing() -> R {
    let c = serving_coordinator()?;
    let (token, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let scratch = tempfile::tempdir()?;
    let script = served_script(&c, scratch.path())?;
    let run = |h: &Host, path: &str, pre: &[&str]| -> anyhow::Result<Run> {
        let mut cmd = Command::new(pre.first().copied().unwrap_or("/bin/sh"));
        if !pre.is_empty() {
            cmd.args(&pre[1..]).arg("/bin/sh");
        }
        let out = cmd
            .arg(&script)
            .arg("--root")
            .arg(h.root.path())
            .env("PATH", path)
            .env("MUSTER_ROLES_TOKEN", &token)
            .output()?;
        Ok(Run::from(out))
    };
    let untouched = |h: &Host| !h.path("usr").exists() && !h.path("var").exists();

    // No curl, no wget.
    let d = tempfile::tempdir()?;
    let h = Host::new("no-fetcher")?;
    let r = run(&h, &bare_path(d.path(), BASE_TOOLS)?, &[])?;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("neither curl nor wget"), "{r:?}");
    assert!(untouched(&h));

    // Not root.
    let h = Host::new("not-root")?;
    let r = run(
        &h,
        "/usr/bin:/bin",
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
    )?;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("run as root"), "{r:?}");
    assert!(untouched(&h));

    // Another architecture.
    let d = tempfile::tempdir()?;
    let mut tools = BASE_TOOLS.to_vec();
    tools.retain(|t| *t != "uname");
    tools.push("curl");
    let path = bare_path(d.path(), &tools)?;
    executable(&d.path().join("bin/uname"), "#!/bin/sh\necho aarch64\n")?;
    let h = Host::new("arm")?;
    let r = run(&h, &path, &[])?;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("this host is aarch64"), "{r:?}");
    assert!(untouched(&h));

    // A download that does not match the coordinator's checksum.
    let d = tempfile::tempdir()?;
    let mut tools = BASE_TOOLS.to_vec();
    tools.retain(|t| *t != "sha256sum");
    tools.push("curl");
    let path = bare_path(d.path(), &tools)?;
    executable(
        &d.path().join("bin/sha256sum"),
        "#!/bin/sh\necho \"0000000000000000000000000000000000000000000000000000000000000000  $1\"\n",
    )?;
    let h = Host::new("tampered")?;
    let r = run(&h, &path, &[])?;
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("SHA-256"), "{r:?}");
    assert!(untouched(&h));
    assert!(!r.stderr.contains(&token) && !r.stdout.contains(&token));

    // A coordinator that does not hold the pinned key (curl), or the given CA (wget): exit 6,
    // as muster's own pin check, not 5 ("unreachable", worth retrying).
    let other = tempfile::tempdir()?;
    tool(Command::new("openssl").current_dir(other.path()).args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=another CA",
        "-days",
        "1",
        "-keyout",
        "key.pem",
        "-out",
        "ca.pem",
    ]))?;
    for (fetcher, var, value) in [
        (
            "curl",
            "MUSTER_PIN",
            "sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".to_string(),
        ),
        (
            "wget",
            "MUSTER_CA_FILE",
            other.path().join("ca.pem").display().to_string(),
        ),
    ] {
        let d = tempfile::tempdir()?;
        let mut tools = BASE_TOOLS.to_vec();
        tools.push(fetcher);
        let h = Host::new(&format!("not-pinned-{fetcher}"))?;
        let out = Command::new("/bin/sh")
            .arg(&script)
            .arg("--root")
            .arg(h.root.path())
            .env("PATH", bare_path(d.path(), &tools)?)
            .env("MUSTER_ROLES_TOKEN", &token)
            .env(var, &value)
            .output()?;
        let r = Run::from(out);
        assert_eq!(r.code, 6, "{fetcher}: {r:?}");
        assert!(r.stderr.contains("pinned key or CA"), "{fetcher}: {r:?}");
        assert!(untouched(&h), "{fetcher}");
    }
    Ok(())
}

#[test]
fn token_create_prints_the_install_line_and_the_api_only_on_request() -> R {
    let c = serving_coordinator()?;
    let out = tool(
        Command::new(bin("musterd"))
            .args(["token", "create", "--roles", "allocator", "--data-dir"])
            .arg(c.data())
            .arg("--config")
            .arg(c.dir.path().join("server.yaml")),
    )?;
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token:"))
        .map(str::trim)
        .unwrap_or_default();
    assert!(token.starts_with("eyJ"), "{out}");
    let line = printed_install_line(&out);
    assert!(
        line.starts_with("curl -fsSk --pinnedpubkey 'sha256//")
            && line.ends_with(&printed_line(token)),
        "{out}"
    );
    // The CLI's pin is the running server's: the line works as printed.
    let h = Host::new("from-cli")?;
    let r = typed(&local(line, &h))?;
    assert_eq!(r.code, 0, "{r:?}");

    let (code, v) = c.api(
        "POST",
        TOKENS,
        Some(r#"{"persistent":true,"roles":["proxy"]}"#),
    )?;
    assert_eq!(code, 200);
    assert!(v.get("install_command").is_none(), "{v}");
    let (_, _, line) = c.token_with_line(r#"{"persistent":true,"roles":["proxy"]}"#)?;
    assert!(line.contains("--pinnedpubkey"), "{line}");
    Ok(())
}

#[test]
fn shell_scripts_pass_shellcheck() -> R {
    let r = repo();
    let mut files = vec![
        r.join("hooks/install.sh"),
        r.join("packaging/build"),
        r.join("scripts/test.sh"),
        r.join("scripts/quickstart.sh"),
        r.join("scripts/build-static.sh"),
        r.join("scripts/debian-root.sh"),
        r.join("scripts/bench.sh"),
        r.join("scripts/profile.sh"),
        r.join("scripts/syscalls.sh"),
        r.join("scripts/walpages.sh"),
    ];
    for dir in [
        "packaging/deb/muster",
        "packaging/deb/musterd",
        "packaging/rpm",
    ] {
        for e in std::fs::read_dir(r.join(dir))? {
            files.push(e?.path());
        }
    }
    let out = Command::new("shellcheck")
        .args(["--shell=sh", "--severity=style"])
        .args(&files)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // And shellcheck does find things: the same check fails on a script with a classic slip.
    let d = tempfile::tempdir()?;
    let bad = d.path().join("bad.sh");
    std::fs::write(&bad, "#!/bin/sh\nrm -rf $1/*\n")?;
    let out = Command::new("shellcheck").arg(&bad).output()?;
    assert!(!out.status.success());
    Ok(())
}

#[test]
fn cloud_init_examples_pass_cloud_inits_schema_check() -> R {
    let dir = repo().join("hooks/cloud-init");
    let mut n = 0;
    for e in std::fs::read_dir(&dir)? {
        let p = e?.path();
        // The user-data examples; cc_muster.py beside them is the module that reads them.
        if p.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let out = Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(&p)
            .output()?;
        assert!(
            out.status.success(),
            "{}: {}{}",
            p.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
    }
    assert_eq!(n, 4, "every example checked");
    // The check can fail: a misspelt module key in an otherwise valid file.
    let d = tempfile::tempdir()?;
    let bad = d.path().join("bad.yaml");
    let text = std::fs::read_to_string(dir.join("enroll-on-boot.yaml"))?;
    std::fs::write(
        &bad,
        text.replace("permissions: '0600'", "permissions: 0600\n    mode: 1"),
    )?;
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&bad)
        .output()?;
    assert!(!out.status.success(), "a bad file passed");
    Ok(())
}

/// `muster leave --purge` undoes the one-liner: the host leaves, and the muster user and the
/// binary the one-liner made go with the record of them; every other file is as it was before
/// the one-liner ran (the account files aside, which useradd and userdel rewrite and back up).
#[test]
fn leave_purge_undoes_the_one_liner() -> R {
    let c = serving_coordinator()?;
    let (token, _, line) = c.token_with_line(r#"{"persistent":false,"roles":["allocator"]}"#)?;
    let h = Host::new("purged")?;
    // No muster user yet: the one-liner makes it.
    std::fs::write(h.path("etc/passwd"), "root:x:0:0::/root:/bin/sh\n")?;
    std::fs::write(h.path("etc/group"), "root:x:0:\n")?;
    let accounts = |rel: &str| {
        rel.starts_with("etc/passwd") || rel.starts_with("etc/group") || rel == "etc/.pwd.lock"
    };
    let files = |root: &Path| -> anyhow::Result<Vec<(String, String)>> {
        Ok(tree(root)?
            .into_iter()
            .filter(|(rel, what)| !what.ends_with(" dir") && !accounts(rel))
            .collect())
    };
    let before = files(h.root.path())?;
    let r = typed(&local(&line, &h))?;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("made the muster system user"), "{r:?}");
    assert!(!r.stderr.contains(&token) && !r.stdout.contains(&token));
    assert!(std::fs::read_to_string(h.path("etc/passwd"))?.contains("\nmuster:"));
    assert_eq!(
        std::fs::read_to_string(h.path("usr/local/lib/muster/one-liner"))?,
        "binary\nuser\n"
    );
    let lv = Run::from(
        Command::new(h.path("usr/local/bin/muster"))
            .args(["leave", "--purge", "--output", "json", "--root"])
            .arg(h.root.path())
            .output()?,
    );
    assert_eq!(lv.code, 0, "{lv:?}");
    assert_eq!(lv.json()["result"], "left", "{lv:?}");
    assert_eq!(
        lv.json()["purged"],
        serde_json::json!(["user muster", "group muster", "/usr/local/bin/muster"]),
        "{lv:?}"
    );
    assert!(!std::fs::read_to_string(h.path("etc/passwd"))?.contains("muster:"));
    assert!(!std::fs::read_to_string(h.path("etc/group"))?.contains("muster:"));
    assert_eq!(files(h.root.path())?, before);
    assert!(
        !c.hostnames()?.contains(&"purged".to_string()),
        "deregistered"
    );
    Ok(())
}
