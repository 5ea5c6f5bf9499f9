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

use crate::cli::{Output, Settings};
use crate::exit::{Exit, Failure, Result};
use crate::layout::{self, File};
use crate::net::Client;
use crate::owner::Owners;
use crate::state::{NodeConfig, Stage, State, TlsPaths};
use base64::Engine;
use muster_protocol::fs::{ensure_dir, failpoint, write_atomic};
use muster_protocol::node::*;
use muster_protocol::token::{self, Secret};
use muster_protocol::{paths, ErrorCode, Role};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Prints progress for a person on stderr (never in JSON mode's stdout).
pub struct Progress {
    pub json: bool,
    step: u32,
}

impl Progress {
    pub fn new(output: Output) -> Self {
        Progress {
            json: output == Output::Json,
            step: 0,
        }
    }
    pub fn step(&mut self, what: &str) {
        self.step += 1;
        if !self.json {
            eprintln!("[{}] {what}", self.step);
        }
    }
    pub fn note(&self, what: &str) {
        if !self.json {
            eprintln!("    {what}");
        }
    }
}

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

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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
fn staged(root: &Path, f: File) -> PathBuf {
    beside(root, f, ".next-")
}

/// Moves keys staged by a `--force` whose join was answered into place (the run that staged
/// them was killed before it could).
fn promote_staged_keys(root: &Path, o: &Owners) -> Result<()> {
    for f in [File::NodeKey, File::HttpKey] {
        let next = staged(root, f);
        if std::fs::symlink_metadata(&next).is_ok() {
            layout::read_written_at(&next, f, o)?;
            muster_protocol::fs::rename_into_place(&next, &f.path(root))?;
        }
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
fn back_up_enrollment(root: &Path, o: &Owners) -> Result<()> {
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
fn drop_backups(root: &Path) {
    for f in File::ALL {
        if let Err(e) = muster_protocol::fs::remove(&backup(root, f)) {
            eprintln!("muster: {e}; remove it by hand (a copy of the enrollment --force replaced)");
        }
    }
}

/// A restore killed half-way (it puts the keys back first, the state last) is finished before
/// anything else, so no new key is written beside an old certificate.
fn finish_interrupted_restore(root: &Path) -> Result<()> {
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

/// A `--force`'s new join refused for good at its commit: the enrollment it replaced (never
/// replaced at the coordinator, since nothing was committed) is put back, if it was kept.
fn put_back_on_final(root: &Path, e: Failure) -> Failure {
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
    if crate::node::still_registered(&paths).await {
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
fn missing_dirs(root: &Path, o: &Owners) -> Vec<PathBuf> {
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

/// Whether a failure of a first run can never turn into an enrollment by running again: the
/// token refused, a role it does not grant, a coordinator that is not the platform's.
fn final_refusal(e: &Failure) -> bool {
    matches!(
        e.exit,
        Exit::TokenRefused | Exit::RoleNotAllowed | Exit::PinMismatch
    ) || refused_for_good(e)
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

/// Removes keys staged by a `--force` that never got its join answered.
fn drop_staged_keys(root: &Path) -> Result<()> {
    for f in [File::NodeKey, File::HttpKey] {
        muster_protocol::fs::remove(&staged(root, f))?;
    }
    Ok(())
}

/// A generated or reloaded private key.
pub struct Key {
    pub pair: rcgen::KeyPair,
}

impl Key {
    pub fn generate() -> Result<Key> {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(|pair| Key { pair })
            .map_err(|e| Failure::new(Exit::Other, format!("generating a key: {e}")))
    }

    /// The key `f` an earlier run wrote, if it is there, is Muster's (owner, mode, no
    /// symlink: anything else is refused) and parses.
    pub fn load(root: &Path, f: File, o: &Owners) -> Result<Option<Key>> {
        let Some(bytes) = layout::read_written(root, f, o)?.map(Zeroizing::new) else {
            return Ok(None);
        };
        let pem = Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned());
        Ok(rcgen::KeyPair::from_pem(&pem).ok().map(|pair| Key { pair }))
    }

    pub fn from_pem(pem: &str) -> Result<Key> {
        rcgen::KeyPair::from_pem(pem)
            .map(|pair| Key { pair })
            .map_err(|e| Failure::new(Exit::Other, format!("reading a saved key: {e}")))
    }

    pub fn pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.pair.serialize_pem())
    }

    /// A CSR naming the host and its addresses.
    pub fn csr(&self, hostname: &str, addresses: &[String]) -> Result<String> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, hostname);
        if let Ok(n) = hostname.to_string().try_into() {
            params.subject_alt_names.push(rcgen::SanType::DnsName(n));
        }
        for a in addresses {
            if let Ok(ip) = a.parse() {
                params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
            }
        }
        params
            .serialize_request(&self.pair)
            .and_then(|r| r.pem())
            .map_err(|e| Failure::new(Exit::Other, format!("making a CSR: {e}")))
    }

    /// A CSR with no names (renewal: the coordinator certifies the names it has on record).
    pub fn csr_bare(&self) -> Result<String> {
        rcgen::CertificateParams::default()
            .serialize_request(&self.pair)
            .and_then(|r| r.pem())
            .map_err(|e| Failure::new(Exit::Other, format!("making a CSR: {e}")))
    }

    /// Signs the commit message: the proof of possession.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let rng = ring::rand::SystemRandom::new();
        let der = Zeroizing::new(self.pair.serialize_der());
        let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &der,
            &rng,
        )
        .map_err(|_| Failure::new(Exit::Other, "loading the node key to sign the commit"))?;
        kp.sign(&rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| Failure::new(Exit::Other, "signing the commit"))
    }
}

/// Coordinators to try: the one given first, then the token's.
pub fn coordinator_list(given: Option<&str>, from_token: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(g) = given {
        let g = g
            .trim()
            .trim_start_matches("https://")
            .trim_end_matches('/');
        out.push(muster_protocol::addr::with_port(
            g,
            muster_protocol::DEFAULT_PORT,
        ));
    }
    for c in from_token {
        if !out.contains(c) {
            out.push(c.clone());
        }
    }
    out
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

pub async fn run(s: Settings) -> Result<Outcome> {
    let mut p = Progress::new(s.output);
    let root = s.root.as_path();

    // An enrolled host needs nothing from the token: a re-run (say, a reboot before the
    // enrollment unit removed its settings) says so and succeeds, even with an expired token.
    if !s.force {
        if let Some(st) = read_state(root)?.filter(|st| st.stage == Stage::Committed) {
            p.step("already enrolled: nothing to do (use --force to enroll again)");
            if !s.dry_run {
                start_agent(root, &mut p);
            }
            return Ok(already_enrolled(&st));
        }
    }

    p.step("checking the roles token");
    let claims = token::inspect(&s.token).map_err(|e| {
        Failure::new(
            Exit::TokenRefused,
            format!("{e}; get a new token from the coordinator"),
        )
    })?;

    if claims.pins.is_empty()
        || !claims
            .pins
            .iter()
            .all(|p| muster_protocol::pin::is_well_formed(p))
    {
        return Err(Failure::new(
            Exit::TokenRefused,
            "roles token carries no usable CA pin; get a new token",
        ));
    }
    let granted = if claims.kind == token::TokenKind::Initial {
        vec![]
    } else {
        token::grant_roles(&claims, &s.roles)
            .map_err(|e| Failure::new(Exit::RoleNotAllowed, format!("{e}")))?
    };
    let coordinators = coordinator_list(s.coordinator_host.as_deref(), &claims.coordinators);
    if coordinators.is_empty() {
        return Err(Failure::new(
            Exit::Usage,
            "no coordinator: pass --coordinator-host HOST[:PORT]",
        ));
    }
    if let Err(e) = token::check_time(&claims, now()) {
        // Still no enrollment traffic: one pinned look at a coordinator's clock, to say
        // whether this host's clock is the problem and by how much.
        let mut message = format!("{e}");
        let skew = match Client::clock_probe(coordinators.clone(), claims.pins.clone()) {
            Ok(c) => c.probe_skew().await,
            Err(_) => None,
        };
        if let Some(note) = skew.and_then(crate::net::skew_note) {
            message.push_str(&note);
        }
        return Err(Failure::new(Exit::TokenRefused, message));
    }
    p.note(&format!(
        "token {} ({}), roles [{}], coordinator {}",
        claims.sub,
        claims.kind.as_str(),
        muster_protocol::role::join(if claims.kind == token::TokenKind::Initial {
            &s.roles
        } else {
            &granted
        }),
        coordinators[0]
    ));

    let e = nix::unistd::geteuid().as_raw();
    let g = nix::unistd::getegid().as_raw();
    let owners = crate::owner::resolve(root, &s.owner, e, g)?;

    if s.dry_run {
        p.step("dry run: this is what would be written (nothing is)");
        let files: Vec<String> = File::ALL
            .iter()
            .map(|f| layout::describe(root, *f, &owners))
            .collect();
        for f in &files {
            p.note(f);
        }
        return Ok(Outcome {
            result: "dry_run",
            node_id: None,
            roles: granted,
            pending_roles: vec![],
            coordinator: Some(coordinators[0].clone()),
            files,
        });
    }

    let facts = crate::facts::gather(s.hostname.as_deref(), &s.zone);
    p.step("running pre-enroll hooks");
    crate::hooks::run(
        &layout::hook_dir(root, "pre-enroll"),
        &[("MUSTER_ROLES", muster_protocol::role::join(&s.roles))],
    )?;

    p.step("preparing keys on this host");
    // What this run makes, so that a refusal no retry can fix takes it all away again.
    layout::check_folders(root)?;
    let made_dirs = missing_dirs(root, &owners);
    for (dir, perms) in layout::dirs(root, &owners) {
        ensure_dir(&dir, perms)?;
    }
    let _lock = layout::lock(root)?;
    for (dir, _) in layout::dirs(root, &owners) {
        remove_stale_temporaries(&dir);
    }
    // Under the lock, where things stand now: another run may have enrolled meanwhile, and a
    // renewal killed half-way belongs to the enrollment on disk (finished if it is committed,
    // so `--force` has a matching pair to fall back on; dropped otherwise).
    finish_interrupted_restore(root)?;
    let state = match read_state(root)? {
        Some(st) if st.stage == Stage::Committed => {
            drop_staged_keys(root)?;
            drop_backups(root);
            if !s.force {
                p.step("already enrolled: nothing to do (use --force to enroll again)");
                if !s.dry_run {
                    start_agent(root, &mut p);
                }
                return Ok(already_enrolled(&st));
            }
            Some(crate::node::finish_renewal(root, st)?)
        }
        other => {
            muster_protocol::fs::remove(&File::Renewal.path(root))?;
            // A `--force` killed after its join was answered: its keys are this enrollment's.
            promote_staged_keys(root, &owners)?;
            other
        }
    };
    // Reuse the keys of an unfinished run so a retried join is recognized; new keys otherwise.
    let resume = state
        .as_ref()
        .is_some_and(|st| st.stage != Stage::Committed)
        && !s.force;
    let keys = if resume {
        match (
            Key::load(root, File::NodeKey, &owners)?,
            Key::load(root, File::HttpKey, &owners)?,
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
    // `--force` over a working enrollment touches none of it until the new join is answered:
    // its new keys are staged beside the old ones, and the state still says enrolled. A
    // refused token, no coordinator or a kill leaves the host enrolled as it was.
    let replacing = state
        .as_ref()
        .is_some_and(|st| s.force && st.stage == Stage::Committed);
    let attempt = async {
        let (tkey, hkey) = match keys {
            Some(k) => k,
            None => {
                let (t, h) = (Key::generate()?, Key::generate()?);
                let at = |f: File| if replacing { staged(root, f) } else { f.path(root) };
                write_atomic(
                    &at(File::NodeKey),
                    t.pem().as_bytes(),
                    File::NodeKey.perms(&owners),
                )?;
                write_atomic(
                    &at(File::HttpKey),
                    h.pem().as_bytes(),
                    File::HttpKey.perms(&owners),
                )?;
                if !replacing {
                    write_state(
                        root,
                        &owners,
                        &State {
                            token_id: Some(claims.sub.clone()),
                            ..State::new(Stage::Keys)
                        },
                    )?;
                }
                (t, h)
            }
        };
        failpoint("after-keys");

        // The emergency token with the coordinator role: this host becomes the platform's
        // coordinator (recovery), then enrolls through itself.
        let mut join_through = coordinators.clone();
        let mut recovered_files = vec![];
        if claims.kind == token::TokenKind::Emergency && granted.contains(&Role::Coordinator) {
            let advertise = s
                .advertise
                .clone()
                .unwrap_or_else(|| format!("{}:{}", facts.hostname, muster_protocol::DEFAULT_PORT));
            p.step(&format!(
                "recovering the coordinator role through {}",
                coordinators[0]
            ));
            let mut rc = Client::new(coordinators.clone(), claims.pins.clone(), None, s.timeout)?;
            rc.verbose = !p.json;
            let r = crate::recover::recover(&mut rc, root, &s.token, &granted, &advertise).await?;
            for f in &r.files {
                p.note(&format!("wrote {f}"));
            }
            start_musterd(root, &mut p);
            p.step(&format!(
                "waiting for this host's coordinator on {} (advertised as {}; started by musterd.service, or: musterd serve --config {} --data-dir {})",
                r.local,
                r.advertise,
                Path::new("/").join(crate::recover::MUSTERD_YAML).display(),
                Path::new("/").join(crate::recover::MUSTERD_DATA).display(),
            ));
            join_through = vec![r.local];
            recovered_files = r.files;
        }

        p.step(&format!("joining through {}", join_through[0]));
        let mut client = Client::new(join_through, claims.pins.clone(), None, s.timeout)?;
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
        Ok::<_, Failure>((tkey, hkey, client, bundle, recovered_files))
    }
    .await;
    let (tkey, _hkey, mut client, bundle, recovered_files) = match attempt {
        Ok(done) => done,
        // A first run refused for good (a forged or revoked token, a role it does not grant,
        // another platform's coordinator): the host is left exactly as it was. Only a
        // coordinator that may answer later keeps the keys, for the retry.
        Err(e) if state.is_none() && !replacing && final_refusal(&e) => {
            drop(_lock);
            undo_first_run(root, &made_dirs);
            return Err(e);
        }
        Err(mut e) if replacing => {
            drop_staged_keys(root)?;
            e.message
                .push_str("; the host's previous enrollment is kept as it was");
            return Err(e);
        }
        // A resumed `--force` whose join is now refused for good: the old enrollment back.
        Err(e) => return Err(put_back_if_still_registered(root, e).await),
    };
    p.note(&format!(
        "node id {}, {}s to commit",
        bundle.node_id, bundle.remaining_seconds
    ));
    let mut st = State {
        node_id: Some(bundle.node_id.clone()),
        token_id: Some(bundle.token_id.clone()),
        roles: bundle.roles.clone(),
        pending_roles: bundle.pending_roles.clone(),
        // The address that answered first (it works from here, whatever the coordinator
        // advertises: say, its host name, which this host may not resolve), then the
        // advertised ones.
        coordinators: coordinator_list(client.current(), &bundle.coordinators),
        reservation_expires: Some(bundle.issued_at.saturating_add(bundle.remaining_seconds)),
        cert_not_after: Some(bundle.cert_not_after),
        ..State::new(Stage::Joined)
    };
    if replacing {
        // Until the commit is answered: a commit refused for good puts these back.
        back_up_enrollment(root, &owners)?;
    }
    write_state(root, &owners, &st)?;
    // The new state names the new join: from here on the staged keys are this enrollment's.
    failpoint("after-join-state");
    promote_staged_keys(root, &owners)?;
    failpoint("after-join");

    p.step("writing certificates, keystores and config");
    let mut files = write_bundle(root, &owners, &bundle, &tkey, &facts.zone, &st.coordinators)?;
    files.extend(recovered_files);
    failpoint("after-files");

    p.step("committing the enrollment");
    let proof = tkey.sign(&commit_message(&bundle.node_id, bundle.psk.expose()))?;
    let commit = CommitRequest {
        node_id: bundle.node_id.clone(),
        psk: bundle.psk.clone(),
        proof: base64::engine::general_purpose::STANDARD.encode(proof),
    };
    // The commit has `--timeout` of its own (within the reservation's 600 s), whatever the
    // join took.
    client.restart_clock(s.timeout);
    let reply: CommitReply = client
        .post(paths::COMMIT, &commit)
        .await
        .map_err(|e| put_back_on_final(root, e))?;
    failpoint("after-commit-answer");
    // Committed: what --force replaced is gone at the coordinator, and its copies go too.
    drop_backups(root);
    st.stage = Stage::Committed;
    st.committed_at = Some(now());
    st.last_heartbeat = st.committed_at;
    write_state(root, &owners, &st)?;

    p.step("running post-enroll hooks");
    crate::hooks::run(&layout::hook_dir(root, "post-enroll"), &hook_env(root, &st))?;
    start_agent(root, &mut p);
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

/// On a live systemd host (root `/`), starts the package's `musterd.service` now that its
/// files are there; elsewhere whoever manages the root starts it.
fn start_musterd(root: &Path, p: &mut Progress) {
    match start_unit(root, "musterd.service") {
        None => {}
        Some(true) => p.note("started musterd.service"),
        Some(false) => p.note("could not start musterd.service; start it by hand"),
    }
}

/// On a live systemd host (root `/`) with the agent's unit installed (the packages'), starts
/// `muster-agent.service` now that the host is enrolled: its condition (`enrollment.json`)
/// held false when boot or the package started it, and the host would otherwise wait for the
/// next boot for heartbeats and renewals. Without `--no-block` this would wait on
/// `muster-enroll.service` (the agent is ordered after it), which may be what runs this.
fn start_agent(root: &Path, p: &mut Progress) {
    if unit_file(root, "muster-agent.service").is_none() {
        return;
    }
    match start_unit(root, "muster-agent.service") {
        None => {}
        Some(true) => p.note("started muster-agent.service"),
        Some(false) => {
            p.note("could not start muster-agent.service; run: systemctl start muster-agent")
        }
    }
}

/// `systemctl start --no-block UNIT` on a live systemd host (root `/`); `None` elsewhere.
fn start_unit(root: &Path, unit: &str) -> Option<bool> {
    if root != Path::new("/") || !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    // Absolute, and without the token this process may hold in its environment.
    let ok = std::process::Command::new("/bin/systemctl")
        .args(["start", "--no-block", unit])
        .env_remove("MUSTER_ROLES_TOKEN")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    Some(ok)
}

/// Where `unit` is installed under `root`, if anywhere systemd looks for system units.
fn unit_file(root: &Path, unit: &str) -> Option<PathBuf> {
    [
        "etc/systemd/system",
        "lib/systemd/system",
        "usr/lib/systemd/system",
    ]
    .iter()
    .map(|d| root.join(d).join(unit))
    .find(|f| f.is_file())
}

/// A run killed between a temporary file's write and its rename leaves the temporary behind
/// (the target itself is never half-written); the next run clears them away.
fn remove_stale_temporaries(dir: &Path) {
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

pub fn hook_env(root: &Path, st: &State) -> Vec<(&'static str, String)> {
    vec![
        ("MUSTER_NODE_ID", st.node_id.clone().unwrap_or_default()),
        ("MUSTER_ROLES", muster_protocol::role::join(&st.roles)),
        (
            "MUSTER_TLS_DIR",
            root.join("etc/muster/tls").display().to_string(),
        ),
    ]
}

/// Checks that the bundle's certificates are for our keys and chain to the CAs it names.
fn check_bundle(b: &Bundle, tkey: &Key, hkey: &Key) -> Result<()> {
    check_certs(
        &Certs {
            transport_ca_pem: &b.transport_ca_pem,
            http_ca_pem: &b.http_ca_pem,
            transport_cert_pem: &b.transport_cert_pem,
            http_cert_pem: &b.http_cert_pem,
        },
        tkey,
        hkey,
    )
}

/// Each certificate is for its key and signed by its CA.
pub fn check_certs(b: &Certs, tkey: &Key, hkey: &Key) -> Result<()> {
    let check = |pem: &str, ca_pem: &str, key: &Key, what: &str| -> Result<()> {
        let bad = |why: &str| {
            Failure::new(
                Exit::Other,
                format!("the coordinator's {what} certificate is unusable: {why}"),
            )
        };
        let (_, leaf) =
            x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| bad("not PEM"))?;
        let (_, ca) =
            x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).map_err(|_| bad("CA not PEM"))?;
        let leaf = leaf.parse_x509().map_err(|_| bad("not X.509"))?;
        let ca = ca.parse_x509().map_err(|_| bad("CA not X.509"))?;
        if leaf.public_key().raw != key.pair.public_key_der().as_slice() {
            return Err(bad("it is not for this host's key"));
        }
        leaf.verify_signature(Some(ca.public_key()))
            .map_err(|_| bad("it is not signed by the platform's CA"))?;
        Ok(())
    };
    check(b.transport_cert_pem, b.transport_ca_pem, tkey, "transport")?;
    check(b.http_cert_pem, b.http_ca_pem, hkey, "HTTP")
}

fn pem_der(pem: &str) -> Result<Vec<u8>> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map(|(_, p)| p.contents)
        .map_err(|_| Failure::new(Exit::Other, "a certificate in the bundle is not PEM"))
}

/// Writes everything the bundle brings, with `coordinators` (where this host finds them) in
/// `node.yaml`. Returns the paths written.
pub fn write_bundle(
    root: &Path,
    o: &Owners,
    b: &Bundle,
    tkey: &Key,
    zone: &str,
    coordinators: &[String],
) -> Result<Vec<String>> {
    let certs = Certs {
        transport_ca_pem: &b.transport_ca_pem,
        http_ca_pem: &b.http_ca_pem,
        transport_cert_pem: &b.transport_cert_pem,
        http_cert_pem: &b.http_cert_pem,
    };
    let mut files = write_certs(root, o, &certs, tkey)?;
    let node = NodeConfig {
        version: 1,
        node_id: b.node_id.clone(),
        roles: b.roles.clone(),
        pending_roles: b.pending_roles.clone(),
        zone: zone.to_string(),
        coordinators: coordinators.to_vec(),
        tls: TlsPaths {
            transport_ca: format!("/{}", File::TransportCa.rel()),
            http_ca: format!("/{}", File::HttpCa.rel()),
            cert: format!("/{}", File::NodeCert.rel()),
            key: format!("/{}", File::NodeKey.rel()),
            http_cert: format!("/{}", File::HttpCert.rel()),
            http_key: format!("/{}", File::HttpKey.rel()),
            keystore: format!("/{}", File::Keystore.rel()),
            keystore_password_file: format!("/{}", File::KeystorePassword.rel()),
            truststore: format!("/{}", File::Truststore.rel()),
        },
    };
    write_node_yaml(root, o, &node)?;
    files.push(File::NodeYaml.path(root).display().to_string());
    Ok(files)
}

/// Writes `/etc/muster/node.yaml`.
pub fn write_node_yaml(root: &Path, o: &Owners, node: &NodeConfig) -> Result<()> {
    let yaml =
        serde_norway::to_string(node).map_err(|e| Failure::new(Exit::Other, e.to_string()))?;
    let yaml = format!("# Written by muster install; muster leave removes it.\n{yaml}");
    let f = File::NodeYaml;
    write_atomic(&f.path(root), yaml.as_bytes(), f.perms(o))?;
    Ok(())
}

/// The certificates a join or a renewal brings.
pub struct Certs<'a> {
    pub transport_ca_pem: &'a str,
    pub http_ca_pem: &'a str,
    pub transport_cert_pem: &'a str,
    pub http_cert_pem: &'a str,
}

/// Writes the CA certificates, the node certificates (leaf then CA) and the keystores built
/// from them and the transport key. Returns the paths written.
pub fn write_certs(root: &Path, o: &Owners, b: &Certs, tkey: &Key) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for (f, content) in [
        (File::TransportCa, b.transport_ca_pem.to_string()),
        (File::HttpCa, b.http_ca_pem.to_string()),
        (
            File::NodeCert,
            format!("{}{}", b.transport_cert_pem, b.transport_ca_pem),
        ),
        (
            File::HttpCert,
            format!("{}{}", b.http_cert_pem, b.http_ca_pem),
        ),
    ] {
        write_atomic(&f.path(root), content.as_bytes(), f.perms(o))?;
        files.push(f.path(root).display().to_string());
    }
    files.extend(write_keystores(root, o, b, tkey)?);
    Ok(files)
}

/// PBKDF iterations for the PKCS#12 stores: OpenSSL's long-standing default. The keystore's
/// password is 192 random bits, so stretching it further protects nothing (no one can guess it
/// however cheap a guess is), and the truststore's is public. The crate's default of 10,000 cost
/// every enrollment 12–15 ms (one took 35–50 ms on loopback then, about 20 now).
const P12_ITERATIONS: u64 = 2048;

/// The keystore password already on the host, if it is one Muster wrote (32 characters of
/// URL-safe base64).
fn kept_keystore_password(root: &Path, o: &Owners) -> Option<Zeroizing<String>> {
    let bytes = Zeroizing::new(layout::read_written(root, File::KeystorePassword, o).ok()??);
    let p = Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned());
    let ok = p.len() == 32
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| Zeroizing::new(p.to_string()))
}

