//! Recovery: `muster install` with the emergency token and the coordinator role turns this host
//! into a coordinator of the platform, when every other coordinator is gone.
//!
//! 1. `POST /api/v1/node/recover` to a director (or a live coordinator): the store settings and
//!    the platform's secrets, still sealed; the data key in it is wrapped under the emergency
//!    token.
//! 2. Unwrap the data key here, with the token this host holds (argon2id, then AES-256-GCM), and
//!    check that it opens the secrets.
//! 3. Write what `musterd serve` reads, each file atomically: `ROOT/etc/muster/musterd.yaml`,
//!    `ROOT/var/lib/musterd/unseal.key` (0600), `ROOT/var/lib/musterd/ca.pem`, and etcd's TLS
//!    files under `ROOT/etc/muster/etcd/` when the store needs them.
//! 4. The caller then enrolls this host through its own new coordinator, once that serves (the
//!    package's `musterd.service`, or `musterd serve --config … --data-dir …`).

use crate::exit::{Exit, Failure, Result};
use crate::net::Client;
use muster_protocol::fs::{ensure_dir, write_atomic, Perms};
use muster_protocol::node::{RecoverRequest, Recovery, SealedStoreTls};
use muster_protocol::seal::{unwrap_data_key, SEALED_CONTEXT, UNSEAL_KEY_FILE};
use muster_protocol::token::Secret;
use muster_protocol::{paths, Role};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// musterd's config file, as this host's new coordinator reads it (`musterd serve --config`).
pub const MUSTERD_YAML: &str = "etc/muster/musterd.yaml";
/// musterd's data folder.
pub const MUSTERD_DATA: &str = "var/lib/musterd";
const ETCD_DIR: &str = "etc/muster/etcd";

/// The subset of musterd's config a recovered coordinator needs; musterd refuses unknown keys,
/// so this is checked again when it starts.
#[derive(Serialize)]
struct MusterdYaml {
    version: u32,
    listen: String,
    advertise: Vec<String>,
    mode: &'static str,
    store: StoreYaml,
}

#[derive(Serialize)]
struct StoreYaml {
    backend: &'static str,
    etcd: EtcdYaml,
}

#[derive(Serialize)]
struct EtcdYaml {
    endpoints: Vec<String>,
    prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<EtcdTlsYaml>,
}

