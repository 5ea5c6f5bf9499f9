//! The SQLite store's own tests (both backends pass `conformance`).

#[tokio::test]
async fn sqlite_passes_conformance() -> anyhow::Result<()> {
    let d = tempfile::tempdir()?;
    let s = super::SqliteStore::open(&d.path().join("muster.db"))?;
    crate::store::conformance::run(&s).await
}

/// A record that does not read (a bad reservation, a bad token) is left for an operator
/// and stops no other reservation from expiring.
#[tokio::test]
async fn one_bad_record_stops_no_sweep() -> anyhow::Result<()> {
    use crate::store::conformance::{reservation, token};
    use crate::store::{ReserveOutcome, Store};
    let d = tempfile::tempdir()?;
    let path = d.path().join("muster.db");
    let s = super::SqliteStore::open(&path)?;
    s.insert_token(&token("t", None), None).await?;
    s.insert_token(&token("bad-token", None), None).await?;
    for (id, tok) in [("good", "t"), ("of-bad-token", "bad-token")] {
        let r = reservation(id, tok, id, id, 100);
        anyhow::ensure!(s.reserve(&r, 50).await? == ReserveOutcome::Reserved);
    }
    {
        let c = rusqlite::Connection::open(&path)?;
        c.busy_timeout(std::time::Duration::from_secs(5))?;
        c.execute(
            "INSERT INTO reservations (node_id, token_id, key_hash, expires_at, json) VALUES ('unreadable', 't', 'x', 1, 'not json')",
            [],
        )?;
        c.execute(
            "UPDATE tokens SET json = 'not json' WHERE id = 'bad-token'",
            [],
        )?;
    }
    let mut expired: Vec<String> = s
        .expire_reservations(200)
        .await?
        .into_iter()
        .map(|r| r.node_id)
        .collect();
    expired.sort();
    assert_eq!(expired, ["good", "of-bad-token"]);
    assert_eq!(s.token("t").await?.map(|t| t.uses), Some(0));
    assert!(s.is_revoked("serial-of-bad-token").await?);
    Ok(())
}

/// Opens the store at `path`, written by an earlier schema version, and checks it is now at
/// this build's.
fn migrated(path: &std::path::Path) -> anyhow::Result<super::SqliteStore> {
    let s = super::SqliteStore::open(path)?;
    let version: i64 = s.read(|c| {
        c.query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(super::unavailable)
    })?;
    assert_eq!(version, super::SCHEMA_VERSION);
    // From version 7 the index of reservations by key is in memory, not in the file.
    let on_disk: i64 = s.read(|c| {
        c.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'reservations_key'",
            [],
            |r| r.get(0),
        )
        .map_err(super::unavailable)
    })?;
    assert_eq!(
        on_disk, 0,
        "the reservations_key index is still in the file"
    );
    Ok(s)
}