/// The PKCS#12 keystore (transport key and chain), its password file, and the truststore.
fn write_keystores(root: &Path, o: &Owners, b: &Certs, tkey: &Key) -> Result<Vec<String>> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKeyChain};
    let bad = |e: p12_keystore::error::Error| {
        Failure::new(Exit::Other, format!("building a PKCS#12 store: {e}"))
    };
    // A renewal or a new enrollment keeps the keystore's password, so a program holding it
    // opens the new keystore too, and the two files never disagree while they are rewritten.
    let password = match kept_keystore_password(root, o) {
        Some(p) => p,
        None => {
            let mut b = [0u8; 24];
            rand::Rng::fill(&mut rand::thread_rng(), &mut b);
            Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
        }
    };
    let leaf = Certificate::from_der(&pem_der(b.transport_cert_pem)?).map_err(bad)?;
    let ca = Certificate::from_der(&pem_der(b.transport_ca_pem)?).map_err(bad)?;
    let http_ca = Certificate::from_der(&pem_der(b.http_ca_pem)?).map_err(bad)?;
    let key_der = Zeroizing::new(tkey.pair.serialize_der());
    let mut ks = KeyStore::new();
    let local_id: [u8; 20] = rand::random();
    ks.add_entry(
        "node",
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(
            &key_der[..],
            local_id,
            vec![leaf, ca.clone()],
        )),
    );
    let write = |store: &KeyStore, password: &str| {
        store
            .writer(password)
            .encryption_iterations(P12_ITERATIONS)
            .mac_iterations(P12_ITERATIONS)
            .write()
            .map_err(bad)
    };
    let p12 = Zeroizing::new(write(&ks, &password)?);
    let mut ts = KeyStore::new();
    ts.add_entry("transport-ca", KeyStoreEntry::Certificate(ca));
    ts.add_entry("http-ca", KeyStoreEntry::Certificate(http_ca));
    // A truststore holds only public certificates; its password is a well-known one, as Java's
    // `changeit`, so any tool can open it.
    let trust = write(&ts, "changeit")?;
    let mut out = Vec::new();
    for (f, content) in [
        (File::KeystorePassword, password.as_bytes()),
        (File::Keystore, &p12[..]),
        (File::Truststore, &trust[..]),
    ] {
        write_atomic(&f.path(root), content, f.perms(o))?;
        out.push(f.path(root).display().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_found_where_systemd_looks_and_started_only_on_a_live_root() -> std::io::Result<()>
    {
        let root = tempfile::tempdir()?;
        assert_eq!(unit_file(root.path(), "muster-agent.service"), None);
        for dir in [
            "usr/lib/systemd/system",
            "lib/systemd/system",
            "etc/systemd/system",
        ] {
            std::fs::create_dir_all(root.path().join(dir))?;
            std::fs::write(root.path().join(dir).join("muster-agent.service"), "")?;
            // The administrator's copy in /etc comes first, as systemd reads it.
            assert_eq!(
                unit_file(root.path(), "muster-agent.service"),
                Some(root.path().join(dir).join("muster-agent.service"))
            );
        }
        // A folder of that name is not a unit.
        std::fs::create_dir_all(root.path().join("etc/systemd/system/other.service"))?;
        assert_eq!(unit_file(root.path(), "other.service"), None);
        // A scratch root is never started in: systemd does not manage it.
        assert_eq!(start_unit(root.path(), "muster-agent.service"), None);
        Ok(())
    }

    #[test]
    fn coordinator_addresses() {
        let t = vec!["c1:12443".to_string(), "c2:12443".to_string()];
        assert_eq!(
            coordinator_list(Some("c2"), &t),
            vec!["c2:12443", "c1:12443"]
        );
        assert_eq!(
            coordinator_list(Some("https://10.0.0.1:9443/"), &[]),
            vec!["10.0.0.1:9443"]
        );
        assert_eq!(coordinator_list(None, &t), t);
        assert_eq!(
            coordinator_list(Some("2001:db8::1"), &[]),
            vec!["[2001:db8::1]:12443"],
            "a bare IPv6 address has no port"
        );
    }
}
