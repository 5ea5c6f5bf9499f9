//! The `musterd` command line.

use crate::app::{system_now, App};
use crate::config::{Backend, Config, Mode, SQLITE_FILE};
use crate::platform::Platform;
use crate::seal::{emergency_token, DataKey, UNSEAL_KEY_FILE};
use crate::store::etcd::EtcdStore;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use anyhow::{bail, Context};
use muster_protocol::api::CreateTokenRequest;
use muster_protocol::fs::{ensure_dir, write_atomic, Perms};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod args;

pub use args::{Cli, Cmd, ConfigCmd, DataArgs, Output, TokenCmd};

fn me(mode: u32) -> Perms {
    Perms {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        mode,
    }
}

/// Whether a command may make a data folder and an empty store: only `init` and `unseal` (and
/// `restore`, which builds its folder apart) do; every other command finds them or stops.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Create {
    Yes,
    No,
}

/// The store the config names: SQLite in the data folder, or the etcd cluster.
async fn open_store(
    data_dir: &Path,
    config: &Config,
    create: Create,
) -> anyhow::Result<Arc<dyn Store>> {
    let db = data_dir.join(SQLITE_FILE);
    if create == Create::No {
        if !data_dir.is_dir() {
            bail!(
                "the data folder {} does not exist: no platform there (looked for {}); give \
                 --data-dir, or create a platform with `musterd init`",
                data_dir.display(),
                config.describe_store(data_dir)
            );
        }
        if config.store.backend == Backend::Sqlite && !db.exists() {
            return Err(no_platform(config, data_dir));
        }
    }
    ensure_dir(data_dir, me(0o700))
        .with_context(|| format!("preparing data folder {}", data_dir.display()))?;
    Ok(match config.store.backend {
        Backend::Sqlite => Arc::new(SqliteStore::open(&db)?),
        Backend::Etcd => Arc::new(EtcdStore::connect(&config.store.etcd).await?),
    })
}

/// Where `init --advertise` keeps the addresses it was given, so that every later command of
/// this coordinator (serve, token create) puts the same ones into tokens and install lines.
const ADVERTISE_FILE: &str = "advertise.json";

/// The config (`--config`, or the packaged one), with the addresses `init --advertise`
/// recorded in the data folder when the config names none.
fn load_config(data: &DataArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(data.config.as_deref())?;
    if config.advertise.is_empty() {
        let p = data.data_dir.join(ADVERTISE_FILE);
        match std::fs::read(&p) {
            Ok(bytes) => {
                config.advertise = serde_json::from_slice(&bytes).with_context(|| {
                    format!("reading {} (a JSON list of host:port)", p.display())
                })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("reading {}: {e}", p.display()),
        }
    }
    Ok(config)
}

/// The platform record is there, or an error that says where it was looked for.
async fn ensure_platform(
    store: &dyn Store,
    config: &Config,
    data_dir: &Path,
) -> anyhow::Result<()> {
    if store.platform().await?.is_none() {
        return Err(no_platform(config, data_dir));
    }
    Ok(())
}

/// "No platform here", saying where it was looked for.
fn no_platform(config: &Config, data_dir: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "no platform in {}; give --data-dir or --config, or create one with `musterd init`",
        config.describe_store(data_dir)
    )
}

async fn load_app(data: &DataArgs) -> anyhow::Result<Arc<App>> {
    let config = load_config(data)?;
    let store = open_store(&data.data_dir, &config, Create::No).await?;
    ensure_platform(store.as_ref(), &config, &data.data_dir).await?;
    let key = read_unseal_key(&data.data_dir)?;
    let platform = Platform::load(store.as_ref(), &key).await?;
    let serving_key = crate::pki::ServingKey::load_or_create(&data.data_dir)?;
    Ok(App::new(store, platform, config, serving_key))
}

/// What in `data_dir` says it already belongs to a platform (or a director): the names found.
/// `ca.pem` alone is not among them: it is public, and init writes it anew.
fn muster_state_in(data_dir: &Path) -> Vec<String> {
    [
        SQLITE_FILE,
        "muster.db-wal",
        UNSEAL_KEY_FILE,
        "bootstrap-secrets.json",
        crate::pki::ServingKey::FILE,
        ADVERTISE_FILE,
        crate::director::CERT_FILE,
        crate::director::KEY_FILE,
    ]
    .iter()
    .filter(|f| data_dir.join(f).symlink_metadata().is_ok())
    .map(|f| f.to_string())
    .collect()
}