/// A data folder written by schema version 1 (the committed flag inside the record, the
/// key as an array of numbers) opens, migrates and keeps its meaning.
#[tokio::test]
async fn a_version_1_store_migrates() -> anyhow::Result<()> {
    use crate::store::conformance::{reservation, token};
    use crate::store::{CommitOutcome, Store};
    let d = tempfile::tempdir()?;
    let path = d.path().join("muster.db");
    {
        let c = rusqlite::Connection::open(&path)?;
        c.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE tokens (id TEXT PRIMARY KEY, json TEXT NOT NULL);
             CREATE TABLE reservations (node_id TEXT PRIMARY KEY, token_id TEXT NOT NULL,
                 key_hash TEXT NOT NULL, expires_at INTEGER NOT NULL, json TEXT NOT NULL);
             CREATE TABLE hosts (node_id TEXT PRIMARY KEY, hostname TEXT NOT NULL UNIQUE, json TEXT NOT NULL);
             CREATE TABLE revoked (serial TEXT PRIMARY KEY);
             CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, json TEXT NOT NULL);
             PRAGMA user_version = 1;",
        )?;
        let t = crate::store::TokenRecord {
            uses: 2,
            ..token("t", None)
        };
        c.execute(
            "INSERT INTO tokens (id, json) VALUES ('t', ?1)",
            [serde_json::to_string(&t)?],
        )?;
        for (id, committed) in [("done", true), ("open", false)] {
            let mut r = serde_json::to_value(reservation(id, "t", id, id, 1000))?;
            r["committed"] = committed.into();
            r["spki_der"] = serde_json::json!([1, 2, 3]);
            c.execute(
                "INSERT INTO reservations (node_id, token_id, key_hash, expires_at, json) VALUES (?1, 't', ?1, 1000, ?2)",
                [id, &r.to_string()],
            )?;
        }
    }
    let s = migrated(&path)?;
    let done = s
        .reservation("done")
        .await?
        .map(|r| (r.committed, r.spki_der, r.transport_cert_pem));
    assert_eq!(
        done,
        Some((
            true,
            vec![1, 2, 3],
            "transport certificate of done\n".into()
        )),
        "the certificates in a record older than version 3 read"
    );
    assert_eq!(
        s.token("t").await?.map(|t| t.uses),
        Some(2),
        "its uses kept"
    );
    assert!(matches!(
        s.commit("done", 10, "127.0.0.1").await?,
        CommitOutcome::Unknown
    ));
    assert!(matches!(
        s.commit("open", 10, "127.0.0.1").await?,
        CommitOutcome::Committed { .. }
    ));
    assert_eq!(
        s.reservation("open").await?.map(|r| r.committed),
        Some(true)
    );
    let expired = s.expire_reservations(2000).await?;
    assert!(expired.is_empty(), "committed reservations just go");
    Ok(())
}

/// A data folder written by schema version 3 (a commit flipped a column of the reservation's
/// row) keeps which reservations were committed, and the marks go with their reservations.
#[tokio::test]
async fn a_version_3_store_keeps_its_commits() -> anyhow::Result<()> {
    use crate::store::conformance::{reservation, token};
    use crate::store::{CommitOutcome, Store};
    let d = tempfile::tempdir()?;
    let path = d.path().join("muster.db");
    {
        let c = rusqlite::Connection::open(&path)?;
        c.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE tokens (id TEXT PRIMARY KEY, json TEXT NOT NULL, uses INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE reservations (node_id TEXT PRIMARY KEY, token_id TEXT NOT NULL,
                 key_hash TEXT NOT NULL, expires_at INTEGER NOT NULL, json TEXT NOT NULL,
                 committed INTEGER NOT NULL DEFAULT 0, transport_cert_pem TEXT, http_cert_pem TEXT);
             CREATE INDEX reservations_key ON reservations (token_id, key_hash);
             CREATE INDEX reservations_expiry ON reservations (expires_at);
             CREATE TABLE hosts (node_id TEXT PRIMARY KEY, hostname TEXT NOT NULL UNIQUE, json TEXT NOT NULL);
             CREATE TABLE revoked (serial TEXT PRIMARY KEY);
             CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, json TEXT NOT NULL);
             PRAGMA user_version = 3;",
        )?;
        c.execute(
            "INSERT INTO tokens (id, json, uses) VALUES ('t', ?1, 2)",
            [serde_json::to_string(&token("t", None))?],
        )?;
        for (id, committed) in [("done", true), ("open", false)] {
            let mut r = reservation(id, "t", id, id, 1000);
            let pem = std::mem::take(&mut r.transport_cert_pem);
            r.http_cert_pem.clear();
            c.execute(
                "INSERT INTO reservations (node_id, token_id, key_hash, expires_at, json, committed, transport_cert_pem, http_cert_pem)
                 VALUES (?1, 't', ?1, 1000, ?2, ?3, ?4, ?4)",
                rusqlite::params![id, serde_json::to_string(&r)?, committed, pem],
            )?;
        }
    }
    let s = migrated(&path)?;
    let committed = |r: Option<crate::store::Reservation>| r.map(|r| r.committed);
    assert_eq!(committed(s.reservation("done").await?), Some(true));
    assert_eq!(committed(s.reservation("open").await?), Some(false));
    assert_eq!(
        s.reservation("done").await?.map(|r| r.transport_cert_pem),
        Some("transport certificate of done\n".into()),
        "its certificates kept"
    );
    assert!(matches!(
        s.commit("open", 10, "127.0.0.1").await?,
        CommitOutcome::Committed { .. }
    ));
    assert_eq!(committed(s.reservation("open").await?), Some(true));
    let expired = s.expire_reservations(2000).await?;
    assert!(expired.is_empty(), "committed reservations just go");
    let left: i64 = s.read(|c| {
        c.query_row(
            "SELECT (SELECT count(*) FROM reservations) + (SELECT count(*) FROM reservations_committed)",
            [],
            |r| r.get(0),
        )
        .map_err(super::unavailable)
    })?;
    assert_eq!(left, 0, "the reservations and their marks are gone");
    assert_eq!(
        s.token("t").await?.map(|t| t.uses),
        Some(2),
        "no use given back"
    );
    Ok(())
}

