//! The install flow, steps 3 and 4: this run's keys (an unfinished run's reused, or new ones
//! written, staged under `--force`), the coordinator role recovered first for an emergency
//! token, then the join and its bundle checked.
//!
//! Part of `install`, using none of it: it depends on `host`, `replace` (where `--force` stages
//! keys), `recover`, `systemd`, `net`, `progress`, `layout`, `owner`, `state`, `cli`, `exit`,
//! the sibling `token_check` and `muster-protocol`.

use super::token_check::Checked;
use crate::cli::Settings;
use crate::exit::Result;
use crate::host::{check_bundle, write_state, Key};
use crate::layout::File;
use crate::net::Client;
use crate::owner::Owners;
use crate::progress::Progress;
use crate::recover::Recovered;
use crate::replace;
use crate::state::{Stage, State};
use crate::systemd::start_musterd;
use muster_protocol::fs::{failpoint, write_atomic};
use muster_protocol::node::{Bundle, HostFacts, JoinRequest};
use muster_protocol::token::{self, Claims, Secret};
use muster_protocol::{paths, Role};
use std::path::Path;

/// Reuse the keys of an unfinished run so a retried join is recognized; new keys otherwise.
pub fn resumable_keys(
    s: &Settings,
    owners: &Owners,
    state: Option<&State>,
    p: &Progress,
) -> Result<Option<(Key, Key)>> {
    let root = s.root.as_path();
    let resume = state.is_some_and(|st| st.stage != Stage::Committed) && !s.force;
    let keys = if resume {
        match (
            Key::load(root, File::NodeKey, owners)?,
            Key::load(root, File::HttpKey, owners)?,
        ) {
            (Some(t), Some(h)) => {
                p.note("resuming an unfinished enrollment with its keys");
                Some((t, h))
            }
            _ => None,
        }
    } else {
        None
    };
    Ok(keys)
}

/// A join the coordinator answered.
pub struct Joined {
    /// The transport key, which signs the commit.
    pub tkey: Key,
    /// The connection the join went over; the commit goes over it too.
    pub client: Client,
    pub bundle: Bundle,
    /// What recovering the coordinator role wrote, if this run did.
    pub recovered_files: Vec<String>,
}

/// Steps 3 and 4: the keys (`keys` reused, or new ones written), the coordinator role
/// recovered first if the token is for that, then the join and its bundle checked. A failure
/// here goes through [`crate::replace::after_failed_join`].
pub async fn join(
    s: &Settings,
    owners: &Owners,
    t: &Checked,
    facts: &HostFacts,
    keys: Option<(Key, Key)>,
    replacing: bool,
    p: &mut Progress,
) -> Result<Joined> {
    let root = s.root.as_path();
    let (tkey, hkey) = match keys {
        Some(k) => k,
        None => write_new_keys(root, owners, &t.claims, replacing)?,
    };
    failpoint("after-keys");

    // The emergency token with the coordinator role: this host becomes the platform's
    // coordinator (recovery), then enrolls through itself.
    let mut join_through = t.coordinators.clone();
    let mut recovered_files = vec![];
    if t.claims.kind == token::TokenKind::Emergency && t.granted.contains(&Role::Coordinator) {
        let r = recover_coordinator(s, t, facts, p).await?;
        join_through = vec![r.local];
        recovered_files = r.files;
    }

    p.step(&format!("joining through {}", join_through[0]));
    let mut client = Client::new(join_through, t.claims.pins.clone(), None, s.timeout)?;
    client.verbose = !p.json;
    let req = JoinRequest {
        token: Secret::new(s.token.as_str()),
        transport_csr: tkey.csr(&facts.hostname, &facts.addresses)?,
        http_csr: hkey.csr(&facts.hostname, &facts.addresses)?,
        host: facts.clone(),
        roles: s.roles.clone(),
    };
    let bundle: Bundle = client.post(paths::JOIN, &req).await?;
    check_bundle(&bundle, &tkey, &hkey)?;
    Ok(Joined {
        tkey,
        client,
        bundle,
        recovered_files,
    })
}

/// New keys, written before anything else: in place (a first run's state then says so), or
/// staged beside the working enrollment's keys when `replacing` it.
fn write_new_keys(
    root: &Path,
    owners: &Owners,
    claims: &Claims,
    replacing: bool,
) -> Result<(Key, Key)> {
    let (t, h) = (Key::generate()?, Key::generate()?);
    let at = |f: File| {
        if replacing {
            replace::staged(root, f)
        } else {
            f.path(root)
        }
    };
    write_atomic(
        &at(File::NodeKey),
        t.pem().as_bytes(),
        File::NodeKey.perms(owners),
    )?;
    write_atomic(
        &at(File::HttpKey),
        h.pem().as_bytes(),
        File::HttpKey.perms(owners),
    )?;
    if !replacing {
        write_state(
            root,
            owners,
            &State {
                token_id: Some(claims.sub.clone()),
                ..State::new(Stage::Keys)
            },
        )?;
    }
    Ok((t, h))
}

/// The emergency token's recovery of the coordinator role on this host: its files written,
/// `musterd.service` started; the host then joins through it.
async fn recover_coordinator(
    s: &Settings,
    t: &Checked,
    facts: &HostFacts,
    p: &mut Progress,
) -> Result<Recovered> {
    let root = s.root.as_path();
    let coordinators = &t.coordinators;
    let advertise = s
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{}:{}", facts.hostname, muster_protocol::DEFAULT_PORT));
    p.step(&format!(
        "recovering the coordinator role through {}",
        coordinators[0]
    ));
    let mut rc = Client::new(coordinators.clone(), t.claims.pins.clone(), None, s.timeout)?;
    rc.verbose = !p.json;
    let r = crate::recover::recover(&mut rc, root, &s.token, &t.granted, &advertise).await?;
    for f in &r.files {
        p.note(&format!("wrote {f}"));
    }
    start_musterd(root, p);
    p.step(&format!(
        "waiting for this host's coordinator on {} (advertised as {}; started by musterd.service, or: musterd serve --config {} --data-dir {})",
        r.local,
        r.advertise,
        Path::new("/").join(crate::recover::MUSTERD_YAML).display(),
        Path::new("/").join(crate::recover::MUSTERD_DATA).display(),
    ));
    Ok(r)
}