/// `musterd config check`: the config as it would be used, or why it would not be.
fn config_check(path: Option<&Path>, output: Output) -> anyhow::Result<()> {
    let c = Config::load(path)?;
    let source = c
        .source()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(none: defaults)".into());
    let backend = match c.store.backend {
        Backend::Sqlite => "sqlite",
        Backend::Etcd => "etcd",
    };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "ok": true,
                "config": source,
                "listen": c.listen,
                "advertise": c.advertise_or_default(),
                "store": backend,
            })
        ),
        Output::Text => println!(
            "config {source}: ok (listen {}, advertise {}, store {backend})",
            c.listen,
            c.advertise_or_default().join(",")
        ),
    }
    Ok(())
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Config {
            cmd: ConfigCmd::Check { config, output },
        } => config_check(config.as_deref(), output),
        Cmd::Generate { out_dir } => {
            use clap::CommandFactory;
            let files = muster_protocol::cli_docs::generate(Cli::command(), &out_dir)
                .with_context(|| format!("writing into {}", out_dir.display()))?;
            for f in files {
                println!("{}", f.display());
            }
            Ok(())
        }
        Cmd::Init {
            data,
            advertise,
            output,
        } => init(&data, advertise, output).await,
        Cmd::Serve { data, listen } => {
            let config = load_config(&data)?;
            if config.mode == Mode::Director {
                return serve_director(&data, config, listen).await;
            }
            let app = load_app(&data).await?;
            // The HTTP CA next to the data, as `init` leaves it: what curl --cacert and wget
            // --ca-certificate take. A coordinator that joined a shared store gets it here.
            write_ca_pem(&data.data_dir, &app.platform.http_ca.cert_pem)?;
            let listen = listen.unwrap_or_else(|| app.config.listen.clone());
            let addr = listen
                .parse()
                .with_context(|| format!("--listen {listen:?} is not ADDR:PORT"))?;
            crate::serve::serve(app, addr, shutdown_signal()).await
        }
        Cmd::Token { cmd } => token(cmd).await,
        Cmd::DirectorCert {
            data,
            address,
            output,
            days,
        } => director_cert(&data, &address, &output, days).await,
        Cmd::Unseal {
            data,
            emergency_token_file,
        } => unseal(&data, emergency_token_file.as_deref()).await,
        Cmd::Backup { data, output } => backup(&data, &output).await,
        Cmd::Restore {
            data_dir,
            input,
            emergency_token_file,
        } => restore(&data_dir, &input, emergency_token_file.as_deref()).await,
    }
}

/// `DATA_DIR/ca.pem`, the HTTP CA, unless it is there already.
fn write_ca_pem(data_dir: &Path, pem: &str) -> anyhow::Result<()> {
    let ca = data_dir.join("ca.pem");
    if std::fs::read(&ca).ok().as_deref() != Some(pem.as_bytes()) {
        write_atomic(&ca, pem.as_bytes(), me(0o644))
            .with_context(|| format!("writing {}", ca.display()))?;
    }
    Ok(())
}

fn write_unseal_key(data_dir: &Path, key: &DataKey) -> anyhow::Result<()> {
    let p = data_dir.join(UNSEAL_KEY_FILE);
    write_atomic(&p, key.encode().as_bytes(), me(0o600))
        .with_context(|| format!("writing {}", p.display()))
}

fn read_unseal_key(data_dir: &Path) -> anyhow::Result<DataKey> {
    let p = data_dir.join(UNSEAL_KEY_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => zeroize::Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} is missing: this coordinator cannot unseal the platform's secrets yet; \
             run once: MUSTER_EMERGENCY_TOKEN=… musterd unseal --data-dir {} [--config FILE]",
            p.display(),
            data_dir.display()
        ),
        Err(e) => bail!("reading {}: {e}", p.display()),
    };
    DataKey::decode(&text).with_context(|| format!("reading {}", p.display()))
}