/// A join counts its token's use in the token's `uses` column, leaving the token's record as
/// it was, and keeps its certificates beside the reservation's record, which the commit
/// reads without them; the store still answers with both whole.
#[tokio::test]
async fn a_join_rewrites_no_token_record_and_keeps_its_certificates_apart() -> anyhow::Result<()> {
    use crate::store::conformance::{reservation, token};
    use crate::store::{CommitOutcome, ReserveOutcome, Store};
    let d = tempfile::tempdir()?;
    let path = d.path().join("muster.db");
    let s = super::SqliteStore::open(&path)?;
    s.insert_token(&token("t", Some(5)), None).await?;
    let raw = || -> anyhow::Result<(String, u32)> {
        let c = rusqlite::Connection::open(&path)?;
        Ok(
            c.query_row("SELECT json, uses FROM tokens WHERE id = 't'", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?,
        )
    };
    let (before, _) = raw()?;
    let r = reservation("n1", "t", "k1", "host-a", 100);
    anyhow::ensure!(s.reserve(&r, 10).await? == ReserveOutcome::Reserved);
    anyhow::ensure!(
        s.reserve(&reservation("n2", "t", "k2", "host-b", 100), 10)
            .await?
            == ReserveOutcome::Reserved
    );
    assert_eq!(
        raw()?,
        (before.clone(), 2),
        "the record as it was, two uses in the column"
    );
    assert_eq!(s.token("t").await?.map(|t| t.uses), Some(2));
    assert_eq!(
        s.tokens().await?.iter().map(|t| t.uses).collect::<Vec<_>>(),
        [2]
    );
    let c = rusqlite::Connection::open(&path)?;
    let (record, transport, http): (String, String, String) = c.query_row(
        "SELECT json, transport_cert_pem, http_cert_pem FROM reservations WHERE node_id = 'n1'",
        [],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    anyhow::ensure!(
        !record.contains("certificate of"),
        "the record holds a certificate: {record}"
    );
    assert_eq!(
        (transport, http),
        (r.transport_cert_pem.clone(), r.http_cert_pem.clone())
    );
    assert_eq!(s.reservation("n1").await?, Some(r.clone()));
    assert_eq!(
        s.reserve(&reservation("n3", "t", "k1", "host-a", 100), 11)
            .await?,
        ReserveOutcome::Existing(Box::new(r.clone())),
        "the same key again gets the certificates it was given"
    );
    anyhow::ensure!(matches!(
        s.commit("n1", 12, "127.0.0.1").await?,
        CommitOutcome::Committed { .. }
    ));
    // An uncommitted reservation's use comes back: the whole count goes to the record.
    let expired = s.expire_reservations(200).await?;
    assert_eq!(
        expired
            .iter()
            .map(|r| r.node_id.as_str())
            .collect::<Vec<_>>(),
        ["n2"]
    );
    let (after, column) = raw()?;
    assert_eq!(column, 0);
    assert_eq!(
        serde_json::from_str::<crate::store::TokenRecord>(&after)?.uses,
        1
    );
    assert_eq!(s.token("t").await?.map(|t| t.uses), Some(1));
    Ok(())
}

/// A join's certificates are kept as the DER the signer made (schema version 6), a quarter
/// smaller than PEM, and a join answered again gets the very text the signer wrote; a record
/// with its certificates as text only keeps the text.
#[tokio::test]
async fn a_join_keeps_its_certificates_as_der_and_answers_again_with_the_same_text(
) -> anyhow::Result<()> {
    use crate::store::conformance::{reservation, token};
    use crate::store::{ReserveOutcome, Store};
    let d = tempfile::tempdir()?;
    let path = d.path().join("muster.db");
    let s = super::SqliteStore::open(&path)?;
    s.insert_token(&token("t", Some(5)), None).await?;
    let signed = |name: &str| -> anyhow::Result<(String, Vec<u8>)> {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()])?;
        Ok((c.cert.pem(), c.cert.der().to_vec()))
    };
    let ((transport_pem, transport_der), (http_pem, http_der)) =
        (signed("host-a.transport")?, signed("host-a.http")?);
    let r = crate::store::Reservation {
        transport_cert_pem: transport_pem,
        http_cert_pem: http_pem,
        certs_der: Some([transport_der.clone(), http_der.clone()]),
        ..reservation("n1", "t", "k1", "host-a", 100)
    };
    anyhow::ensure!(s.reserve(&r, 10).await? == ReserveOutcome::Reserved);
    let text_only = reservation("n2", "t", "k2", "host-b", 100);
    anyhow::ensure!(s.reserve(&text_only, 10).await? == ReserveOutcome::Reserved);

    let c = rusqlite::Connection::open(&path)?;
    let columns = |node_id: &str| -> anyhow::Result<(String, String, Vec<u8>, Vec<u8>)> {
        Ok(c.query_row(
            "SELECT typeof(transport_cert_pem), typeof(http_cert_pem),
                    CAST(transport_cert_pem AS BLOB), CAST(http_cert_pem AS BLOB)
             FROM reservations WHERE node_id = ?1",
            [node_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )?)
    };
    assert_eq!(
        columns("n1")?,
        ("blob".into(), "blob".into(), transport_der, http_der),
        "the signer's DER, as it was"
    );
    let (kind, _, transport, _) = columns("n2")?;
    assert_eq!(
        (kind.as_str(), transport),
        ("text", text_only.transport_cert_pem.clone().into_bytes()),
        "certificates given as text only are kept as text"
    );

    // Read back, and answered again to the same key: the signer's PEM, byte for byte.
    let answered = crate::store::Reservation {
        certs_der: None,
        ..r.clone()
    };
    assert_eq!(s.reservation("n1").await?, Some(answered.clone()));
    assert_eq!(
        s.reserve(&reservation("n3", "t", "k1", "host-a", 100), 11)
            .await?,
        ReserveOutcome::Existing(Box::new(answered)),
        "the same key again gets the text it was given"
    );
    assert_eq!(s.reservation("n2").await?, Some(text_only));
    Ok(())
}

/// The address refresh reads the hosts that report addresses through their own index, not
/// every host's record.
#[test]
fn the_address_refresh_reads_through_its_index() -> anyhow::Result<()> {
    let d = tempfile::tempdir()?;
    let path = d.path().join("muster.db");
    drop(super::SqliteStore::open(&path)?);
    let c = rusqlite::Connection::open(&path)?;
    let mut plan = c.prepare(&format!(
        "EXPLAIN QUERY PLAN {}",
        super::rows::HOST_ADDRESSES
    ))?;
    let steps: Vec<String> = plan
        .query_map([], |r| r.get::<_, String>(3))?
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(
        steps
            .iter()
            .any(|s| s.contains("USING INDEX hosts_with_addresses")),
        "the refresh scans: {steps:?}"
    );
    Ok(())
}

/// Steps sharing a batch's transaction: one that fails is undone alone, whatever it wrote
/// before failing, and the steps before and after it are kept when the batch commits. Each
/// step runs twice, so the savepoint's statements are taken from the cache the second time.
#[test]
fn a_failing_step_is_undone_alone_within_its_batch() -> anyhow::Result<()> {
    let mut c = rusqlite::Connection::open_in_memory()?;
    c.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY)")?;
    let tx = c.transaction()?;
    for round in ["a", "b"] {
        let kept = super::in_savepoint(&tx, |c| {
            c.execute("INSERT INTO t VALUES (?1)", [format!("{round}-before")])
                .map_err(super::unavailable)
        });
        anyhow::ensure!(kept.is_ok(), "{kept:?}");
        let failed: crate::store::StoreResult<()> = super::in_savepoint(&tx, |c| {
            c.execute("INSERT INTO t VALUES (?1)", [format!("{round}-undone")])
                .map_err(super::unavailable)?;
            Err(super::unavailable("this step fails after writing"))
        });
        anyhow::ensure!(failed.is_err());
        let kept = super::in_savepoint(&tx, |c| {
            c.execute("INSERT INTO t VALUES (?1)", [format!("{round}-after")])
                .map_err(super::unavailable)
        });
        anyhow::ensure!(kept.is_ok(), "{kept:?}");
    }
    tx.commit()?;
    let mut st = c.prepare("SELECT k FROM t ORDER BY k")?;
    let rows: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    anyhow::ensure!(
        rows == ["a-after", "a-before", "b-after", "b-before"],
        "{rows:?}"
    );
    Ok(())
}

