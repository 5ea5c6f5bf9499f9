//! `muster install`: the enrollment, step by step.
//!
//! 1. check the token locally (format, algorithm, issuer, expiry, roles), before any network call
//! 2. pre-enroll hooks
//! 3. keys: generated here and written first (0600); an unfinished earlier run's keys are reused,
//!    so a retried join with the same key gets the same node id and bundle back
//! 4. join over TLS pinned to the token's CA pins
//! 5. write certificates, keystores and config, each atomically
//! 6. commit on the same connection, proving possession of the new key
//! 7. post-enroll hooks
//!
//! `enrollment.json` records the stage after each step, so a run killed anywhere converges
//! when run again.
//!
//! The install flow only: it uses the layers below it (`host` for the files, `replace` for
//! `--force` and a refused first run, `renewal`, `common`, `systemd`, `hooks`, `facts`, ...)
//! and its own steps in `install/` (`token_check`, `join`, which use none of this file), never
//! another command (`status`, `renew`, `agent`, `leave`, ...).

use crate::cli::Settings;
use crate::common::{coordinator_list, now};
use crate::exit::Result;
use crate::host::{read_state, remove_stale_temporaries, write_bundle, write_state};
use crate::layout::{self, File, HostLock};
use crate::owner::Owners;
use crate::renewal::finish_renewal;
use crate::replace;
use crate::state::{Stage, State};
use crate::systemd::start_agent;
use base64::Engine;
use muster_protocol::fs::{ensure_dir, failpoint};
use muster_protocol::node::*;
use muster_protocol::{paths, Role};
use std::path::{Path, PathBuf};

mod join;
mod token_check;

use join::{join, resumable_keys, Joined};
use token_check::{check_token, Checked};

pub use crate::host::Key;
pub use crate::progress::Progress;

/// The result of a run, printed as JSON with `--output json`.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    pub result: &'static str,
    pub node_id: Option<String>,
    pub roles: Vec<Role>,
    pub pending_roles: Vec<Role>,
    pub coordinator: Option<String>,
    pub files: Vec<String>,
}

fn already_enrolled(st: &State) -> Outcome {
    Outcome {
        result: "already_enrolled",
        node_id: st.node_id.clone(),
        roles: st.roles.clone(),
        pending_roles: st.pending_roles.clone(),
        coordinator: st.coordinators.first().cloned(),
        files: vec![],
    }
}

/// A host found enrolled (and no `--force`): said so, its agent started unless a dry run.
fn enrolled_before(root: &Path, st: &State, dry_run: bool, p: &mut Progress) -> Outcome {
    p.step("already enrolled: nothing to do (use --force to enroll again)");
    if !dry_run {
        start_agent(root, p);
    }
    already_enrolled(st)
}

