//! What `muster` writes on a host, where, owned by whom, with which mode. One table, used by
//! the install, `--dry-run`, `renew` and `leave`, so the paths and modes are said once.

use crate::owner::Owners;
use muster_protocol::fs::Perms;
use std::path::{Path, PathBuf};

/// Every file Muster writes, relative to `--root`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum File {
    NodeYaml,
    TransportCa,
    HttpCa,
    NodeCert,
    NodeKey,
    HttpCert,
    HttpKey,
    Keystore,
    KeystorePassword,
    Truststore,
    State,
    /// A renewal answered but not yet written out (see `renew::renew`); not part of an install.
    Renewal,
}

/// Which user a file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// root:root
    Root,
    /// root:muster
    RootGroup,
    /// muster:muster
    Service,
}

impl File {
    pub const ALL: [File; 11] = [
        File::NodeKey,
        File::HttpKey,
        File::TransportCa,
        File::HttpCa,
        File::NodeCert,
        File::HttpCert,
        File::Keystore,
        File::KeystorePassword,
        File::Truststore,
        File::NodeYaml,
        File::State,
    ];

    pub fn rel(self) -> &'static str {
        match self {
            File::NodeYaml => "etc/muster/node.yaml",
            File::TransportCa => "etc/muster/tls/transport-ca.pem",
            File::HttpCa => "etc/muster/tls/http-ca.pem",
            File::NodeCert => "etc/muster/tls/node.crt",
            File::NodeKey => "etc/muster/tls/node.key",
            File::HttpCert => "etc/muster/tls/http.crt",
            File::HttpKey => "etc/muster/tls/http.key",
            File::Keystore => "etc/muster/tls/node.p12",
            File::KeystorePassword => "etc/muster/tls/node.p12.password",
            File::Truststore => "etc/muster/tls/truststore.p12",
            File::State => "var/lib/muster/enrollment.json",
            File::Renewal => "var/lib/muster/renewal.json",
        }
    }

    fn who_mode(self) -> (Who, u32) {
        match self {
            File::NodeYaml => (Who::RootGroup, 0o640),
            File::TransportCa
            | File::HttpCa
            | File::NodeCert
            | File::HttpCert
            | File::Truststore => (Who::RootGroup, 0o644),
            File::NodeKey | File::HttpKey | File::Keystore | File::KeystorePassword => {
                (Who::Service, 0o600)
            }
            File::State | File::Renewal => (Who::Root, 0o600),
        }
    }

    pub fn path(self, root: &Path) -> PathBuf {
        root.join(self.rel())
    }

    pub fn perms(self, o: &Owners) -> Perms {
        let (who, mode) = self.who_mode();
        perms(who, mode, o)
    }
}

fn perms(who: Who, mode: u32, o: &Owners) -> Perms {
    match who {
        Who::Root => Perms {
            uid: o.root_uid,
            gid: o.root_gid,
            mode,
        },
        Who::RootGroup => Perms {
            uid: o.root_uid,
            gid: o.gid,
            mode,
        },
        Who::Service => Perms {
            uid: o.uid,
            gid: o.gid,
            mode,
        },
    }
}

/// Folders Muster creates, in creation order, with their perms.
pub fn dirs(root: &Path, o: &Owners) -> Vec<(PathBuf, Perms)> {
    vec![
        (root.join("etc/muster"), perms(Who::Root, 0o755, o)),
        (root.join("etc/muster/tls"), perms(Who::RootGroup, 0o750, o)),
        (root.join("var/lib/muster"), perms(Who::Root, 0o700, o)),
    ]
}

/// Refuses a symbolic link or a folder every user may write to on the way from `root` to the
/// folders Muster writes in (`ROOT/var` pointing at another user's folder would put keys
/// there), before anything is made or written.
pub fn check_folders(root: &Path) -> crate::exit::Result<()> {
    for dir in ["etc/muster/tls", "etc/muster/hooks.d", "var/lib/muster"] {
        muster_protocol::fs::check_folders(root, &root.join(dir))?;
    }
    Ok(())
}

/// Reads `f` as an earlier run wrote it: a file with another owner or a looser mode than
/// Muster gives it, or a symlink, is refused, never reused. `None` when it is not there.
pub fn read_written(root: &Path, f: File, o: &Owners) -> crate::exit::Result<Option<Vec<u8>>> {
    read_written_at(&f.path(root), f, o)
}

/// [`read_written`] for `f` kept at `path` (a staged or saved copy).
pub fn read_written_at(path: &Path, f: File, o: &Owners) -> crate::exit::Result<Option<Vec<u8>>> {
    Ok(muster_protocol::fs::read_written(path, f.perms(o))?)
}

/// The owners of what only root (or the user running a scratch install) writes: the state.
pub fn own_owners() -> Owners {
    let (u, g) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let (root_uid, root_gid) = if u == 0 { (0, 0) } else { (u, g) };
    Owners {
        root_uid,
        root_gid,
        uid: root_uid,
        gid: root_gid,
    }
}

/// One writing command at a time on a host: `install`, `renew`, `leave` and each round of the
/// agent hold this lock on `var/lib/muster/.lock` while they work, so a renewal by hand and the
/// agent's own never interleave their files, and an install does not sweep away another
/// command's temporary files. Released when dropped (or when the process dies).
pub struct HostLock(#[allow(dead_code)] std::fs::File);

/// Where the [`HostLock`] lives.
pub fn lock_path(root: &Path) -> PathBuf {
    root.join("var/lib/muster/.lock")
}

/// Waits for and takes the [`HostLock`]. `var/lib/muster` must exist.
pub fn lock(root: &Path) -> crate::exit::Result<HostLock> {
    use std::os::unix::fs::OpenOptionsExt;
    check_folders(root)?;
    let path = lock_path(root);
    let failed = |what: &str, e: std::io::Error| {
        crate::exit::Failure::new(
            crate::exit::Exit::LocalWrite,
            format!("{what} {}: {e}", path.display()),
        )
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&path)
        .map_err(|e| failed("opening the lock", e))?;
    f.lock().map_err(|e| failed("locking", e))?;
    Ok(HostLock(f))
}

/// The hook folders, run in name order.
pub fn hook_dir(root: &Path, phase: &str) -> PathBuf {
    root.join("etc/muster/hooks.d").join(phase)
}

/// One line of the `--dry-run` plan.
pub fn describe(root: &Path, f: File, o: &Owners) -> String {
    let p = f.perms(o);
    format!(
        "{}  {}:{}  {:04o}",
        f.path(root).display(),
        p.uid,
        p.gid,
        p.mode
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_from_content() {
        let o = Owners {
            root_uid: 0,
            root_gid: 0,
            uid: 990,
            gid: 985,
        };
        for f in File::ALL.into_iter().chain([File::Renewal]) {
            let p = f.perms(&o);
            let secret = matches!(
                f,
                File::NodeKey
                    | File::HttpKey
                    | File::Keystore
                    | File::KeystorePassword
                    | File::State
                    | File::Renewal
            );
            assert_eq!(p.mode & 0o077 == 0, secret, "{f:?} mode {:o}", p.mode);
            if matches!(
                f,
                File::NodeKey | File::HttpKey | File::Keystore | File::KeystorePassword
            ) {
                assert_eq!(
                    (p.uid, p.gid),
                    (990, 985),
                    "{f:?} belongs to the service user"
                );
            }
        }
        assert_eq!(
            File::NodeYaml.perms(&o),
            Perms {
                uid: 0,
                gid: 985,
                mode: 0o640
            }
        );
    }
}