/// A data folder written by schema version 4 keeps its audit log and its reservations, and
/// numbers its events on from its last one without a sequence of their own.
#[tokio::test]
async fn a_version_4_store_keeps_its_audit_log_numbered_without_a_sequence() -> anyhow::Result<()> {
    use crate::store::conformance::{reservation, token};
    use crate::store::{ReserveOutcome, Store};
    let d = tempfile::tempdir()?;
    let path = d.path().join("muster.db");
    let r = reservation("n1", "t", "k1", "host-a", 1000);
    let event = |name: &str| muster_protocol::api::AuditEvent {
        seq: 0,
        at: 1,
        event: name.into(),
        actor: None,
        token_id: None,
        node_id: None,
        hostname: None,
        source: None,
        reason: None,
        target: None,
    };
    {
        let c = rusqlite::Connection::open(&path)?;
        c.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE tokens (id TEXT PRIMARY KEY, json TEXT NOT NULL, uses INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE reservations (node_id TEXT PRIMARY KEY, token_id TEXT NOT NULL,
                 key_hash TEXT NOT NULL, expires_at INTEGER NOT NULL, json TEXT NOT NULL,
                 transport_cert_pem TEXT, http_cert_pem TEXT);
             CREATE INDEX reservations_key ON reservations (token_id, key_hash);
             CREATE INDEX reservations_expiry ON reservations (expires_at);
             CREATE TABLE reservations_committed (node_id TEXT PRIMARY KEY) WITHOUT ROWID;
             CREATE TABLE hosts (node_id TEXT PRIMARY KEY, hostname TEXT NOT NULL UNIQUE, json TEXT NOT NULL);
             CREATE TABLE revoked (serial TEXT PRIMARY KEY);
             CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, json TEXT NOT NULL);
             PRAGMA user_version = 4;",
        )?;
        c.execute(
            "INSERT INTO tokens (id, json, uses) VALUES ('t', ?1, 1)",
            [serde_json::to_string(&token("t", Some(1)))?],
        )?;
        let mut record = r.clone();
        let transport = std::mem::take(&mut record.transport_cert_pem);
        let http = std::mem::take(&mut record.http_cert_pem);
        c.execute(
            "INSERT INTO reservations (node_id, token_id, key_hash, expires_at, json, transport_cert_pem, http_cert_pem)
             VALUES ('n1', 't', 'k1', 1000, ?1, ?2, ?3)",
            rusqlite::params![serde_json::to_string(&record)?, transport, http],
        )?;
        for seq in [3, 7] {
            let e = event(&format!("event {seq}"));
            c.execute(
                "INSERT INTO audit (seq, json) VALUES (?1, ?2)",
                rusqlite::params![seq, serde_json::to_string(&e)?],
            )?;
        }
    }
    let s = migrated(&path)?;
    let details = |log: Vec<muster_protocol::api::AuditEvent>| -> Vec<(u64, String)> {
        log.into_iter().map(|e| (e.seq, e.event)).collect()
    };
    assert_eq!(
        details(s.audit_log(0, 10).await?),
        [(3, "event 3".to_string()), (7, "event 7".to_string())]
    );
    s.audit(&event("event after")).await?;
    assert_eq!(
        details(s.audit_log(7, 10).await?),
        [(8, "event after".to_string())],
        "numbered on from the last event"
    );
    assert_eq!(
        s.reserve(&reservation("n2", "t", "k1", "host-a", 1000), 10)
            .await?,
        ReserveOutcome::Existing(Box::new(r.clone())),
        "the same key still finds its reservation"
    );
    let schema: Vec<String> = s.read(|c| {
        c.prepare("SELECT name || ': ' || coalesce(sql, '') FROM sqlite_master")
            .and_then(|mut st| st.query_map([], |row| row.get(0))?.collect())
            .map_err(super::unavailable)
    })?;
    anyhow::ensure!(
        !schema.iter().any(|s| s.contains("AUTOINCREMENT")),
        "the audit log numbered by a sequence of its own: {schema:#?}"
    );
    // SQLite keeps the sequence table once made; nothing writes it now.
    let sequences: i64 = s.read(|c| {
        c.query_row("SELECT count(*) FROM sqlite_sequence", [], |row| row.get(0))
            .map_err(super::unavailable)
    })?;
    assert_eq!(sequences, 0, "a sequence still kept");
    Ok(())
}

