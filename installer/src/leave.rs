//! `muster leave`: deregisters this host and removes its files; with `--purge`, then what the
//! one-liner installed (`purge`).
//!
//! Depends on `enrolled`, `renewal`, `replace`, `common`, `layout`, `purge`, `cli` and `exit`.

use crate::cli::{CommonArgs, Output};
use crate::common::client;
use crate::enrolled::{check_not_expired, enrolled};
use crate::exit::{Exit, Failure, Result};
use crate::layout::{self, File};
use crate::renewal::finish_renewal;
use muster_protocol::paths;
use muster_protocol::ErrorCode;

pub async fn leave(a: &CommonArgs, purge: bool) -> Result<serde_json::Value> {
    // A host that left already (or was never enrolled) still has its one-liner's things purged.
    if purge && enrolled(&a.root).is_err_and(|f| f.exit == Exit::NotEnrolled) {
        let purged = crate::purge::purge(&a.root)?;
        if a.output == Output::Text {
            eprintln!("not enrolled; purged {}", described(&purged));
        }
        return Ok(serde_json::json!({"result": "purged", "purged": purged}));
    }
    let mut out = left(a).await?;
    if purge {
        let purged = crate::purge::purge(&a.root)?;
        if a.output == Output::Text {
            eprintln!("purged {}", described(&purged));
        }
        out["purged"] = serde_json::json!(purged);
    }
    Ok(out)
}

fn described(purged: &[String]) -> String {
    if purged.is_empty() {
        "nothing: no one-liner's record here (a package's files are the package manager's)".into()
    } else {
        purged.join(", ")
    }
}

async fn left(a: &CommonArgs) -> Result<serde_json::Value> {
    enrolled(&a.root)?;
    let lock = layout::lock(&a.root)?;
    // A renewal killed half-way is finished first: its new key is what the coordinator knows.
    let st = finish_renewal(&a.root, enrolled(&a.root)?)?;
    // A host the coordinator no longer takes (removed by an admin, replaced by a rebuild, its
    // certificate revoked) has nothing left to deregister: leaving removes its files all the
    // same. So does a host whose key is gone (a leave that deregistered it and stopped before
    // the state went): it has nothing left to sign in with.
    let known = match check_not_expired(&a.root).and_then(|()| client(&a.root, &st, a.timeout)) {
        Err(f) if !File::NodeKey.path(&a.root).exists() || f.exit == Exit::NotEnrolled => {
            eprintln!(
                "muster: this host cannot sign in any more ({}); removing its files",
                f.message
            );
            false
        }
        Err(f) => return Err(f),
        Ok(mut c) => match c
            .post::<_, serde_json::Value>(paths::LEAVE, &serde_json::json!({}))
            .await
        {
            Ok(_) => true,
            Err(f) if f.code.as_deref() == Some(ErrorCode::NodeUnknown.as_str()) => {
                eprintln!(
                    "muster: the coordinator no longer takes this host's certificate ({}); removing its files",
                    f.message
                );
                false
            }
            Err(f) => return Err(f),
        },
    };
    // Private keys first, the state last: a leave that fails or is killed part-way leaves no
    // key behind a removed state, and runs again (the coordinator then no longer knows the
    // host, and the files go all the same).
    let mut removed = Vec::new();
    let mut first_error = None;
    let paths = crate::replace::replacement_paths(&a.root)
        .into_iter()
        .chain(
            [File::Renewal]
                .iter()
                .chain(File::ALL.iter())
                .filter(|f| **f != File::State)
                .map(|f| f.path(&a.root)),
        );
    for path in paths {
        match muster_protocol::fs::remove(&path) {
            Ok(true) => removed.push(path.display().to_string()),
            Ok(false) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        let mut f = Failure::from(e);
        f.message.push_str(if known {
            "; the host is deregistered but its files are not all removed: fix that and run `muster leave` again"
        } else {
            "; not every file could be removed: fix that and run `muster leave` again"
        });
        return Err(f);
    }
    if muster_protocol::fs::remove(&File::State.path(&a.root))? {
        removed.push(File::State.path(&a.root).display().to_string());
    }
    // Last, the lock itself, so that nothing of the enrollment is left in var/lib/muster.
    muster_protocol::fs::remove(&layout::lock_path(&a.root))?;
    drop(lock);
    if a.output == Output::Text {
        eprintln!("left the platform; removed {} files", removed.len());
    }
    Ok(serde_json::json!({
        "result": if known { "left" } else { "removed_locally" },
        "node_id": st.node_id,
        "removed": removed,
    }))
}
