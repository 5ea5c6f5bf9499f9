//! Resolving `--owner USER[:GROUP]` from the target root's own `etc/passwd` and `etc/group`.
//!
//! The static installer never asks glibc's NSS (a static binary that loads an NSS module can
//! crash), and the owner that matters is the one in the root being installed into.

use crate::exit::{Exit, Failure, Result};
use std::path::Path;

/// The ids files are written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owners {
    /// `root`, or the invoking user when not run as root (a scratch root).
    pub root_uid: u32,
    pub root_gid: u32,
    /// The service user (`muster` by default).
    pub uid: u32,
    pub gid: u32,
}

/// Looks `name` up in a passwd- or group-format file: the id in field 3. A number is taken as is.
fn lookup(text: &str, name: &str) -> Option<(u32, Option<u32>)> {
    if let Ok(n) = name.parse::<u32>() {
        return Some((n, None));
    }
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 3 && f[0] == name {
            let id = f[2].parse().ok()?;
            let gid = f.get(3).and_then(|g| g.parse().ok());
            Some((id, gid))
        } else {
            None
        }
    })
}

/// Resolves `spec` (`user`, `user:group`, or numeric ids) against `root`.
pub fn resolve(root: &Path, spec: &str, euid: u32, egid: u32) -> Result<Owners> {
    let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap_or_default();
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read("etc/passwd");
    let (uid, primary) = lookup(&passwd, user).ok_or_else(|| {
        Failure::new(
            Exit::Usage,
            format!(
                "user {user:?} is not in {}: create it (the muster package does) or pass --owner USER[:GROUP]",
                root.join("etc/passwd").display()
            ),
        )
    })?;
    let gid = match group {
        Some(g) => lookup(&read("etc/group"), g)
            .map(|(id, _)| id)
            .ok_or_else(|| {
                Failure::new(
                    Exit::Usage,
                    format!(
                        "group {g:?} is not in {}; pass --owner USER:GROUP",
                        root.join("etc/group").display()
                    ),
                )
            })?,
        None => primary.unwrap_or(uid),
    };
    let (root_uid, root_gid) = if euid == 0 { (0, 0) } else { (euid, egid) };
    if euid != 0 && (uid != euid || gid != egid) {
        return Err(Failure::new(
            Exit::Usage,
            format!("only root can give files to {spec} (uid {uid}); run as root or pass --owner {euid}:{egid}"),
        ));
    }
    Ok(Owners {
        root_uid,
        root_gid,
        uid,
        gid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_from_the_target_root() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        std::fs::create_dir_all(d.path().join("etc"))?;
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nmuster:x:990:985::/var/lib/muster:/usr/sbin/nologin\n",
        )?;
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nmuster:x:985:\nadm:x:4:\n",
        )?;
        let cases: &[(&str, Option<(u32, u32)>)] = &[
            ("muster", Some((990, 985))),
            ("muster:adm", Some((990, 4))),
            ("1234:55", Some((1234, 55))),
            ("nobody-here", None),
            ("muster:nogroup", None),
        ];
        for (spec, want) in cases {
            let got = resolve(d.path(), spec, 0, 0).ok().map(|o| (o.uid, o.gid));
            assert_eq!(&got, want, "spec {spec}");
        }
        assert!(
            resolve(d.path(), "muster", 1000, 1000).is_err(),
            "non-root cannot give files away"
        );
        Ok(())
    }
}
