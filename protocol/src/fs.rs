//! The one atomic-write helper. Nothing in Muster writes a file any other way.
//!
//! A write goes to a temporary file in the target's folder, which gets its mode and owner before
//! any content, is written, fsynced, renamed over the target, and then the folder is fsynced. A
//! reader sees the old file or the new one, never half of one, even across a crash. A symlink at
//! the target is refused, never followed.

use nix::fcntl::OFlag;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Who should own a written file or folder, and with which mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Why a write failed, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A symlink stands where a file or folder is to be written.
    #[error(
        "refusing to write {0}: it is a symbolic link (remove it if it is not meant to be there)"
    )]
    Symlink(PathBuf),
    /// A folder on the way to what is written is a symbolic link.
    #[error(
        "refusing to write under {0}: it is a symbolic link, and Muster writes only through real folders (remove it if it is not meant to be there)"
    )]
    SymlinkFolder(PathBuf),
    /// A folder on the way to what is written lets every user rename what is in it.
    #[error(
        "refusing to write under {0}: every user may write to it (mode {1:04o}); make it writable by its owner only"
    )]
    OpenFolder(PathBuf, u32),
    /// A file an earlier run should have written has an owner or mode that run never gives.
    #[error(
        "refusing to reuse {path}: it is owned by uid {uid} with mode {mode:04o}, and Muster writes it owned by uid {want_uid} with mode {want_mode:04o}; remove it if it is not meant to be there"
    )]
    NotOurs {
        path: PathBuf,
        uid: u32,
        mode: u32,
        want_uid: u32,
        want_mode: u32,
    },
    /// Something other than a regular file or folder stands there.
    #[error("refusing to write {0}: it exists and is not a {1}")]
    WrongType(PathBuf, &'static str),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Gives the open file (or folder) `f`, found at `path`, the owner in `perms`. Through the
/// descriptor, never the name, so whoever can rename things in its folder cannot redirect it.
fn chown(f: &fs::File, path: &Path, perms: Perms) -> Result<(), WriteError> {
    // Only root may give files away; a non-root run (tests, --dry-run users) keeps its own ids
    // when they are what is asked, and fails clearly otherwise.
    std::os::unix::fs::fchown(f, Some(perms.uid), Some(perms.gid)).map_err(|e| WriteError::Io {
        what: "setting owner of",
        path: path.to_path_buf(),
        source: e,
    })
}

/// Refuses a symlink at `path`; tells whether something is there.
fn check_not_symlink(path: &Path) -> Result<Option<fs::Metadata>, WriteError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(WriteError::Symlink(path.to_path_buf())),
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("inspecting", path)(e)),
    }
}

/// Creates `dir` (and missing parents, with the same perms) or fixes the owner and mode of an
/// existing one. A symlink in its place is refused.
pub fn ensure_dir(dir: &Path, perms: Perms) -> Result<(), WriteError> {
    match check_not_symlink(dir)? {
        Some(m) if !m.is_dir() => return Err(WriteError::WrongType(dir.to_path_buf(), "folder")),
        Some(_) => {}
        None => {
            if let Some(parent) = dir.parent() {
                if !parent.as_os_str().is_empty() && fs::symlink_metadata(parent).is_err() {
                    ensure_dir(
                        parent,
                        Perms {
                            mode: 0o755,
                            ..perms
                        },
                    )?;
                }
            }
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("creating folder", dir)(e)),
            }
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
    }
    // Mode and owner through a descriptor opened without following a symlink, so a folder
    // swapped for one meanwhile is refused, not followed.
    let d = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY).bits())
            .open(dir)
            .map_err(io_err("opening folder", dir))?
    };
    d.set_permissions(fs::Permissions::from_mode(perms.mode))
        .map_err(io_err("setting mode of", dir))?;
    let m = d.metadata().map_err(io_err("inspecting", dir))?;
    if m.uid() != perms.uid || m.gid() != perms.gid {
        chown(&d, dir, perms)?;
    }
    Ok(())
}

/// Refuses folders between `root` (not included) and `dir` (included) that could redirect what
/// is written under `dir`: a symbolic link (`ROOT/var` pointing at a folder another user owns)
/// or a folder every user may write to without the sticky bit. Folders not made yet pass.
pub fn check_folders(root: &Path, dir: &Path) -> Result<(), WriteError> {
    let Ok(rel) = dir.strip_prefix(root) else {
        return Ok(());
    };
    let mut at = root.to_path_buf();
    for part in rel.components() {
        at.push(part);
        let m = match fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("inspecting", &at)(e)),
        };
        if m.file_type().is_symlink() {
            return Err(WriteError::SymlinkFolder(at));
        }
        if !m.is_dir() {
            return Err(WriteError::WrongType(at, "folder"));
        }
        let mode = m.mode() & 0o7777;
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(WriteError::OpenFolder(at, mode));
        }
    }
    Ok(())
}

