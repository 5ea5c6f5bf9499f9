//! `--force`'s replacement of a working enrollment, and the undoing of a first run refused for
//! good: the new keys staged beside the old ones until the new join is answered, copies of the
//! replaced enrollment kept until the new one is committed and put back if it never can be,
//! and what a refused first run wrote taken away again.
//!
//! Depends on `common` (whether the coordinator still takes an enrollment), `layout`, `owner`,
//! `exit` and `muster-protocol`; never on a flow.

use crate::common::still_registered;
use crate::exit::{Exit, Failure, Result};
use crate::layout::{self, File, HostLock};
use crate::owner::Owners;
use muster_protocol::fs::write_atomic;
use muster_protocol::ErrorCode;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// `f`'s path with its name behind `prefix`: beside it, so it moves into place by a rename.
fn beside(root: &Path, f: File, prefix: &str) -> PathBuf {
    let live = f.path(root);
    let name = live
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    live.with_file_name(format!("{prefix}{name}"))
}

/// Where `--force` keeps a new key until its join is answered: the host's working enrollment
/// stays whole meanwhile, whether the run fails or is killed.
pub fn staged(root: &Path, f: File) -> PathBuf {
    beside(root, f, ".next-")
}

/// Moves keys staged by a `--force` whose join was answered into place (the run that staged
/// them was killed before it could).
pub fn promote_staged_keys(root: &Path, o: &Owners) -> Result<()> {
    for f in [File::NodeKey, File::HttpKey] {
        let next = staged(root, f);
        if std::fs::symlink_metadata(&next).is_ok() {
            layout::read_written_at(&next, f, o)?;
            muster_protocol::fs::rename_into_place(&next, &f.path(root))?;
        }
    }
    Ok(())
}

/// Removes keys staged by a `--force` that never got its join answered.
pub fn drop_staged_keys(root: &Path) -> Result<()> {
    for f in [File::NodeKey, File::HttpKey] {
        muster_protocol::fs::remove(&staged(root, f))?;
    }
    Ok(())
}

/// Where `--force` stages keys.
pub fn staged_key_paths(root: &Path) -> [PathBuf; 2] {
    [staged(root, File::NodeKey), staged(root, File::HttpKey)]
}

/// Where `--force` keeps a file of the enrollment it replaces, from its join's answer until its
/// commit's.
fn backup(root: &Path, f: File) -> PathBuf {
    beside(root, f, ".prev-")
}

/// Keeps a copy of every file of the working enrollment (state last) before a `--force` whose
/// join was answered writes over them.
pub fn back_up_enrollment(root: &Path, o: &Owners) -> Result<()> {
    for f in File::ALL {
        let live = f.path(root);
        let bytes = match std::fs::read(&live) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Failure::new(
                    Exit::LocalWrite,
                    format!("keeping a copy of {}: {e}", live.display()),
                ))
            }
        };
        write_atomic(&backup(root, f), &bytes, f.perms(o))?;
    }
    Ok(())
}

/// Puts back the enrollment a `--force` replaced, if its copies are there (state last, so a run
/// killed half-way puts back the rest next time); whether it did.
fn restore_enrollment(root: &Path) -> Result<bool> {
    if std::fs::symlink_metadata(backup(root, File::State)).is_err() {
        return Ok(false);
    }
    for f in File::ALL {
        let prev = backup(root, f);
        if std::fs::symlink_metadata(&prev).is_ok() {
            muster_protocol::fs::rename_into_place(&prev, &f.path(root))?;
        }
    }
    Ok(true)
}

/// Removes the copies of a replaced enrollment (the new one is committed, or the old one
/// whole). A copy that cannot be removed is named, not fatal: `install`, `leave` try again.
pub fn drop_backups(root: &Path) {
    for f in File::ALL {
        if let Err(e) = muster_protocol::fs::remove(&backup(root, f)) {
            eprintln!("muster: {e}; remove it by hand (a copy of the enrollment --force replaced)");
        }
    }
}