#[derive(Serialize)]
struct EtcdTlsYaml {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// What recovery left behind: the files written and where this host's coordinator will listen.
pub struct Recovered {
    pub files: Vec<String>,
    /// Where to enroll this host: its own coordinator, on loopback.
    pub local: String,
    pub advertise: String,
}

/// The port of `HOST:PORT`, or the default.
fn port_of(addr: &str) -> u16 {
    muster_protocol::addr::split(addr)
        .1
        .unwrap_or(muster_protocol::DEFAULT_PORT)
}

/// Owners for musterd's files: the root's `musterd` user if it has one (the musterd package
/// makes it), else root.
fn musterd_owner(root: &Path, euid: u32, egid: u32) -> (u32, u32) {
    crate::owner::resolve(root, "musterd", euid, egid)
        .map(|o| (o.uid, o.gid))
        .unwrap_or((euid, egid))
}

/// Asks `client`'s coordinator for the sealed platform and writes this host's coordinator
/// files under `root`.
pub async fn recover(
    client: &mut Client,
    root: &Path,
    token: &str,
    roles: &[Role],
    advertise: &str,
) -> Result<Recovered> {
    let req = RecoverRequest {
        token: Secret::new(token),
        roles: roles.to_vec(),
    };
    let rec: Recovery = client.post(paths::RECOVER, &req).await?;
    write(root, token, &rec, advertise)
}

/// Refuses to recover over another coordinator's data: an unseal key that is not this
/// platform's (writing ours would lock that platform's secrets away for good: its emergency
/// token still unwraps its data key, but nothing on this host would hold it) or an embedded
/// store (a coordinator of its own lives here; its musterd.yaml would be replaced). The same
/// key again, from an earlier run of this recovery, is not in the way.
fn in_the_way(root: &Path, key: &str) -> Result<()> {
    let data = root.join(MUSTERD_DATA);
    let held = data.join(UNSEAL_KEY_FILE);
    let away = |what: String| {
        Err(Failure::new(
            Exit::LocalWrite,
            format!(
                "{what}: this host already runs a coordinator of its own. Nothing of musterd's \
                 was written (this host's new node keys stay for the next run); to recover \
                 here, move {} away first (it may be the only copy of that platform's key)",
                data.display()
            ),
        ))
    };
    match std::fs::read_to_string(&held).map(zeroize::Zeroizing::new) {
        Ok(text) if text.trim() == key => {}
        Ok(_) => {
            return away(format!(
                "{} holds another platform's unseal key",
                held.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Failure::new(
                Exit::LocalWrite,
                format!("reading {}: {e}", held.display()),
            ))
        }
    }
    let db = data.join("muster.db");
    if std::fs::symlink_metadata(&db).is_ok() {
        return away(format!(
            "{} is a coordinator's embedded store",
            db.display()
        ));
    }
    Ok(())
}

fn write(root: &Path, token: &str, rec: &Recovery, advertise: &str) -> Result<Recovered> {
    let key =
        unwrap_data_key(token, &rec.kdf_salt, &rec.wrapped_key, &rec.sealed).map_err(|e| {
            Failure::new(
                Exit::TokenRefused,
                format!("the coordinator's answer does not unseal with this token: {e}"),
            )
        })?;
    let tls = if rec.store.tls {
        let plain = key.open(&rec.sealed, SEALED_CONTEXT).map_err(|e| {
            Failure::new(Exit::Other, format!("opening the platform's secrets: {e}"))
        })?;
        serde_json::from_slice::<SealedStoreTls>(&plain)
            .map_err(|e| {
                Failure::new(
                    Exit::Other,
                    format!("reading the store's TLS settings: {e}"),
                )
            })?
            .store_tls
    } else {
        None
    };

    in_the_way(root, &key.encode())?;

    let (e, g) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let (root_uid, root_gid) = if e == 0 { (0, 0) } else { (e, g) };
    let (uid, gid) = musterd_owner(root, e, g);
    let p = |uid, gid, mode| Perms { uid, gid, mode };
    let mut files = Vec::new();
    let mut put = |rel: &str, bytes: &[u8], perms: Perms| -> Result<PathBuf> {
        let path = root.join(rel);
        write_atomic(&path, bytes, perms)?;
        files.push(path.display().to_string());
        Ok(path)
    };

    ensure_dir(&root.join("etc/muster"), p(root_uid, root_gid, 0o755))?;
    ensure_dir(&root.join("var/lib"), p(root_uid, root_gid, 0o755))?;
    ensure_dir(&root.join(MUSTERD_DATA), p(uid, gid, 0o700))?;
    put(
        &format!("{MUSTERD_DATA}/{UNSEAL_KEY_FILE}"),
        key.encode().as_bytes(),
        p(uid, gid, 0o600),
    )?;
    put(
        &format!("{MUSTERD_DATA}/ca.pem"),
        rec.http_ca_pem.as_bytes(),
        p(uid, gid, 0o644),
    )?;

    // etcd's TLS files, as paths on the host itself (the root is where it is mounted now).
    let etcd_tls = match &tls {
        None => None,
        Some(t) => {
            ensure_dir(&root.join(ETCD_DIR), p(root_uid, gid, 0o750))?;
            let mut one =
                |name: &str, pem: Option<&str>, perms: Perms| -> Result<Option<PathBuf>> {
                    match pem {
                        None => Ok(None),
                        Some(pem) => {
                            let rel = format!("{ETCD_DIR}/{name}");
                            put(&rel, pem.as_bytes(), perms)?;
                            Ok(Some(Path::new("/").join(rel)))
                        }
                    }
                };
            Some(EtcdTlsYaml {
                ca: one("ca.pem", t.ca_pem.as_deref(), p(root_uid, gid, 0o644))?,
                cert: one("client.pem", t.cert_pem.as_deref(), p(root_uid, gid, 0o644))?,
                key: one(
                    "client-key.pem",
                    t.key_pem.as_ref().map(Secret::expose),
                    p(uid, gid, 0o600),
                )?,
            })
        }
    };

    let port = port_of(advertise);
    let yaml = MusterdYaml {
        version: 1,
        listen: format!("0.0.0.0:{port}"),
        advertise: vec![advertise.to_string()],
        mode: "coordinator",
        store: StoreYaml {
            backend: "etcd",
            etcd: EtcdYaml {
                endpoints: rec.store.endpoints.clone(),
                prefix: rec.store.prefix.clone(),
                tls: etcd_tls,
            },
        },
    };
    let text = serde_norway::to_string(&yaml)
        .map_err(|e| Failure::new(Exit::Other, format!("writing musterd.yaml: {e}")))?;
    let text = format!(
        "# Written by `muster install` when this host recovered the platform's coordinator role.\n{text}"
    );
    put(MUSTERD_YAML, text.as_bytes(), p(root_uid, gid, 0o640))?;
    Ok(Recovered {
        files,
        local: format!("127.0.0.1:{port}"),
        advertise: advertise.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_default_to_musters() {
        assert_eq!(port_of("c1.example:2443"), 2443);
        assert_eq!(port_of("c1.example"), muster_protocol::DEFAULT_PORT);
        assert_eq!(port_of("[::1]:7"), 7);
    }

    #[test]
    fn another_coordinators_data_is_in_the_way(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let data = root.path().join(MUSTERD_DATA);
        let refused = |root: &Path| match in_the_way(root, "ours") {
            Ok(()) => None,
            Err(f) => Some((f.exit, f.message)),
        };
        // Nothing there yet, or only this platform's key from an earlier run.
        assert_eq!(refused(root.path()), None);
        std::fs::create_dir_all(&data)?;
        std::fs::write(data.join(UNSEAL_KEY_FILE), "ours\n")?;
        assert_eq!(refused(root.path()), None);
        // Another platform's key: refused by name, and the key itself never shown.
        std::fs::write(data.join(UNSEAL_KEY_FILE), "theirs\n")?;
        let (exit, why) = refused(root.path()).ok_or("another key is in the way")?;
        assert_eq!(exit, Exit::LocalWrite);
        assert!(why.contains("unseal.key holds another platform's"), "{why}");
        assert!(!why.contains("theirs"), "{why}");
        // A coordinator on its embedded store.
        std::fs::remove_file(data.join(UNSEAL_KEY_FILE))?;
        std::fs::write(data.join("muster.db"), "")?;
        let (exit, why) = refused(root.path()).ok_or("an embedded store is in the way")?;
        assert_eq!(exit, Exit::LocalWrite);
        assert!(why.contains("embedded store"), "{why}");
        Ok(())
    }
}