/// `musterd unseal`: the data key from the store, unwrapped with the emergency token.
async fn unseal(data: &DataArgs, token_file: Option<&Path>) -> anyhow::Result<()> {
    let config = load_config(data)?;
    // A coordinator joining an etcd platform gets its data folder here; the embedded store is
    // never made by unseal (that is init's or restore's).
    let create = match config.store.backend {
        Backend::Etcd => Create::Yes,
        Backend::Sqlite => Create::No,
    };
    let store = open_store(&data.data_dir, &config, create).await?;
    ensure_platform(store.as_ref(), &config, &data.data_dir).await?;
    let token = emergency_token(token_file)?;
    let key = Platform::unwrap_key(store.as_ref(), &token).await?;
    write_unseal_key(&data.data_dir, &key)?;
    eprintln!(
        "musterd: unsealed; {} written (mode 0600)",
        data.data_dir.join(UNSEAL_KEY_FILE).display()
    );
    Ok(())
}

/// `musterd backup`: a consistent snapshot of the embedded store, secrets still sealed.
async fn backup(data: &DataArgs, output: &Path) -> anyhow::Result<()> {
    let config = load_config(data)?;
    if config.store.backend != Backend::Sqlite {
        bail!(
            "musterd backup copies the embedded store; back etcd up with `etcdctl snapshot save`"
        );
    }
    let db = data.data_dir.join(SQLITE_FILE);
    if !db.exists() {
        return Err(no_platform(&config, &data.data_dir));
    }
    let store = SqliteStore::open(&db)?;
    let tmp_dir = tempfile::tempdir()?;
    let snap = tmp_dir.path().join("backup.db");
    store.backup_to(snap.clone()).await?;
    let bytes = std::fs::read(&snap)?;
    if output == Path::new("-") {
        use std::io::Write;
        std::io::stdout().write_all(&bytes)?;
    } else {
        write_atomic(output, &bytes, me(0o600))
            .with_context(|| format!("writing {}", output.display()))?;
        eprintln!(
            "musterd: backup written to {} ({} bytes; its secrets stay sealed)",
            output.display(),
            bytes.len()
        );
    }
    Ok(())
}

/// `musterd restore`: a backup into a new data folder, unsealed with the emergency token.
/// Everything is checked in a scratch folder first; the data folder appears whole or not at all.
async fn restore(data_dir: &Path, input: &Path, token_file: Option<&Path>) -> anyhow::Result<()> {
    let token = emergency_token(token_file)?;
    if let Ok(mut entries) = std::fs::read_dir(data_dir) {
        if entries.next().is_some() {
            bail!(
                "{} is not empty; restore into a new (or empty) data folder",
                data_dir.display()
            );
        }
    }
    let bytes = if input == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
        b
    } else {
        std::fs::read(input).with_context(|| format!("reading {}", input.display()))?
    };
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    let scratch = tempfile::Builder::new()
        .prefix(".musterd-restore-")
        .tempdir_in(&parent)?;
    let db = scratch.path().join(SQLITE_FILE);
    write_atomic(&db, &bytes, me(0o600))?;
    let store = SqliteStore::open(&db)
        .with_context(|| format!("{} is not a musterd backup", input.display()))?;
    let key = Platform::unwrap_key(&store, &token).await?;
    let platform = Platform::load(&store, &key).await?;
    drop(store);
    write_unseal_key(scratch.path(), &key)?;
    write_atomic(
        &scratch.path().join("ca.pem"),
        platform.http_ca.cert_pem.as_bytes(),
        me(0o644),
    )?;
    // The data folder: the scratch folder renamed into place, or its files moved into an
    // empty folder that already exists.
    let scratch = scratch.keep();
    std::fs::set_permissions(
        &scratch,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    if data_dir.exists() {
        for e in std::fs::read_dir(&scratch)? {
            let e = e?;
            std::fs::rename(e.path(), data_dir.join(e.file_name()))?;
        }
        std::fs::remove_dir(&scratch)?;
    } else {
        std::fs::rename(&scratch, data_dir)?;
    }
    eprintln!(
        "musterd: platform restored into {} and unsealed; serve it with musterd serve --data-dir {}",
        data_dir.display(),
        data_dir.display()
    );
    Ok(())
}

/// etcd's TLS material from the files the config names, to keep sealed in the platform so a
/// recovered coordinator reaches etcd as this one does.
fn store_tls(config: &Config) -> anyhow::Result<Option<muster_protocol::node::StoreTls>> {
    let Some(tls) = config
        .store
        .etcd
        .tls
        .as_ref()
        .filter(|_| config.store.backend == Backend::Etcd)
    else {
        return Ok(None);
    };
    let read = |p: &Option<PathBuf>| -> anyhow::Result<Option<String>> {
        p.as_ref()
            .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
            .transpose()
    };
    Ok(Some(muster_protocol::node::StoreTls {
        ca_pem: read(&tls.ca)?,
        cert_pem: read(&tls.cert)?,
        key_pem: read(&tls.key)?.map(muster_protocol::token::Secret::new),
    }))
}