/// A step that changes more pages than SQLite keeps a statement journal in memory for by
/// default (64 KiB) opens no temporary file: the bundled SQLite keeps up to 256 KiB in memory
/// (.cargo/config.toml), so such a step's journal does not spill to disk for the rest of its
/// batch. (SQLite names its temporary files `etilqs_…` and unlinks them as it opens them; they
/// stay in /proc/self/fd.)
#[tokio::test]
async fn a_large_step_keeps_its_statement_journal_in_memory() -> anyhow::Result<()> {
    let d = tempfile::tempdir()?;
    let s = super::SqliteStore::open(&d.path().join("muster.db"))?;
    s.tx(|c| {
        c.execute_batch("CREATE TABLE big (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .map_err(super::unavailable)?;
        for k in 0..200 {
            c.execute(
                "INSERT INTO big (k, v) VALUES (?1, zeroblob(1000))",
                rusqlite::params![k],
            )
            .map_err(super::unavailable)?;
        }
        Ok(())
    })
    .await?;
    let (changed, temporary) = s
        .tx(|c| {
            // About 50 pages, each journaled: about 200 KiB.
            let changed = c
                .execute("UPDATE big SET v = randomblob(1000)", [])
                .map_err(super::unavailable)?;
            Ok((changed, temporary_files()))
        })
        .await?;
    assert_eq!(changed, 200);
    assert_eq!(
        temporary,
        Vec::<String>::new(),
        "the step's journal spilled"
    );
    Ok(())
}

/// SQLite's temporary files this process holds open.
fn temporary_files() -> Vec<String> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return vec!["/proc/self/fd does not read".into()];
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.contains("etilqs_"))
        .collect()
}

