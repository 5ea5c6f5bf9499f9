//! Muster's OS packages installed as users install them: real `lintian` and `rpmlint`, `dpkg`
//! and `rpm` into a Debian root made by debootstrap, units checked by `systemd-analyze verify`.
//!
//! Every root is an overlay over the cached Debian root, so what a package leaves behind is
//! exactly what is in the overlay's upper folder.

use crate::common::*;
use muster_tests::os::{debian_root, package, repo, Overlay};
use muster_tests::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Files (not folders) in the overlay's upper layer: what the test changed in the root,
/// whiteouts (deletions of the root's own files) included.
fn changed(o: &Overlay) -> anyhow::Result<BTreeSet<String>> {
    let out = tool(
        Command::new("find")
            .arg(".")
            .args(["!", "-type", "d"])
            .current_dir(o.upper()),
    )?;
    Ok(out
        .lines()
        .map(|l| l.trim_start_matches('.').to_string())
        .collect())
}

/// Bookkeeping any package manager run leaves: its database and log, the account files and
/// their backups (whose contents are checked separately), locks.
fn bookkeeping(path: &str) -> bool {
    let prefixes = [
        "/var/lib/dpkg/",
        "/var/log/dpkg.log",
        "/var/lib/rpm/",
        "/var/cache/debconf/",
        "/run/",
        "/tmp/",
        "/etc/.pwd.lock",
        "/etc/subuid",
        "/etc/subgid",
    ];
    let accounts = ["passwd", "group", "shadow", "gshadow"];
    prefixes.iter().any(|p| path.starts_with(p))
        || accounts
            .iter()
            .any(|a| path == format!("/etc/{a}") || path == format!("/etc/{a}-"))
}

/// The account files of the overlay equal the cached root's: no user or group left over.
fn accounts_as_before(o: &Overlay, base: &Path) -> R {
    for f in ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"] {
        let now = std::fs::read_to_string(o.path(f))?;
        let before = std::fs::read_to_string(base.join(f))?;
        assert_eq!(now, before, "{f} differs from the root's own");
    }
    Ok(())
}