/// `musterd serve` in director mode: the public half of the platform, a certificate issued
/// ahead of time, no unseal key.
async fn serve_director(
    data: &DataArgs,
    config: Config,
    listen: Option<String>,
) -> anyhow::Result<()> {
    let tls = crate::serve::director_tls_config(&data.data_dir)?;
    let store = open_store(&data.data_dir, &config, Create::No).await?;
    // Fail at start, not at the first recovery, when the store holds no platform.
    ensure_platform(store.as_ref(), &config, &data.data_dir).await?;
    let public = crate::platform::PublicPlatform::load(store.as_ref()).await?;
    write_ca_pem(&data.data_dir, &public.http_ca_pem)?;
    let listen = listen.unwrap_or_else(|| config.listen.clone());
    let addr = listen
        .parse()
        .with_context(|| format!("--listen {listen:?} is not ADDR:PORT"))?;
    let director = Arc::new(crate::director::Director {
        store,
        token_failures: crate::limit::FailureLimiter::new(config.token_failures_per_minute),
        verified_tokens: Default::default(),
        config,
        clock: system_now,
    });
    eprintln!("musterd: director mode (no unsealed secret; answers only recovery)");
    crate::serve::serve_director(director, tls, addr, shutdown_signal()).await
}

/// `musterd director-cert`: a serving certificate for a director, from this coordinator.
async fn director_cert(
    data: &DataArgs,
    addresses: &[String],
    output: &Path,
    days: u32,
) -> anyhow::Result<()> {
    let app = load_app(data).await?;
    let mut sans = Vec::new();
    for a in addresses {
        let host = crate::pki::host_of_address(a);
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(
                host.to_string()
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("--address {a:?} is not a host name or IP"))?,
            ),
        };
        sans.push(san);
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let leaf = crate::pki::Leaf {
        common_name: "musterd director".into(),
        sans,
        coordinator: true,
        validity: time::Duration::days(days.into()),
    };
    let cert = app
        .platform
        .http_ca
        .sign(&key, &leaf, time::OffsetDateTime::now_utc())?;
    ensure_dir(output, me(0o700)).with_context(|| format!("preparing {}", output.display()))?;
    let key_path = output.join(crate::director::KEY_FILE);
    write_atomic(&key_path, key.serialize_pem().as_bytes(), me(0o600))
        .with_context(|| format!("writing {}", key_path.display()))?;
    let chain = format!("{}{}", cert.pem, app.platform.http_ca.cert_pem);
    let cert_path = output.join(crate::director::CERT_FILE);
    write_atomic(&cert_path, chain.as_bytes(), me(0o644))
        .with_context(|| format!("writing {}", cert_path.display()))?;
    // With it, musterd.service's start condition (DATA_DIR/ca.pem) holds on the director.
    write_ca_pem(output, &app.platform.http_ca.cert_pem)?;
    eprintln!(
        "musterd: director certificate for {} written to {} (valid {days} days); copy its three \
         files (director-cert.pem, director-key.pem, ca.pem) into the director's data folder",
        addresses.join(", "),
        output.display()
    );
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
    }
    if crate::logging::text() {
        eprintln!("musterd: shutting down");
    }
    tracing::info!("shutting down");
}