/// A restore killed half-way (it puts the keys back first, the state last) is finished before
/// anything else, so no new key is written beside an old certificate.
pub fn finish_interrupted_restore(root: &Path) -> Result<()> {
    let state_kept = std::fs::symlink_metadata(backup(root, File::State)).is_ok();
    let key_kept = std::fs::symlink_metadata(backup(root, File::NodeKey)).is_ok();
    if state_kept && !key_kept {
        eprintln!("muster: finishing putting back the enrollment a --force replaced");
        restore_enrollment(root)?;
    }
    Ok(())
}

/// What `--force` leaves beside the live files while it runs: staged keys and copies of the
/// enrollment it replaces (`leave` removes them).
pub fn replacement_paths(root: &Path) -> Vec<PathBuf> {
    let mut out = staged_key_paths(root).to_vec();
    out.extend(File::ALL.iter().map(|f| backup(root, *f)));
    out
}

/// What a join that failed (anything from its keys to its checked bundle) leaves of this run,
/// whose lock is `lock`; returns the failure to report.
///
/// A first run (`first_run`: no state before it) refused for good (a forged or revoked token,
/// a role it does not grant, another platform's coordinator): the host is left exactly as it
/// was. Only a coordinator that may answer later keeps the keys, for the retry. A `--force`
/// (`replacing`) drops the keys it staged and keeps the working enrollment; anything else may
/// be a resumed `--force`, whose replaced enrollment is put back if it still can be.
pub async fn after_failed_join(
    root: &Path,
    e: Failure,
    first_run: bool,
    replacing: bool,
    made_dirs: &[PathBuf],
    lock: HostLock,
) -> Failure {
    match e {
        e if first_run && !replacing && final_refusal(&e) => {
            drop(lock);
            undo_first_run(root, made_dirs);
            e
        }
        mut e if replacing => {
            if let Err(d) = drop_staged_keys(root) {
                return d;
            }
            e.message
                .push_str("; the host's previous enrollment is kept as it was");
            e
        }
        // A resumed `--force` whose join is now refused for good: the old enrollment back.
        e => put_back_if_still_registered(root, e).await,
    }
}

/// Whether a coordinator's refusal says the join was not committed, and running again will
/// not change that: the token refused, the reservation gone, the name taken, the proof refused.
/// (A commit whose earlier attempt went through is answered as committed, never refused.)
fn refused_for_good(e: &Failure) -> bool {
    e.code.as_deref().is_some_and(|c| {
        c.starts_with("token.")
            || c == ErrorCode::JoinUnknown.as_str()
            || c == ErrorCode::HostReplaceRoles.as_str()
            || c == ErrorCode::JoinProof.as_str()
    })
}

/// Whether a failure of a first run can never turn into an enrollment by running again: the
/// token refused, a role it does not grant, a coordinator that is not the platform's.
fn final_refusal(e: &Failure) -> bool {
    matches!(
        e.exit,
        Exit::TokenRefused | Exit::RoleNotAllowed | Exit::PinMismatch
    ) || refused_for_good(e)
}

/// A `--force`'s new join refused for good at its commit: the enrollment it replaced (never
/// replaced at the coordinator, since nothing was committed) is put back, if it was kept.
pub fn put_back_on_final(root: &Path, e: Failure) -> Failure {
    if !refused_for_good(&e) {
        return e;
    }
    put_back(root, e)
}

/// A resumed `--force` whose join is now refused for good: the run before may have committed
/// (replacing the old record and revoking its certificates) and been stopped before it said
/// so, so the enrollment it replaced is put back only if the coordinator still takes it.
async fn put_back_if_still_registered(root: &Path, e: Failure) -> Failure {
    if !refused_for_good(&e) || std::fs::symlink_metadata(backup(root, File::State)).is_err() {
        return e;
    }
    let paths = |f: File| backup(root, f);
    if still_registered(&paths).await {
        put_back(root, e)
    } else {
        let mut e = e;
        e.message.push_str("; the enrollment it replaced is no longer registered, so it is not put back: enroll with a valid token");
        e
    }
}

