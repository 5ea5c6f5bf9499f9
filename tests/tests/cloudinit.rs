//! cloud-init as an instance boots it: the one-liner in `runcmd`, the package through
//! `write_files`, the `muster:` key; four boot stages in network namespaces of the test's own.

use crate::common::*;
use muster_tests::os::{debian_root, package, repo, NetPair, Overlay};
use muster_tests::*;
use std::process::Command;

/// A coordinator in its own network namespace, reached by the booting host over a veth
/// pair, serving the static installer.
fn coordinator_across(net: &NetPair) -> anyhow::Result<Coordinator> {
    Coordinator::with(Opts {
        config: format!("installer_path: {}\n", static_installer().display()),
        start: true,
        netns: Some(net.server.clone()),
        advertise: Some(format!("{}:{{port}}", NetPair::SERVER_IP)),
        ..Opts::default()
    })
}

/// One of `hooks/cloud-init/`, with the example's coordinator, pin and token replaced.
fn user_data(example: &str, coordinator: &str, pin: &str, token: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(repo().join("hooks/cloud-init").join(example))?;
    anyhow::ensure!(
        text.contains("ROLES-TOKEN"),
        "{example} has no token placeholder"
    );
    Ok(text
        .replace("coordinator.example.net:12443", coordinator)
        .replace("sha256//COORDINATOR-KEY-PIN", pin)
        .replace("ROLES-TOKEN", token))
}

/// The image's package source: a local repository holding the muster package.
fn local_repository(o: &Overlay) -> R {
    let repo_dir = o.path("srv/muster-repo");
    std::fs::create_dir_all(&repo_dir)?;
    std::fs::copy(package("muster", "deb")?, repo_dir.join("muster.deb"))?;
    let index = tool(
        Command::new("dpkg-scanpackages")
            .args(["--multiversion", "."])
            .current_dir(&repo_dir),
    )?;
    std::fs::write(repo_dir.join("Packages"), index)?;
    std::fs::write(
        o.path("etc/apt/sources.list"),
        "deb [trusted=yes] file:/srv/muster-repo ./\n",
    )?;
    Ok(())
}

/// cloud-init's logs and what it keeps, as text: where a token must never be.
fn cloud_init_traces(o: &Overlay) -> String {
    let mut all = String::new();
    for f in [
        "var/log/cloud-init.log",
        "var/log/cloud-init-output.log",
        "run/cloud-init/instance-data.json",
        "run/cloud-init/status.json",
        "run/cloud-init/result.json",
    ] {
        all.push_str(&std::fs::read_to_string(o.path(f)).unwrap_or_default());
    }
    all
}