/// `systemd-analyze verify` on the installed units, inside the root.
fn verify_units(o: &Overlay, units: &[&str]) -> R {
    for u in units {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", o.root().display()))
            .arg(format!("/lib/systemd/system/{u}"))
            .output()?;
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{u}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// What both package formats must install: users, folders with owners and modes, files,
/// enabled units.
fn check_installed(o: &Overlay) -> R {
    let passwd = std::fs::read_to_string(o.path("etc/passwd"))?;
    for user in ["muster", "musterd"] {
        let line = passwd
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .ok_or_else(|| anyhow::anyhow!("no {user} user"))?;
        let uid: u32 = line.split(':').nth(2).unwrap_or("0").parse()?;
        assert!(
            (100..1000).contains(&uid),
            "{user} is a system user: {line}"
        );
        assert!(line.ends_with("nologin"), "{line}");
    }
    for (path, want) in [
        ("/usr/bin/muster", "root:root 755"),
        ("/usr/bin/musterd", "root:root 755"),
        ("/usr/lib/muster/muster-x86_64", "root:root 755"),
        ("/etc/muster/musterd.yaml", "root:root 644"),
        ("/etc/muster", "root:root 755"),
        ("/etc/muster/hooks.d/pre-enroll", "root:root 755"),
        ("/var/lib/muster", "root:root 700"),
        ("/var/lib/musterd", "musterd:musterd 700"),
        ("/lib/systemd/system/musterd.service", "root:root 644"),
        ("/lib/systemd/system/muster-agent.service", "root:root 644"),
        ("/lib/systemd/system/muster-enroll.service", "root:root 644"),
    ] {
        assert_eq!(o.stat(path)?, want, "{path}");
    }
    for u in [
        "musterd.service",
        "muster-agent.service",
        "muster-enroll.service",
    ] {
        assert!(enabled(o, u), "{u} is not enabled");
    }
    verify_units(
        o,
        &[
            "musterd.service",
            "muster-agent.service",
            "muster-enroll.service",
        ],
    )?;
    // The shipped installer is the one musterd serves, and `muster` runs in the root.
    let v = o.run("muster --version")?;
    assert!(v.starts_with("muster "), "{v}");
    Ok(())
}

/// Enrolls the root through a coordinator on loopback, with the package's `muster` run inside
/// the root, and checks the owners the root's own `muster` user gives.
fn enroll_inside(o: &Overlay, c: &Coordinator, name: &str) -> R {
    let (tok, _) = c.token(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let tf = o.path("root/token");
    std::fs::write(&tf, &tok)?;
    std::fs::set_permissions(&tf, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let out = o.run(&format!(
        "muster install --coordinator-host {} --roles-token-file /root/token --hostname {name} --timeout 20s && rm /root/token",
        c.host()
    ));
    let out = out?;
    assert!(!out.contains(&tok));
    for (path, want) in [
        ("/etc/muster/node.yaml", "root:muster 640"),
        ("/etc/muster/tls", "root:muster 750"),
        ("/etc/muster/tls/node.key", "muster:muster 600"),
        ("/etc/muster/tls/node.crt", "root:muster 644"),
        ("/var/lib/muster/enrollment.json", "root:root 600"),
    ] {
        assert_eq!(o.stat(path)?, want, "{path}");
    }
    let status = o.run("muster status --output json")?;
    assert!(status.contains("\"enrolled\":true"), "{status}");
    Ok(())
}

#[test]
fn lintian_and_rpmlint_find_no_errors() -> R {
    let debs = [package("muster", "deb")?, package("musterd", "deb")?];
    let out = Command::new("lintian")
        .args(["--fail-on", "error"])
        .args(&debs)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("lintian:\n{text}");
    assert!(out.status.success(), "lintian: {text}");
    assert!(!text.lines().any(|l| l.starts_with("E:")), "{text}");

    let rpms = [package("muster", "rpm")?, package("musterd", "rpm")?];
    let out = Command::new("rpmlint")
        .arg("-c")
        .arg(repo().join("packaging/rpmlint.toml"))
        .args(&rpms)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("rpmlint:\n{text}");
    assert!(out.status.success(), "rpmlint: {text}");
    assert!(text.contains(" 0 errors"), "{text}");
    Ok(())
}

/// Both packages ship bash, zsh and fish completions and a man page per command, made from the
/// binaries' own flags: the bash completion loads (`complete -p`), every man page renders with
/// `man -l`, and the rpm lists the same files.
#[test]
fn packages_ship_completions_and_man_pages_that_load() -> R {
    for (name, sub, flag) in [
        ("muster", "install", "--coordinator-host"),
        ("musterd", "init", "--advertise"),
    ] {
        let dir = tempfile::tempdir()?;
        tool(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(package(name, "deb")?)
                .arg(dir.path()),
        )?;
        let at = |rel: &str| dir.path().join(rel);
        let bash = at(&format!("usr/share/bash-completion/completions/{name}"));
        let loaded = tool(
            Command::new("bash")
                .arg("-c")
                .arg(format!("source '{}' && complete -p {name}", bash.display())),
        )?;
        assert!(loaded.contains(&format!(" {name}")), "{name}: {loaded}");
        for rel in [
            format!("usr/share/zsh/vendor-completions/_{name}"),
            format!("usr/share/fish/vendor_completions.d/{name}.fish"),
        ] {
            let text = std::fs::read_to_string(at(&rel))?;
            assert!(text.contains(sub), "{rel} completes {sub}");
        }
        let man = at("usr/share/man/man1");
        let mut pages: Vec<String> = std::fs::read_dir(&man)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        pages.sort();
        assert!(pages.contains(&format!("{name}.1.gz")), "{pages:?}");
        assert!(pages.contains(&format!("{name}-{sub}.1.gz")), "{pages:?}");
        assert!(
            !pages.iter().any(|p| p.contains("generate")),
            "the hidden command has no page: {pages:?}"
        );
        for page in &pages {
            let out = Command::new("man")
                .arg("-l")
                .arg(man.join(page))
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "100")
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("NAME"),
                "{page}: {out:?}"
            );
            if page == &format!("{name}-{sub}.1.gz") {
                assert!(text.contains(flag), "{page} documents {flag}: {text}");
            }
        }
        let listed = tool(Command::new("rpm").arg("-qlp").arg(package(name, "rpm")?))?;
        for want in [
            format!("/usr/share/bash-completion/completions/{name}"),
            format!("/usr/share/zsh/site-functions/_{name}"),
            format!("/usr/share/fish/vendor_completions.d/{name}.fish"),
            format!("/usr/share/man/man1/{name}-{sub}.1.gz"),
        ] {
            assert!(
                listed.lines().any(|l| l == want),
                "{name}.rpm lists {want}: {listed}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_packaged_coordinator_reads_its_config_without_being_told() -> R {
    let base = debian_root()?;
    let o = Overlay::new(&base)?;
    std::fs::copy(package("musterd", "deb")?, o.path("tmp/musterd.deb"))?;
    o.run("dpkg -i /tmp/musterd.deb")?;
    // Before init: every command says where it looked, and makes nothing there.
    let out = o.chroot("musterd token list").output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        err.contains("no platform in the embedded SQLite store /var/lib/musterd/muster.db")
            && err.contains("config /etc/muster/musterd.yaml"),
        "{err}"
    );
    assert!(!o.path("var/lib/musterd/muster.db").exists());
    // The operator sets the address hosts reach it at, once, in the packaged config.
    o.run("echo 'advertise: [coordinator-1.example.net:12443]' >> /etc/muster/musterd.yaml")?;
    o.run("musterd init --output json > /root/secrets.json")?;
    let out = o.run("musterd token create --roles allocator")?;
    let line = printed_install_line(&out);
    assert!(
        line.contains("https://coordinator-1.example.net:12443/install.sh"),
        "{out}"
    );
    let list = o.run("musterd token list")?;
    assert!(list.contains("allocator"), "{list}");
    Ok(())
}

#[test]
fn deb_packages_install_enroll_upgrade_and_purge_in_a_debian_root() -> R {
    let base = debian_root()?;
    let o = Overlay::new(&base)?;
    let c = Coordinator::start()?;
    for p in ["muster", "musterd"] {
        std::fs::copy(package(p, "deb")?, o.path(&format!("tmp/{p}.deb")))?;
    }
    o.run("dpkg -i /tmp/muster.deb /tmp/musterd.deb")?;
    check_installed(&o)?;
    let conffiles = o.run("dpkg-query -W -f='${Conffiles}' musterd")?;
    assert!(
        conffiles.contains("/etc/muster/musterd.yaml"),
        "{conffiles}"
    );
    assert!(
        !o.path("etc/muster/enroll.yaml").exists()
            && !o.path("var/lib/muster/enrollment.json").exists(),
        "installing enrolled nothing"
    );

    enroll_inside(&o, &c, "deb-host")?;

    // An upgrade (the same package again) keeps a changed conffile and the enrollment.
    o.run("echo '# changed by the operator' >> /etc/muster/musterd.yaml")?;
    o.run("dpkg -i /tmp/muster.deb /tmp/musterd.deb")?;
    let conf = std::fs::read_to_string(o.path("etc/muster/musterd.yaml"))?;
    assert!(conf.contains("# changed by the operator"), "{conf}");
    assert!(o.path("etc/muster/tls/node.key").exists());

    // Removing keeps config; purging an enrolled host keeps its identity and user.
    o.run("dpkg --remove muster musterd")?;
    assert!(
        o.path("etc/muster/musterd.yaml").exists(),
        "remove keeps conffiles"
    );
    assert!(!o.path("usr/bin/muster").exists());
    let out = o.chroot("dpkg --purge muster").output()?;
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still enrolled"),
        "{out:?}"
    );
    assert!(o.path("etc/muster/tls/node.key").exists());
    assert!(std::fs::read_to_string(o.path("etc/passwd"))?.contains("\nmuster:"));

    // After `muster leave` (from the package, reinstalled) the purge leaves nothing behind.
    o.run("dpkg -i /tmp/muster.deb && muster leave")?;
    std::fs::remove_file(o.path("tmp/muster.deb"))?;
    std::fs::remove_file(o.path("tmp/musterd.deb"))?;
    o.run("dpkg --purge muster musterd")?;
    let left: Vec<String> = changed(&o)?
        .into_iter()
        .filter(|p| !bookkeeping(p))
        .collect();
    assert!(left.is_empty(), "left after purge: {left:#?}");
    accounts_as_before(&o, &base)?;
    Ok(())
}

#[test]
fn rpm_packages_install_and_erase_in_a_scratch_root() -> R {
    let base = debian_root()?;
    let o = Overlay::new(&base)?;
    let c = Coordinator::start()?;
    // The root's packages are Debian's, so rpm's database knows none of them: --nodeps.
    let rpm = |args: &[&str]| {
        tool(
            Command::new("rpm")
                .arg("--root")
                .arg(o.root())
                .args(["--dbpath", "/var/lib/rpm"])
                .args(args),
        )
    };
    let (m, d) = (package("muster", "rpm")?, package("musterd", "rpm")?);
    let (m, d) = (m.display().to_string(), d.display().to_string());
    rpm(&["-i", "--nodeps", &m, &d])?;
    check_installed(&o)?;
    let listed = rpm(&["-ql", "muster"])?;
    let mut want: BTreeSet<String> = [
        "/usr/bin/muster",
        "/usr/lib/systemd/system/muster-agent.service",
        "/usr/lib/systemd/system/muster-enroll.service",
        "/usr/share/doc/muster/install.md",
        "/usr/share/doc/muster/installer.md",
        "/usr/share/licenses/muster/LICENSE",
        "/usr/share/bash-completion/completions/muster",
        "/usr/share/zsh/site-functions/_muster",
        "/usr/share/fish/vendor_completions.d/muster.fish",
        "/usr/share/muster/cloud-init/cc_muster.py",
        "/usr/share/muster/cloud-init/setup",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for page in [
        "",
        "-admin",
        "-admin-audit",
        "-admin-hosts",
        "-admin-hosts-list",
        "-admin-hosts-remove",
        "-admin-hosts-roles",
        "-admin-hosts-show",
        "-admin-keys",
        "-admin-keys-create",
        "-admin-keys-list",
        "-admin-keys-revoke",
        "-admin-password",
        "-admin-status",
        "-admin-tokens",
        "-admin-tokens-create",
        "-admin-tokens-list",
        "-admin-tokens-revoke",
        "-admin-tokens-show",
        "-agent",
        "-install",
        "-leave",
        "-renew",
        "-status",
        "-token",
        "-token-inspect",
    ] {
        want.insert(format!("/usr/share/man/man1/muster{page}.1.gz"));
    }
    assert_eq!(
        listed.lines().map(String::from).collect::<BTreeSet<_>>(),
        want
    );
    let config = rpm(&["-qc", "musterd"])?;
    assert_eq!(config.trim(), "/etc/muster/musterd.yaml");

    enroll_inside(&o, &c, "rpm-host")?;

    // An upgrade keeps a changed %config(noreplace) file.
    o.run("echo '# changed by the operator' >> /etc/muster/musterd.yaml")?;
    rpm(&["-U", "--nodeps", "--replacepkgs", &m, &d])?;
    let conf = std::fs::read_to_string(o.path("etc/muster/musterd.yaml"))?;
    assert!(conf.contains("# changed by the operator"), "{conf}");

    // Leave, then erase: nothing of Muster's stays.
    o.run("muster leave")?;
    rpm(&["-e", "--nodeps", "muster", "musterd"])?;
    let left: Vec<String> = changed(&o)?
        .into_iter()
        .filter(|p| !bookkeeping(p))
        // rpm keeps a changed config file as .rpmsave, as it does for every package.
        .filter(|p| p != "/etc/muster/musterd.yaml.rpmsave")
        .collect();
    assert!(left.is_empty(), "left after erase: {left:#?}");
    assert!(o.path("etc/muster/musterd.yaml.rpmsave").exists());
    accounts_as_before(&o, &base)?;
    Ok(())
}