/// The bundled SQLite is built with the workspace's flags (.cargo/config.toml): without
/// memory statistics, whose global lock every allocation of SQLite's would take.
#[test]
fn sqlite_is_built_without_memory_statistics() -> anyhow::Result<()> {
    let c = rusqlite::Connection::open_in_memory()?;
    let mut st = c.prepare("PRAGMA compile_options")?;
    let options: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    anyhow::ensure!(
        options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
        "{options:?}"
    );
    Ok(())
}

/// The index of reservations by key lives in memory: a store opened again reads it in, so a
/// join answered again after a restart still finds the reservation its key made.
#[tokio::test]
async fn a_join_again_after_a_restart_finds_its_reservation_by_key() -> anyhow::Result<()> {
    use crate::store::conformance::{reservation, token};
    use crate::store::{ReserveOutcome, Store};
    let d = tempfile::tempdir()?;
    let path = d.path().join("muster.db");
    {
        let s = super::SqliteStore::open(&path)?;
        s.insert_token(&token("t", None), None).await?;
        let first = reservation("n1", "t", "key-1", "h1", 100);
        anyhow::ensure!(s.reserve(&first, 50).await? == ReserveOutcome::Reserved);
        let other = reservation("n2", "t", "key-2", "h2", 100);
        anyhow::ensure!(s.reserve(&other, 50).await? == ReserveOutcome::Reserved);
    }
    let s = super::SqliteStore::open(&path)?;
    assert_eq!(s.keys.len(), 2);
    let again = reservation("n3", "t", "key-1", "h1", 100);
    match s.reserve(&again, 60).await? {
        ReserveOutcome::Existing(r) => assert_eq!(r.node_id, "n1"),
        other => anyhow::bail!("a join of the same key after a restart got {other:?}"),
    }
    // The same key under another token is another reservation.
    s.insert_token(&token("u", None), None).await?;
    let under_u = reservation("n4", "u", "key-1", "h1", 100);
    assert_eq!(s.reserve(&under_u, 60).await?, ReserveOutcome::Reserved);
    Ok(())
}

