//! The host files layer: what an enrollment keeps on the host (keys, `enrollment.json`,
//! certificates, keystores, `node.yaml`), read and written with Muster's owners and modes.
//!
//! It depends only on `layout`, `owner`, `state`, `exit` and `muster-protocol`: never on the
//! commands (`install`, `status`, `renew`, `agent`, `leave`, ...) nor on `cli`, so every
//! command can use it.

pub mod certs;
pub mod keys;

pub use certs::{check_bundle, check_certs, write_bundle, write_certs, write_node_yaml, Certs};
pub use keys::Key;

use crate::exit::{Exit, Failure, Result};
use crate::layout::{self, File};
use crate::owner::Owners;
use crate::state::State;
use muster_protocol::fs::write_atomic;
use std::path::Path;

pub fn read_state(root: &Path) -> Result<Option<State>> {
    let p = File::State.path(root);
    match layout::read_written(root, File::State, &layout::own_owners())? {
        Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Failure::new(
                Exit::Other,
                format!(
                    "{} is damaged ({e}); remove it and run with --force",
                    p.display()
                ),
            )
        }),
        None => Ok(None),
    }
}

pub fn write_state(root: &Path, o: &Owners, s: &State) -> Result<()> {
    let json =
        serde_json::to_vec_pretty(s).map_err(|e| Failure::new(Exit::Other, e.to_string()))?;
    Ok(write_atomic(
        &File::State.path(root),
        &json,
        File::State.perms(o),
    )?)
}

/// Owners as the files on disk have them (keys belong to the service user).
pub fn owners_on_disk(root: &Path) -> Result<Owners> {
    use std::os::unix::fs::MetadataExt;
    let key = std::fs::metadata(File::NodeKey.path(root)).map_err(|e| {
        Failure::new(
            Exit::NotEnrolled,
            format!("reading {}: {e}", File::NodeKey.path(root).display()),
        )
    })?;
    let st = std::fs::metadata(File::State.path(root)).map_err(|e| {
        Failure::new(
            Exit::NotEnrolled,
            format!("reading {}: {e}", File::State.path(root).display()),
        )
    })?;
    Ok(Owners {
        root_uid: st.uid(),
        root_gid: st.gid(),
        uid: key.uid(),
        gid: key.gid(),
    })
}

/// A run killed between a temporary file's write and its rename leaves the temporary behind
/// (the target itself is never half-written); the next run clears them away.
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".muster-")
            && name.ends_with(".tmp")
            && e.file_type().is_ok_and(|t| t.is_file())
        {
            let _ = muster_protocol::fs::remove(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Stage;

    #[test]
    fn the_state_reads_back_as_written_and_a_damaged_one_is_named(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let root = root.path();
        let o = layout::own_owners();
        for (dir, perms) in layout::dirs(root, &o) {
            muster_protocol::fs::ensure_dir(&dir, perms)?;
        }
        assert_eq!(read_state(root)?, None);
        let st = State {
            node_id: Some("n-1".into()),
            ..State::new(Stage::Joined)
        };
        write_state(root, &o, &st)?;
        assert_eq!(read_state(root)?, Some(st));

        std::fs::write(File::State.path(root), "{")?;
        let e = read_state(root).err().ok_or("a damaged state was read")?;
        assert_eq!(e.exit, Exit::Other);
        assert!(
            e.message.ends_with("; remove it and run with --force"),
            "{}",
            e.message
        );
        Ok(())
    }

    #[test]
    fn only_muster_temporaries_are_cleared() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        std::fs::write(d.join(".muster-abc.tmp"), "")?;
        std::fs::write(d.join("node.key"), "")?;
        std::fs::write(d.join(".muster-abc"), "")?;
        std::fs::create_dir(d.join(".muster-dir.tmp"))?;
        remove_stale_temporaries(d);
        assert!(!d.join(".muster-abc.tmp").exists());
        assert!(d.join("node.key").exists());
        assert!(d.join(".muster-abc").exists());
        assert!(d.join(".muster-dir.tmp").is_dir());
        // A folder that is not there is no error.
        remove_stale_temporaries(&d.join("missing"));
        Ok(())
    }
}