fn put_back(root: &Path, mut e: Failure) -> Failure {
    match restore_enrollment(root) {
        Ok(true) => e
            .message
            .push_str("; the host's previous enrollment is put back as it was"),
        Ok(false) => {}
        Err(r) => e.message.push_str(&format!(
            "; putting the previous enrollment back failed too: {}",
            r.message
        )),
    }
    e
}

/// The host folders (and their parents, up to the root) that do not exist yet, deepest last.
pub fn missing_dirs(root: &Path, o: &Owners) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = vec![];
    for (dir, _) in layout::dirs(root, o) {
        let mut chain = vec![];
        let mut d = dir.as_path();
        while d != root && std::fs::symlink_metadata(d).is_err() {
            chain.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        for d in chain.into_iter().rev() {
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    out
}

/// Takes away what a first run wrote before it was refused: its keys, its state, its lock and
/// the folders it made (only while empty: whatever else is there stays).
fn undo_first_run(root: &Path, made_dirs: &[PathBuf]) {
    for path in [
        File::NodeKey.path(root),
        File::HttpKey.path(root),
        File::State.path(root),
        layout::lock_path(root),
    ] {
        if let Err(e) = muster_protocol::fs::remove(&path) {
            eprintln!("muster: {e}; remove it by hand (written by this refused run)");
        }
    }
    for d in made_dirs.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(exit: Exit, code: Option<&str>) -> Failure {
        Failure {
            exit,
            message: "refused".into(),
            code: code.map(str::to_string),
        }
    }

    /// A scratch root with Muster's folders, owned by whoever runs the tests.
    fn scratch() -> std::result::Result<(tempfile::TempDir, Owners), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let o = layout::own_owners();
        for (dir, perms) in layout::dirs(root.path(), &o) {
            muster_protocol::fs::ensure_dir(&dir, perms)?;
        }
        Ok((root, o))
    }

    fn put(root: &Path, o: &Owners, f: File, content: &str) -> Result<()> {
        Ok(write_atomic(&f.path(root), content.as_bytes(), f.perms(o))?)
    }

    #[test]
    fn which_refusals_are_for_good() {
        for code in [
            "token.expired",
            "token.revoked",
            ErrorCode::JoinUnknown.as_str(),
            ErrorCode::HostReplaceRoles.as_str(),
            ErrorCode::JoinProof.as_str(),
        ] {
            let e = refused(Exit::Other, Some(code));
            assert!(refused_for_good(&e), "{code}");
            assert!(final_refusal(&e), "{code}");
        }
        // A coordinator that may answer otherwise later: the keys stay for the retry.
        for code in [
            ErrorCode::Internal.as_str(),
            ErrorCode::NodeUnknown.as_str(),
        ] {
            let e = refused(Exit::Other, Some(code));
            assert!(!refused_for_good(&e), "{code}");
            assert!(!final_refusal(&e), "{code}");
        }
        // A first run is also over for good when refused here, before the coordinator says so.
        for exit in [Exit::TokenRefused, Exit::RoleNotAllowed, Exit::PinMismatch] {
            assert!(final_refusal(&refused(exit, None)), "{exit:?}");
            assert!(!refused_for_good(&refused(exit, None)), "{exit:?}");
        }
        for exit in [
            Exit::Unreachable,
            Exit::LocalWrite,
            Exit::Other,
            Exit::HookFailed,
        ] {
            assert!(!final_refusal(&refused(exit, None)), "{exit:?}");
        }
    }

    #[test]
    fn a_replaced_enrollment_is_kept_then_put_back(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let (root, o) = scratch()?;
        let root = root.path();
        put(root, &o, File::NodeKey, "old key")?;
        put(root, &o, File::State, "{\"old\": true}")?;
        back_up_enrollment(root, &o)?;
        // Only what was there is kept.
        assert!(backup(root, File::NodeKey).is_file());
        assert!(!backup(root, File::HttpKey).exists());
        put(root, &o, File::NodeKey, "new key")?;
        put(root, &o, File::State, "{\"new\": true}")?;

        // A failure the coordinator may answer otherwise later puts nothing back.
        let e = put_back_on_final(root, refused(Exit::Unreachable, None));
        assert_eq!(e.message, "refused");
        assert_eq!(
            std::fs::read_to_string(File::NodeKey.path(root))?,
            "new key"
        );

        let e = put_back_on_final(
            root,
            refused(Exit::Other, Some(ErrorCode::JoinProof.as_str())),
        );
        assert_eq!(
            e.message,
            "refused; the host's previous enrollment is put back as it was"
        );
        assert_eq!(
            std::fs::read_to_string(File::NodeKey.path(root))?,
            "old key"
        );
        assert_eq!(
            std::fs::read_to_string(File::State.path(root))?,
            "{\"old\": true}"
        );
        assert!(replacement_paths(root).iter().all(|p| !p.exists()));
        // Nothing kept any more: nothing to put back.
        assert!(!restore_enrollment(root)?);
        Ok(())
    }

    #[test]
    fn a_restore_killed_half_way_is_finished_and_backups_dropped(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let (root, o) = scratch()?;
        let root = root.path();
        put(root, &o, File::NodeKey, "old key")?;
        put(root, &o, File::State, "old state")?;
        back_up_enrollment(root, &o)?;
        put(root, &o, File::State, "new state")?;
        // Keys kept: no restore was under way, nothing is done.
        finish_interrupted_restore(root)?;
        assert_eq!(
            std::fs::read_to_string(File::State.path(root))?,
            "new state"
        );
        // The keys already moved back, the state not yet: the restore is finished.
        std::fs::rename(backup(root, File::NodeKey), File::NodeKey.path(root))?;
        finish_interrupted_restore(root)?;
        assert_eq!(
            std::fs::read_to_string(File::State.path(root))?,
            "old state"
        );
        assert!(!backup(root, File::State).exists());

        back_up_enrollment(root, &o)?;
        drop_backups(root);
        assert!(File::ALL.iter().all(|f| !backup(root, *f).exists()));
        Ok(())
    }

    #[test]
    fn staged_keys_sit_beside_the_live_ones_until_promoted(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let (root, o) = scratch()?;
        let root = root.path();
        let [node, http] = staged_key_paths(root);
        assert_eq!(node, root.join("etc/muster/tls/.next-node.key"));
        assert_eq!(http, root.join("etc/muster/tls/.next-http.key"));
        assert_eq!(
            backup(root, File::State),
            root.join("var/lib/muster/.prev-enrollment.json")
        );
        put(root, &o, File::NodeKey, "old key")?;
        write_atomic(&node, b"new key", File::NodeKey.perms(&o))?;
        promote_staged_keys(root, &o)?;
        assert_eq!(
            std::fs::read_to_string(File::NodeKey.path(root))?,
            "new key"
        );
        assert!(!node.exists());
        // Staged but never answered: dropped, the live key untouched.
        write_atomic(&http, b"unanswered", File::HttpKey.perms(&o))?;
        drop_staged_keys(root)?;
        assert!(!http.exists());
        assert!(!File::HttpKey.path(root).exists());
        Ok(())
    }

    #[test]
    fn a_refused_first_run_takes_away_what_it_made(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let root = root.path();
        let o = layout::own_owners();
        std::fs::create_dir(root.join("etc"))?;
        let made = missing_dirs(root, &o);
        assert_eq!(
            made,
            [
                "etc/muster",
                "etc/muster/tls",
                "var",
                "var/lib",
                "var/lib/muster"
            ]
            .map(|d| root.join(d))
        );
        for (dir, perms) in layout::dirs(root, &o) {
            muster_protocol::fs::ensure_dir(&dir, perms)?;
        }
        put(root, &o, File::NodeKey, "key")?;
        put(root, &o, File::HttpKey, "key")?;
        put(root, &o, File::State, "state")?;
        drop(layout::lock(root)?);
        // Someone else's file in a folder this run made: it stays, and so does its folder.
        std::fs::write(root.join("etc/muster/mine"), "")?;
        undo_first_run(root, &made);
        assert!(root.join("etc/muster/mine").is_file());
        assert!(!root.join("etc/muster/tls").exists());
        assert!(!root.join("var").exists());
        assert!(root.join("etc").is_dir(), "it was there before");
        Ok(())
    }
}