pub async fn run(s: Settings) -> Result<Outcome> {
    let mut p = Progress::new(s.output);
    let root = s.root.as_path();

    // An enrolled host needs nothing from the token: a re-run (say, a reboot before the
    // enrollment unit removed its settings) says so and succeeds, even with an expired token.
    if !s.force {
        if let Some(st) = read_state(root)?.filter(|st| st.stage == Stage::Committed) {
            return Ok(enrolled_before(root, &st, s.dry_run, &mut p));
        }
    }

    let t = check_token(&s, &mut p).await?;

    let e = nix::unistd::geteuid().as_raw();
    let g = nix::unistd::getegid().as_raw();
    let owners = crate::owner::resolve(root, &s.owner, e, g)?;

    if s.dry_run {
        return Ok(dry_run(root, &owners, t, &mut p));
    }

    let facts = crate::facts::gather(s.hostname.as_deref(), &s.zone);
    p.step("running pre-enroll hooks");
    crate::hooks::run(
        &layout::hook_dir(root, "pre-enroll"),
        &[("MUSTER_ROLES", muster_protocol::role::join(&s.roles))],
    )?;

    p.step("preparing keys on this host");
    let (lock, made_dirs, state) = match prepare_host(&s, &owners, &mut p)? {
        Prepared::Enrolled(done) => return Ok(done),
        Prepared::Ready {
            lock,
            made_dirs,
            state,
        } => (lock, made_dirs, state),
    };
    let keys = resumable_keys(&s, &owners, state.as_ref(), &p)?;
    // `--force` over a working enrollment touches none of it until the new join is answered:
    // its new keys are staged beside the old ones, and the state still says enrolled. A
    // refused token, no coordinator or a kill leaves the host enrolled as it was.
    let replacing = state
        .as_ref()
        .is_some_and(|st| s.force && st.stage == Stage::Committed);
    let mut j = match join(&s, &owners, &t, &facts, keys, replacing, &mut p).await {
        Ok(done) => done,
        Err(e) => {
            let first_run = state.is_none();
            return Err(replace::after_failed_join(
                root, e, first_run, replacing, &made_dirs, lock,
            )
            .await);
        }
    };
    p.note(&format!(
        "node id {}, {}s to commit",
        j.bundle.node_id, j.bundle.remaining_seconds
    ));
    let mut st = record_join(root, &owners, &j, replacing)?;

    p.step("writing certificates, keystores and config");
    let mut files = write_bundle(
        root,
        &owners,
        &j.bundle,
        &j.tkey,
        &facts.zone,
        &st.coordinators,
    )?;
    files.extend(std::mem::take(&mut j.recovered_files));
    failpoint("after-files");

    let reply = commit(&s, &owners, &mut j, &mut st, &mut p).await?;
    finish(root, &st, j, reply, files, &mut p)
}

/// `--dry-run`: what would be written, and nothing is.
fn dry_run(root: &Path, owners: &Owners, t: Checked, p: &mut Progress) -> Outcome {
    p.step("dry run: this is what would be written (nothing is)");
    let files: Vec<String> = File::ALL
        .iter()
        .map(|f| layout::describe(root, *f, owners))
        .collect();
    for f in &files {
        p.note(f);
    }
    Outcome {
        result: "dry_run",
        node_id: None,
        roles: t.granted,
        pending_roles: vec![],
        coordinator: Some(t.coordinators[0].clone()),
        files,
    }
}

/// Where [`prepare_host`] finds the host, under its lock.
enum Prepared {
    /// Another run enrolled it meanwhile, and this one has no `--force`: nothing to do.
    Enrolled(Outcome),
    /// Ready for this run's keys: its lock, the folders it made, the state an earlier run left.
    Ready {
        lock: HostLock,
        made_dirs: Vec<PathBuf>,
        state: Option<State>,
    },
}

/// Step 3's start: the host's folders made and locked, and what an earlier run left settled.
fn prepare_host(s: &Settings, owners: &Owners, p: &mut Progress) -> Result<Prepared> {
    let root = s.root.as_path();
    // What this run makes, so that a refusal no retry can fix takes it all away again.
    layout::check_folders(root)?;
    let made_dirs = replace::missing_dirs(root, owners);
    for (dir, perms) in layout::dirs(root, owners) {
        ensure_dir(&dir, perms)?;
    }
    let lock = layout::lock(root)?;
    for (dir, _) in layout::dirs(root, owners) {
        remove_stale_temporaries(&dir);
    }
    // Under the lock, where things stand now: another run may have enrolled meanwhile, and a
    // renewal killed half-way belongs to the enrollment on disk (finished if it is committed,
    // so `--force` has a matching pair to fall back on; dropped otherwise).
    replace::finish_interrupted_restore(root)?;
    let state = match read_state(root)? {
        Some(st) if st.stage == Stage::Committed => {
            replace::drop_staged_keys(root)?;
            replace::drop_backups(root);
            if !s.force {
                return Ok(Prepared::Enrolled(enrolled_before(root, &st, s.dry_run, p)));
            }
            Some(finish_renewal(root, st)?)
        }
        other => {
            muster_protocol::fs::remove(&File::Renewal.path(root))?;
            // A `--force` killed after its join was answered: its keys are this enrollment's.
            replace::promote_staged_keys(root, owners)?;
            other
        }
    };
    Ok(Prepared::Ready {
        lock,
        made_dirs,
        state,
    })
}