#[test]
fn cloud_init_runcmd_one_liner_enrolls_the_instance_and_logs_a_refusal() -> R {
    let base = debian_root()?;
    let net = NetPair::new()?;
    let c = coordinator_across(&net)?;
    let (token, _, line) = c.token_with_line(r#"{"persistent":false,"roles":["allocator"]}"#)?;
    assert!(
        line.contains(&format!("https://{}:{}/", NetPair::SERVER_IP, c.port)),
        "{line}"
    );
    let pin = line
        .split("--pinnedpubkey '")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap_or_default();
    let coordinator = format!("{}:{}", NetPair::SERVER_IP, c.port);

    let o = Overlay::new(&base)?;
    let ud = user_data("one-liner.yaml", &coordinator, pin, &token)?;
    let boot = std::time::Instant::now();
    o.boot_cloud_init(&net.host, "ci-one-liner", &ud)?;
    let r = o.instance(&net.host, "ci-one-liner", "muster status --output json")?;
    println!(
        "boot with the one-liner: {:.1} s",
        boot.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(o.path("var/log/cloud-init-output.log"))?;
    assert!(log.contains("] enrolled as "), "{log}\n{r:?}");
    assert!(
        !log.contains(&token),
        "the token reached cloud-init-output.log"
    );
    // No systemd runs in this instance: the one-liner says no agent was installed, and what
    // to run instead, and writes no unit.
    assert!(
        log.contains("warning: no systemd runs here, so no agent was installed")
            && log.contains("/usr/local/bin/muster agent"),
        "{log}"
    );
    assert!(!o.path("etc/systemd/system/muster-agent.service").exists());
    assert!(r.stdout.contains("\"enrolled\":true"), "{r:?}");
    assert_eq!(o.stat("/etc/muster/tls/node.key")?, "muster:muster 600");
    assert!(c.hostnames()?.contains(&"ci-one-liner".to_string()));

    // A refused token: the log names the refusal, cloud-init reports the failed script, and
    // the instance holds no identity.
    let (bad, bad_id, _) = c.token_with_line(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let (code, _) = c.api("DELETE", &format!("{TOKENS}/{bad_id}"), None)?;
    assert_eq!(code, 200);
    let o = Overlay::new(&base)?;
    let ud = user_data("one-liner.yaml", &coordinator, pin, &bad)?;
    o.boot_cloud_init(&net.host, "ci-refused", &ud)?;
    let log = std::fs::read_to_string(o.path("var/log/cloud-init-output.log"))?;
    println!(
        "cloud-init-output.log on a refused token, from the one-liner on:\n{}",
        log.lines()
            .skip_while(|l| !l.contains("muster-install"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(log.contains("token.revoked"), "{log}");
    assert!(
        log.contains("Failed to run module scripts_user"),
        "cloud-init names the failed module: {log}"
    );
    // The keys made for the join stay for a retry; no certificate was issued.
    assert!(!o.path("etc/muster/tls/node.crt").exists());
    assert!(!log.contains(&bad));

    // A pin that is not the coordinator's: the fetch fails, and so does the script (piped
    // into `sh`, the empty download would have "succeeded").
    let o = Overlay::new(&base)?;
    let wrong = "sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    let ud = user_data("one-liner.yaml", &coordinator, wrong, &token)?;
    o.boot_cloud_init(&net.host, "ci-wrong-pin", &ud)?;
    let log = std::fs::read_to_string(o.path("var/log/cloud-init-output.log"))?;
    assert!(
        log.contains("Failed to run module scripts_user"),
        "cloud-init names the failed module: {log}"
    );
    assert!(!o.path("usr/local/bin/muster").exists());
    assert!(!log.contains(&token));
    Ok(())
}

#[test]
fn cloud_init_write_files_and_package_enroll_through_the_oneshot_unit() -> R {
    let base = debian_root()?;
    let net = NetPair::new()?;
    let c = coordinator_across(&net)?;
    let (token, _, _) =
        c.token_with_line(r#"{"persistent":false,"roles":["allocator","proxy"]}"#)?;
    let coordinator = format!("{}:{}", NetPair::SERVER_IP, c.port);

    let o = Overlay::new(&base)?;
    local_repository(&o)?;

    let ud = user_data("enroll-on-boot.yaml", &coordinator, "", &token)?;
    let boot = std::time::Instant::now();
    let r = o.boot_cloud_init(&net.host, "ci-package", &ud)?;
    println!(
        "boot with write_files and the package: {:.1} s",
        boot.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(o.path("var/log/cloud-init-output.log"))?;
    assert!(
        log.contains("Setting up muster"),
        "cloud-init installed the package: {log}\n{r:?}"
    );
    assert!(
        !log.contains(&token),
        "the token reached cloud-init-output.log"
    );
    assert_eq!(o.stat("/etc/muster/enroll.yaml")?, "root:root 600");
    assert!(enabled(&o, "muster-enroll.service") && enabled(&o, "muster-agent.service"));
    assert!(
        !o.path("var/lib/muster/enrollment.json").exists(),
        "nothing enrolled yet"
    );

    // systemd would now start the enabled muster-enroll.service. None runs here, so the
    // unit's own lines run as systemd runs a oneshot unit.
    let unit = o.oneshot_unit("muster-enroll.service")?;
    let r = o.instance(
        &net.host,
        "ci-package",
        &format!("{unit} && muster status --output json"),
    )?;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("\"enrolled\":true"), "{r:?}");
    assert!(
        !o.path("etc/muster/enroll.yaml").exists(),
        "the token file is gone"
    );
    assert_eq!(o.stat("/etc/muster/tls/node.key")?, "muster:muster 600");
    assert!(c.hostnames()?.contains(&"ci-package".to_string()));
    // Started again (the next boot), the unit's condition no longer holds: nothing runs.
    let r = o.instance(&net.host, "ci-package", &unit)?;
    assert!(r.stdout.contains("condition failed, skipped"), "{r:?}");
    Ok(())
}

/// The `muster:` cloud-config key (hooks/cloud-init/cc_muster.py, shipped in the muster
/// package, which lists it among cloud-init's final modules): enrolls with the image's package
/// and with the coordinator's pinned one-liner, once per instance; a reboot does nothing, a
/// cloned instance enrolls as its own host; a refused token and a bad key fail the module by
/// name; the token reaches no log.
#[test]
fn cloud_init_muster_key_enrolls_once_per_instance_and_names_refusals() -> R {
    let base = debian_root()?;
    let net = NetPair::new()?;
    let c = coordinator_across(&net)?;
    let (token, _, line) = c.token_with_line(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let pin = line
        .split("--pinnedpubkey '")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap_or_default()
        .to_string();
    let coordinator = format!("{}:{}", NetPair::SERVER_IP, c.port);
    let packaged = |o: &Overlay| -> R {
        local_repository(o)?;
        std::fs::copy(package("muster", "deb")?, o.path("tmp/muster.deb"))?;
        o.run("dpkg -i /tmp/muster.deb")?;
        Ok(())
    };

    // The package lists the module in cloud-init's final stage, before the user scripts.
    let o = Overlay::new(&base)?;
    packaged(&o)?;
    let listed = std::fs::read_to_string(o.path("etc/cloud/cloud.cfg.d/90_muster.cfg"))?;
    let at = |m: &str| listed.find(&format!("- {m}\n"));
    assert!(
        at("muster").is_some() && at("muster") < at("scripts-user"),
        "{listed}"
    );
    assert!(
        listed.contains("- final-message"),
        "the image's list kept: {listed}"
    );
    // The docs' examples pass cloud-init's schema and the module's own check.
    for ud in ["muster-package.yaml", "muster-one-liner.yaml"] {
        std::fs::copy(
            repo().join("hooks/cloud-init").join(ud),
            o.path(&format!("tmp/{ud}")),
        )?;
        let out = o.run(&format!(
            "cloud-init schema -c /tmp/{ud} && python3 -c \
             'import sys, yaml, cc_muster; cc_muster.check(yaml.safe_load(open(sys.argv[1]))[\"muster\"]); print(\"checked\")' /tmp/{ud}"
        ))?;
        assert!(
            out.contains("Valid cloud-config") && out.contains("checked"),
            "{ud}: {out}"
        );
    }

    // install: package.
    let ud = format!(
        "#cloud-config\nmuster:\n  coordinator_host: {coordinator}\n  roles_token: {token}\n  roles: [allocator]\n  availability_zone: zone-2\n"
    );
    let boot = std::time::Instant::now();
    let r = o.boot_cloud_init_with(&net.host, "ci-muster", &ud, None)?;
    println!(
        "boot with muster: (package): {:.1} s",
        boot.elapsed().as_secs_f64()
    );
    let status = o.instance(&net.host, "ci-muster", "muster status --output json")?;
    assert!(
        status.stdout.contains("\"enrolled\":true"),
        "{status:?}\n{r:?}\n{}",
        cloud_init_traces(&o)
    );
    let first: serde_json::Value = serde_json::from_str(status.stdout.trim())?;
    assert!(c.hostnames()?.contains(&"ci-muster".to_string()));
    let log = std::fs::read_to_string(o.path("var/log/cloud-init.log"))?;
    assert!(log.contains("muster: enrolled as"), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("Running module muster") && l.contains("failed")),
        "{log}"
    );
    assert!(
        !cloud_init_traces(&o).contains(&token),
        "the token reached cloud-init's logs"
    );
    assert_eq!(
        o.stat("/var/lib/cloud/instance/user-data.txt")?,
        "root:root 600"
    );

    // A reboot (same instance) runs nothing again.
    o.boot_cloud_init_with(&net.host, "ci-muster", &ud, None)?;
    let again = o.instance(&net.host, "ci-muster", "muster status --output json")?;
    let again: serde_json::Value = serde_json::from_str(again.stdout.trim())?;
    assert_eq!(again["node_id"], first["node_id"], "the same enrollment");
    let runs = std::fs::read_to_string(o.path("var/log/cloud-init.log"))?
        .matches("muster: enrolled as")
        .count();
    assert_eq!(runs, 1, "once per instance");

    // The image cloned to a new instance enrolls as its own host.
    o.boot_cloud_init_with(&net.host, "ci-clone", &ud, None)?;
    let clone = o.instance(&net.host, "ci-clone", "muster status --output json")?;
    let clone: serde_json::Value = serde_json::from_str(clone.stdout.trim())?;
    assert_ne!(clone["node_id"], first["node_id"], "{clone}");
    assert!(c.hostnames()?.contains(&"ci-clone".to_string()));

    // install: one-liner, from the coordinator, pinned.
    let o = Overlay::new(&base)?;
    packaged(&o)?;
    let ud = format!(
        "#cloud-config\nmuster:\n  coordinator_host: {coordinator}\n  roles_token: {token}\n  roles: allocator\n  install: one-liner\n  pin: \"{pin}\"\n"
    );
    let r = o.boot_cloud_init_with(&net.host, "ci-muster-line", &ud, None)?;
    let status = o.instance(
        &net.host,
        "ci-muster-line",
        "/usr/local/bin/muster status --output json",
    )?;
    assert!(
        status.stdout.contains("\"enrolled\":true"),
        "{status:?}\n{r:?}\n{}",
        cloud_init_traces(&o)
    );
    assert!(!cloud_init_traces(&o).contains(&token));

    // A refused token fails the module, named, with the refusal's code; nothing certified.
    let (bad, bad_id, _) = c.token_with_line(r#"{"persistent":true,"roles":["allocator"]}"#)?;
    let (code, _) = c.api("DELETE", &format!("{TOKENS}/{bad_id}"), None)?;
    assert_eq!(code, 200);
    let o = Overlay::new(&base)?;
    packaged(&o)?;
    let ud = format!(
        "#cloud-config\nmuster:\n  coordinator_host: {coordinator}\n  roles_token: {bad}\n"
    );
    o.boot_cloud_init_with(&net.host, "ci-muster-refused", &ud, None)?;
    let traces = cloud_init_traces(&o);
    println!(
        "cloud-init.log on a refused token:\n{}",
        traces
            .lines()
            .filter(|l| l.contains("cc_muster")
                || l.contains("module muster")
                || l.contains("RuntimeError"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(traces.contains("token.revoked"), "{traces}");
    assert!(traces.contains("Running module muster"), "{traces}");
    assert!(!o.path("etc/muster/tls/node.crt").exists());
    assert!(!traces.contains(&bad));

    // A bad key: named, and nothing done.
    let o = Overlay::new(&base)?;
    packaged(&o)?;
    let ud = format!("#cloud-config\nmuster:\n  coordinator_host: {coordinator}\n  roles_token: {token}\n  role: allocator\n");
    o.boot_cloud_init_with(&net.host, "ci-muster-badkey", &ud, None)?;
    let traces = cloud_init_traces(&o);
    assert!(traces.contains("unknown key 'role'"), "{traces}");
    assert!(!o.path("var/lib/muster/enrollment.json").exists());
    assert!(!o.path("etc/muster/tls").exists());
    Ok(())
}
