//! A real etcd for the tests: one member or a cluster of three on loopback, with or without
//! mutual TLS.

use crate::*;

/// A real etcd cluster of `n` members on loopback ports, each in a scratch folder; stopped
/// on drop.
pub struct Etcd {
    pub dir: tempfile::TempDir,
    members: Vec<(String, Child)>,
    pub client_urls: Vec<String>,
    peer_urls: Vec<String>,
    /// Clients must present a certificate from this CA (`tls/ca.pem`, `tls/client.pem`,
    /// `tls/client.key` in `dir`), and the members serve HTTPS.
    pub tls: bool,
}

impl Etcd {
    pub fn start(n: usize) -> anyhow::Result<Etcd> {
        Etcd::make(n, false)
    }

    /// One member that serves HTTPS and requires client certificates, all made by openssl.
    pub fn start_tls() -> anyhow::Result<Etcd> {
        Etcd::make(1, true)
    }

    /// Ports are picked free but bound only when etcd starts, so a test running beside may
    /// take one in between (nextest runs tests in processes of their own): a cluster whose
    /// member found its port taken is started again on other ports, up to three times.
    fn make(n: usize, tls: bool) -> anyhow::Result<Etcd> {
        let mut attempt = 1;
        loop {
            match Etcd::make_once(n, tls) {
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    fn make_once(n: usize, tls: bool) -> anyhow::Result<Etcd> {
        let dir = tempfile::tempdir()?;
        if tls {
            make_etcd_certs(&dir.path().join("tls"))?;
        }
        let scheme = if tls { "https" } else { "http" };
        let client_urls: Vec<String> = (0..n)
            .map(|_| format!("{scheme}://127.0.0.1:{}", free_port()))
            .collect();
        let peer_urls: Vec<String> = (0..n)
            .map(|_| format!("http://127.0.0.1:{}", free_port()))
            .collect();
        let mut e = Etcd {
            dir,
            members: Vec::new(),
            client_urls,
            peer_urls,
            tls,
        };
        for i in 0..n {
            let child = e.spawn(i)?;
            e.members.push((format!("m{i}"), child));
        }
        e.wait_healthy()?;
        Ok(e)
    }

    fn spawn(&self, i: usize) -> anyhow::Result<Child> {
        let cluster = self
            .peer_urls
            .iter()
            .enumerate()
            .map(|(j, u)| format!("m{j}={u}"))
            .collect::<Vec<_>>()
            .join(",");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("m{i}.log")))?;
        let mut cmd = Command::new("etcd");
        if self.tls {
            let t = self.dir.path().join("tls");
            cmd.arg("--cert-file")
                .arg(t.join("server.pem"))
                .arg("--key-file")
                .arg(t.join("server.key"))
                .arg("--trusted-ca-file")
                .arg(t.join("ca.pem"))
                .arg("--client-cert-auth");
        }
        cmd.args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("m{i}")))
            .args(["--listen-client-urls", &self.client_urls[i]])
            .args(["--advertise-client-urls", &self.client_urls[i]])
            .args(["--listen-peer-urls", &self.peer_urls[i]])
            .args(["--initial-advertise-peer-urls", &self.peer_urls[i]])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-token", "muster-test"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian's etcd-server)")
    }

    /// Waits until every running member answers `endpoint health`.
    pub fn wait_healthy(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self
                .etcdctl()
                .args([
                    "--endpoints",
                    &self.client_urls.join(","),
                    "endpoint",
                    "health",
                ])
                .output()?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: String = (0..self.members.len())
                    .map(|i| {
                        let l = std::fs::read_to_string(self.dir.path().join(format!("m{i}.log")))
                            .unwrap_or_default();
                        let tail: Vec<&str> = l.lines().rev().take(15).collect();
                        format!(
                            "m{i}: {}\n",
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    })
                    .collect();
                bail!(
                    "etcd did not become healthy: {}\n{logs}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `etcdctl` (v3 API) with this cluster's client certificate when it has one.
    pub fn etcdctl(&self) -> Command {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3");
        if self.tls {
            let t = self.dir.path().join("tls");
            c.arg("--cacert")
                .arg(t.join("ca.pem"))
                .arg("--cert")
                .arg(t.join("client.pem"))
                .arg("--key")
                .arg(t.join("client.key"));
        }
        c
    }

    /// The process ids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(|(_, c)| c.id()).collect()
    }

    /// A counter of member `i`'s Prometheus metrics (`/metrics` on its client URL), summed
    /// over its labels; 0 if it is not there.
    pub fn metric(&self, i: usize, name: &str) -> anyhow::Result<f64> {
        let url = format!("{}/metrics", self.client_urls[i]);
        let out = tool(Command::new("curl").args(["-sf", &url]))?;
        Ok(out
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Kills member `i` (kill -9).
    pub fn kill(&mut self, i: usize) {
        if let Some((_, c)) = self.members.get_mut(i) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The `store:` lines of a server config using this cluster under `prefix`.
    pub fn store_config(&self, prefix: &str) -> String {
        let mut s = format!(
            "store:\n  backend: etcd\n  etcd:\n    endpoints: [{}]\n    prefix: {prefix}\n",
            self.client_urls.join(", ")
        );
        if self.tls {
            let t = self.dir.path().join("tls");
            s.push_str(&format!(
                "    tls: {{ ca: {}, cert: {}, key: {} }}\n",
                t.join("ca.pem").display(),
                t.join("client.pem").display(),
                t.join("client.key").display()
            ));
        }
        s
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for (_, c) in &mut self.members {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made by openssl.
fn make_etcd_certs(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let ossl = |args: &[&str]| tool(Command::new("openssl").args(args).current_dir(dir));
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=etcd test CA",
    ]);
    ossl(&ca)?;
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext)?;
        let (key, csr, pem, extf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req", "-new"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=etcd"]);
        ossl(&req)?;
        ossl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extf,
        ])?;
    }
    Ok(())
}