/// Reads a file an earlier run wrote with `perms`, refusing one that run cannot have written:
/// a symbolic link, something other than a regular file, another owner, or a mode that gives
/// anyone more than `perms.mode` does. `None` when nothing is there.
pub fn read_written(path: &Path, perms: Perms) -> Result<Option<Vec<u8>>, WriteError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = match fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(WriteError::Symlink(path.to_path_buf()))
        }
        Err(e) => return Err(io_err("opening", path)(e)),
    };
    let m = f.metadata().map_err(io_err("inspecting", path))?;
    if !m.is_file() {
        return Err(WriteError::WrongType(path.to_path_buf(), "regular file"));
    }
    let mode = m.mode() & 0o7777;
    if m.uid() != perms.uid || mode & !perms.mode != 0 {
        return Err(WriteError::NotOurs {
            path: path.to_path_buf(),
            uid: m.uid(),
            mode,
            want_uid: perms.uid,
            want_mode: perms.mode,
        });
    }
    let mut content = Vec::with_capacity(m.len().min(1 << 20) as usize);
    f.read_to_end(&mut content)
        .map_err(io_err("reading", path))?;
    Ok(Some(content))
}

fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    // The parent of a bare relative name is the empty path: the current folder.
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let d = fs::File::open(dir).map_err(io_err("opening folder", dir))?;
    d.sync_all().map_err(io_err("syncing folder", dir))
}

/// Writes `content` to `path` atomically with `perms`. See the module docs.
pub fn write_atomic(path: &Path, content: &[u8], perms: Perms) -> Result<(), WriteError> {
    if let Some(m) = check_not_symlink(path)? {
        if !m.is_file() {
            return Err(WriteError::WrongType(path.to_path_buf(), "regular file"));
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".muster-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err("creating a temporary file in", dir))?;
    // Mode and owner first, so the content is never readable by anyone it is not meant for.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(perms.mode))
        .map_err(io_err("setting mode of temporary file for", path))?;
    let m = tmp
        .as_file()
        .metadata()
        .map_err(io_err("inspecting temporary file for", path))?;
    if m.uid() != perms.uid || m.gid() != perms.gid {
        chown(tmp.as_file(), path, perms)?;
    }
    tmp.write_all(content).map_err(io_err("writing", path))?;
    tmp.as_file().sync_all().map_err(io_err("syncing", path))?;
    crate::fs::failpoint("write-before-rename");
    // Check again just before the rename: a symlink planted meanwhile is still refused.
    check_not_symlink(path)?;
    tmp.persist(path).map_err(|e| WriteError::Io {
        what: "renaming into place",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dir)
}

/// Moves the file `from` over `to` (in the same folder) atomically, fsyncing the folder; a
/// symlink or a folder at `to` is refused, not replaced.
pub fn rename_into_place(from: &Path, to: &Path) -> Result<(), WriteError> {
    if let Some(m) = check_not_symlink(to)? {
        if !m.is_file() {
            return Err(WriteError::WrongType(to.to_path_buf(), "regular file"));
        }
    }
    fs::rename(from, to).map_err(io_err("renaming into place", to))?;
    match to.parent() {
        Some(d) => sync_dir(d),
        None => Ok(()),
    }
}

/// Removes `path` if it is there (a symlink is removed, not followed), fsyncing its folder.
pub fn remove(path: &Path) -> Result<bool, WriteError> {
    match fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("removing", path)(e)),
    }
}

/// Crash points for the crash-safety tests: when `MUSTER_FAILPOINT` names this point, the
/// process exits at once with code 137, as if killed. Only in debug builds (the tests'); a
/// release build, as shipped, has no way to trigger it.
pub fn failpoint(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("MUSTER_FAILPOINT").as_deref() == Ok(name) {
        eprintln!("failpoint {name}: exiting");
        std::process::exit(137);
    }
    let _ = name;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(mode: u32) -> Perms {
        Perms {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mode,
        }
    }

    #[test]
    fn writes_with_mode_and_replaces() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let p = d.path().join("a/b/key.pem");
        ensure_dir(p.parent().ok_or("no parent")?, me(0o750))?;
        write_atomic(&p, b"one", me(0o600))?;
        write_atomic(&p, b"two", me(0o600))?;
        assert_eq!(fs::read(&p)?, b"two");
        assert_eq!(fs::metadata(&p)?.permissions().mode() & 0o7777, 0o600);
        assert_eq!(
            fs::metadata(p.parent().ok_or("no parent")?)?
                .permissions()
                .mode()
                & 0o7777,
            0o750
        );
        // No temporary file stays behind.
        assert_eq!(fs::read_dir(p.parent().ok_or("no parent")?)?.count(), 1);
        Ok(())
    }

    #[test]
    fn syncs_the_current_folder_for_a_bare_name() {
        // `ensure_dir("data")` syncs the parent of "data", which is the empty path.
        assert!(sync_dir(Path::new("")).is_ok());
    }

    #[test]
    fn refuses_symlinks() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let victim = d.path().join("victim");
        fs::write(&victim, b"keep")?;
        let p = d.path().join("node.key");
        std::os::unix::fs::symlink(&victim, &p)?;
        let e = write_atomic(&p, b"x", me(0o600));
        assert!(matches!(e, Err(WriteError::Symlink(_))), "{e:?}");
        assert_eq!(fs::read(&victim)?, b"keep");
        let dl = d.path().join("tls");
        std::os::unix::fs::symlink(d.path(), &dl)?;
        assert!(matches!(
            ensure_dir(&dl, me(0o750)),
            Err(WriteError::Symlink(_))
        ));
        Ok(())
    }
}