/// Step 4's record: the answered join's state written (a replaced enrollment's copies kept
/// first), then the keys staged for it moved into place.
fn record_join(root: &Path, owners: &Owners, j: &Joined, replacing: bool) -> Result<State> {
    let bundle = &j.bundle;
    let st = State {
        node_id: Some(bundle.node_id.clone()),
        token_id: Some(bundle.token_id.clone()),
        roles: bundle.roles.clone(),
        pending_roles: bundle.pending_roles.clone(),
        // The address that answered first (it works from here, whatever the coordinator
        // advertises: say, its host name, which this host may not resolve), then the
        // advertised ones.
        coordinators: coordinator_list(j.client.current(), &bundle.coordinators),
        reservation_expires: Some(bundle.issued_at.saturating_add(bundle.remaining_seconds)),
        cert_not_after: Some(bundle.cert_not_after),
        ..State::new(Stage::Joined)
    };
    if replacing {
        // Until the commit is answered: a commit refused for good puts these back.
        replace::back_up_enrollment(root, owners)?;
    }
    write_state(root, owners, &st)?;
    // The new state names the new join: from here on the staged keys are this enrollment's.
    failpoint("after-join-state");
    replace::promote_staged_keys(root, owners)?;
    failpoint("after-join");
    Ok(st)
}

/// Step 6: the commit on the join's connection, proving possession of the new key; then the
/// state says committed.
async fn commit(
    s: &Settings,
    owners: &Owners,
    j: &mut Joined,
    st: &mut State,
    p: &mut Progress,
) -> Result<CommitReply> {
    let root = s.root.as_path();
    p.step("committing the enrollment");
    let proof = j
        .tkey
        .sign(&commit_message(&j.bundle.node_id, j.bundle.psk.expose()))?;
    let commit = CommitRequest {
        node_id: j.bundle.node_id.clone(),
        psk: j.bundle.psk.clone(),
        proof: base64::engine::general_purpose::STANDARD.encode(proof),
    };
    // The commit has `--timeout` of its own (within the reservation's 600 s), whatever the
    // join took.
    j.client.restart_clock(s.timeout);
    let reply: CommitReply = j
        .client
        .post(paths::COMMIT, &commit)
        .await
        .map_err(|e| replace::put_back_on_final(root, e))?;
    failpoint("after-commit-answer");
    // Committed: what --force replaced is gone at the coordinator, and its copies go too.
    replace::drop_backups(root);
    st.stage = Stage::Committed;
    st.committed_at = Some(now());
    st.last_heartbeat = st.committed_at;
    write_state(root, owners, st)?;
    Ok(reply)
}

/// Step 7 and the report: post-enroll hooks, the agent started, roles still pending named.
fn finish(
    root: &Path,
    st: &State,
    j: Joined,
    reply: CommitReply,
    files: Vec<String>,
    p: &mut Progress,
) -> Result<Outcome> {
    let Joined { client, bundle, .. } = j;
    p.step("running post-enroll hooks");
    crate::hooks::run(
        &layout::hook_dir(root, "post-enroll"),
        &crate::common::hook_env(root, st),
    )?;
    start_agent(root, p);
    if !bundle.pending_roles.is_empty() {
        p.note(&format!(
            "roles [{}] wait for an operator to grant them (PUT …/runners/{}/roles)",
            muster_protocol::role::join(&bundle.pending_roles),
            bundle.node_id
        ));
    }
    p.step(&format!(
        "enrolled as {} with roles [{}]",
        reply.node_id,
        muster_protocol::role::join(&bundle.roles)
    ));
    Ok(Outcome {
        result: "enrolled",
        node_id: Some(reply.node_id),
        roles: bundle.roles,
        pending_roles: bundle.pending_roles,
        coordinator: client.current().map(str::to_string),
        files,
    })
}