async fn init(data: &DataArgs, advertise: Vec<String>, output: Output) -> anyhow::Result<()> {
    let mut config = Config::load(data.config.as_deref())?;
    let advertise_given = !advertise.is_empty();
    if advertise_given {
        config.advertise = advertise;
    }
    let secrets_path = data.data_dir.join("bootstrap-secrets.json");
    let found = muster_state_in(&data.data_dir);
    if !found.is_empty() {
        bail!(
            "{} already holds Muster state ({}): refusing to create a platform over it; use an \
             empty data folder (a coordinator joining an etcd platform runs `musterd unseal`)",
            data.data_dir.display(),
            found.join(", ")
        );
    }
    if config.mode == Mode::Director {
        bail!("a director holds no secret and creates no platform; run `musterd init` on a coordinator");
    }
    let store_tls = store_tls(&config)?;
    let store = open_store(&data.data_dir, &config, Create::Yes).await?;
    if store.platform().await?.is_some() {
        bail!(
            "{} already holds a platform; refusing to create another over it (a coordinator \
             joining it runs `musterd unseal`)",
            config.describe_store(&data.data_dir)
        );
    }
    let (platform, secrets, key) = Platform::init(
        store.as_ref(),
        &config.advertise_or_default(),
        store_tls,
        system_now(),
    )
    .await?;
    let json = zeroize::Zeroizing::new(serde_json::to_string_pretty(&secrets)?);
    // The platform is in the store now and a second init is refused, so the secrets are shown
    // even if a file cannot be written (a full disk): they are not lost with it.
    let advertise_path = data.data_dir.join(ADVERTISE_FILE);
    let written = write_unseal_key(&data.data_dir, &key)
        .and_then(|()| match advertise_given {
            true => write_atomic(
                &advertise_path,
                serde_json::to_string(&config.advertise)?.as_bytes(),
                me(0o644),
            )
            .with_context(|| format!("writing {}", advertise_path.display())),
            false => Ok(()),
        })
        .and_then(|()| {
            write_atomic(&secrets_path, json.as_bytes(), me(0o600))
                .with_context(|| format!("writing {}", secrets_path.display()))
        })
        .and_then(|()| {
            write_atomic(
                &data.data_dir.join("ca.pem"),
                platform.http_ca.cert_pem.as_bytes(),
                me(0o644),
            )
            .context("writing ca.pem")
        });
    if let Err(e) = written {
        println!("{}", *json);
        return Err(e.context(
            "the platform was created but its files could not all be written; its secrets are \
             printed above (the emergency token also unseals the platform without unseal.key): \
             keep them, fix the data folder, and start musterd",
        ));
    }
    match output {
        Output::Json => println!("{}", *json),
        Output::Text => {
            println!("Muster platform created in {}.", data.data_dir.display());
            println!(
                "These secrets are shown once; they are also in {} (mode 0600).\n",
                secrets_path.display()
            );
            println!("  admin user:       {}", secrets.admin_user);
            println!("  admin password:   {}", secrets.admin_password);
            println!("  API key:          {}", secrets.api_key);
            println!("  emergency token:  {}", secrets.emergency_token);
            println!("  roles token:      {}", secrets.roles_token);
            println!("  CA fingerprint:   {}", secrets.ca_fingerprint);
            println!("\nKeep the emergency token offline: it recovers the platform when every coordinator is gone.");
        }
    }
    Ok(())
}

async fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            data,
            roles,
            persistent,
            validity,
            max_uses,
            allowed_source,
            output,
        } => {
            let app = load_app(&data).await?;
            let req = CreateTokenRequest {
                persistent,
                roles,
                validity_in_seconds: validity,
                max_uses,
                allowed_sources: allowed_source,
                description: None,
            };
            let reply = app
                .create_token(&req, crate::store::actor::LOCAL, None)
                .await
                .map_err(|e| anyhow::anyhow!("{} ({})", e.message, e.code.as_str()))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string(&reply)?),
                Output::Text => {
                    println!("token_id: {}", reply.token_id);
                    println!("token:    {}", reply.token);
                    if let Some(line) = reply.install_command {
                        println!("\nOn the new host, as a user who may sudo:\n  {line}");
                    }
                }
            }
            Ok(())
        }
        TokenCmd::List { data } => {
            let app = load_app(&data).await?;
            for t in app.store.tokens().await? {
                if t.revoked {
                    continue;
                }
                let roles = muster_protocol::role::join(&t.roles);
                println!(
                    "{}  {:<10}  uses {}{}  roles [{}]",
                    t.id,
                    t.kind.as_str(),
                    t.uses,
                    t.max_uses.map(|m| format!("/{m}")).unwrap_or_default(),
                    roles
                );
            }
            Ok(())
        }
        TokenCmd::Revoke { data, token_id } => {
            let app = load_app(&data).await?;
            match app.store.token(&token_id).await? {
                Some(t) if t.kind == muster_protocol::token::TokenKind::Emergency => {
                    bail!("the emergency token cannot be revoked")
                }
                Some(_) => {
                    // Audited as the API's DELETE is (no source address: the command line).
                    let e = crate::store::event(
                        system_now(),
                        "revoked",
                        crate::store::actor::LOCAL,
                        Some(&token_id),
                        None,
                        None,
                        None,
                    );
                    app.store.revoke_token(&token_id, &e).await?;
                    println!("revoked {token_id}");
                    Ok(())
                }
                None => bail!("no token with id {token_id}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