/// An entry the index keeps for a row that is not there (its step rolled back), or whose row
/// id SQLite gave to another reservation, matches nothing: each row it names is checked.
#[test]
fn a_stale_entry_of_the_key_index_finds_nothing() -> anyhow::Result<()> {
    use crate::store::conformance::reservation;
    let d = tempfile::tempdir()?;
    let mut c = rusqlite::Connection::open(d.path().join("muster.db"))?;
    super::migrate(&mut c)?;
    let keys = super::ReservationKeys::new();
    // A reservation inserted and entered, then rolled back.
    let tx = c.transaction()?;
    let row = super::insert_reservation(&tx, reservation("gone", "t", "key-1", "h1", 100))?;
    keys.insert("t", "key-1", row);
    drop(tx);
    assert_eq!(
        super::find_reservation_of_key(&c, &keys, "t", "key-1", 50)?,
        None
    );
    // SQLite gives the same row id to the next reservation, of another key.
    let reused = super::insert_reservation(&c, reservation("n2", "t", "key-2", "h2", 100))?;
    assert_eq!(reused, row);
    keys.insert("t", "key-2", reused);
    assert_eq!(
        super::find_reservation_of_key(&c, &keys, "t", "key-1", 50)?,
        None
    );
    let found = super::find_reservation_of_key(&c, &keys, "t", "key-2", 50)?;
    assert_eq!(found.map(|r| r.node_id).as_deref(), Some("n2"));
    // Expired, it is found no more.
    assert_eq!(
        super::find_reservation_of_key(&c, &keys, "t", "key-2", 100)?,
        None
    );
    Ok(())
}

/// The sweep forgets the keys of the reservations it deletes, and only those.
#[tokio::test]
async fn the_sweep_forgets_the_keys_of_what_it_deletes() -> anyhow::Result<()> {
    use crate::store::conformance::{reservation, token};
    use crate::store::{ReserveOutcome, Store};
    let d = tempfile::tempdir()?;
    let s = super::SqliteStore::open(&d.path().join("muster.db"))?;
    s.insert_token(&token("t", None), None).await?;
    for (id, key, expires) in [("early", "key-1", 100), ("late", "key-2", 300)] {
        let r = reservation(id, "t", key, id, expires);
        anyhow::ensure!(s.reserve(&r, 50).await? == ReserveOutcome::Reserved);
    }
    assert_eq!(s.keys.len(), 2);
    let expired = s.expire_reservations(200).await?;
    assert_eq!(expired.len(), 1);
    assert_eq!(s.keys.len(), 1);
    assert!(s.keys.rows("t", "key-1").is_empty());
    assert_eq!(s.keys.rows("t", "key-2").len(), 1);
    Ok(())
}
