//! The etcd store on a real etcd member (the testkit's): conformance, lost answers, the sweep,
//! and records past one answer's size.

use super::*;
use std::sync::atomic::Ordering;

/// A store on the testkit's etcd (a real member on loopback ports, answering before it
/// returns), under `prefix`.
async fn store_on(etcd: &muster_tests::Etcd, prefix: &str) -> anyhow::Result<EtcdStore> {
    let cfg = crate::config::EtcdConfig {
        endpoints: etcd.client_urls.clone(),
        prefix: prefix.into(),
        tls: None,
    };
    EtcdStore::connect(&cfg).await
}

#[tokio::test]
async fn etcd_passes_conformance() -> anyhow::Result<()> {
    let etcd = muster_tests::Etcd::start(1)?;
    let store = store_on(&etcd, "/conformance/").await?;
    crate::store::conformance::run(&store).await
}

/// A member that makes a transaction's writes and dies before it answers: the step's
/// retry finds its guards broken by its own lost attempt and must tell that from somebody
/// else's change, or a commit is answered "already committed" and never audited, a removal
/// "no such host", a revocation "already revoked", an audit event appended twice, `init`
/// refused over its own platform, an expired reservation never audited.
#[tokio::test]
async fn a_step_whose_answer_was_lost_knows_its_own_writes() -> anyhow::Result<()> {
    use crate::store::conformance::{reservation, token};
    let etcd = muster_tests::Etcd::start(1)?;
    let store = store_on(&etcd, "/lost/").await?;
    let lose_next = || store.conn.lose_answers.store(1, Ordering::Relaxed);

    lose_next();
    anyhow::ensure!(
        store.init_platform(b"record").await?,
        "init over its own record"
    );
    anyhow::ensure!(!store.init_platform(b"other").await?, "init twice");

    store.insert_token(&token("t", None), None).await?;
    // The join's own reservation, found by the retry (the join takes it as new).
    let r1 = reservation("n1", "t", "k1", "h1", 100);
    lose_next();
    let reserved = store.reserve(&r1, 50).await?;
    anyhow::ensure!(
        reserved == ReserveOutcome::Existing(Box::new(r1)),
        "reserve: {reserved:?}"
    );
    let uses = store.token("t").await?.map(|t| t.uses);
    anyhow::ensure!(uses == Some(1), "one use spent: {uses:?}");
    lose_next();
    let committed = store.commit("n1", 60, "10.0.0.9").await?;
    anyhow::ensure!(
        matches!(committed, CommitOutcome::Committed { .. }),
        "commit: {committed:?}"
    );
    anyhow::ensure!(matches!(
        store.commit("n1", 61, "10.0.0.9").await?,
        CommitOutcome::AlreadyCommitted(_)
    ));

    let e = AuditEvent {
        seq: 0,
        at: 60,
        event: "used".into(),
        actor: Some("token:t".into()),
        token_id: Some("t".into()),
        node_id: Some("n1".into()),
        hostname: Some("h1".into()),
        source: None,
        reason: None,
        target: None,
    };
    lose_next();
    store.audit(&e).await?;
    // The use and the commit were written by the attempts whose answers were lost, with
    // their events, once each.
    let log = store.audit_log(0, 10).await?;
    let kinds: Vec<&str> = log.iter().map(|e| e.event.as_str()).collect();
    anyhow::ensure!(
        kinds == ["used", "committed", "used"] && log.windows(2).all(|w| w[0].seq < w[1].seq),
        "appended once each, in order: {log:?}"
    );
    let third = log[2].seq;

    // A token's creation whose answer was lost: one token, one event.
    let created = super::super::event(69, "created", "user:admin", Some("t0"), None, None, None);
    lose_next();
    store
        .insert_token(&token("t0", None), Some(&created))
        .await?;
    let found = store.audit_log(third, 10).await?;
    anyhow::ensure!(
        found.len() == 1 && found[0].event == "created" && store.token("t0").await?.is_some(),
        "created once: {found:?}"
    );

    let revoked = super::super::event(70, "revoked", "user:admin", Some("t"), None, None, None);
    let left = super::super::event(
        71,
        "host_left",
        "user:admin",
        None,
        None,
        Some("10.0.0.9"),
        None,
    );
    lose_next();
    anyhow::ensure!(
        store.revoke_token("t", &revoked).await?,
        "revoked by the lost attempt"
    );
    anyhow::ensure!(
        !store.revoke_token("t", &revoked).await?,
        "not revoked twice"
    );

    lose_next();
    let removed = store.remove_host("n1", &left).await?;
    anyhow::ensure!(
        removed.is_some_and(|h| h.node_id == "n1"),
        "removed by the lost attempt"
    );
    anyhow::ensure!(store.remove_host("n1", &left).await?.is_none());
    // Each audited once, with the change.
    let log: Vec<_> = store
        .audit_log(found[0].seq, 10)
        .await?
        .into_iter()
        .map(|e| (e.event, e.node_id))
        .collect();
    let want = [
        ("revoked".to_string(), None),
        ("host_left".to_string(), Some("n1".to_string())),
    ];
    anyhow::ensure!(log == want, "revocation and removal audited once: {log:?}");

    // n1's committed reservation goes first, so the lost answer below is n2's expiry.
    anyhow::ensure!(store.expire_reservations(200).await?.is_empty());
    anyhow::ensure!(store
        .conn
        .range("resv/", Some(GetOptions::new().with_prefix()))
        .await?
        .kvs()
        .is_empty());
    store.insert_token(&token("t2", None), None).await?;
    anyhow::ensure!(
        store
            .reserve(&reservation("n2", "t2", "k2", "h2", 300), 250)
            .await?
            == ReserveOutcome::Reserved
    );
    lose_next();
    let expired = store.expire_reservations(400).await?;
    anyhow::ensure!(
        expired
            .iter()
            .map(|r| r.node_id.as_str())
            .collect::<Vec<_>>()
            == ["n2"],
        "expired: {expired:?}"
    );
    let uses = store.token("t2").await?.map(|t| t.uses);
    anyhow::ensure!(uses == Some(0), "the use given back once: {uses:?}");
    let returned = store.audit_log(0, 100).await?;
    let returned: Vec<_> = returned.iter().filter(|e| e.event == "returned").collect();
    anyhow::ensure!(
        returned.len() == 1 && returned[0].node_id.as_deref() == Some("n2"),
        "the use given back audited once: {returned:?}"
    );
    Ok(())
}

/// A reservation stays until a sweep expires it, however long every coordinator was
/// down: etcd dropping it on its own (a lease running out) would keep its token use spent
/// and its certificates unrevoked.
#[tokio::test]
async fn only_the_sweep_ends_a_reservation() -> anyhow::Result<()> {
    use crate::store::conformance::{reservation, token};
    let etcd = muster_tests::Etcd::start(1)?;
    let store = store_on(&etcd, "/leases/").await?;
    store.insert_token(&token("t", Some(1)), None).await?;
    let r = reservation("n1", "t", "k1", "h1", 100);
    anyhow::ensure!(store.reserve(&r, 50).await? == ReserveOutcome::Reserved);
    for key in ["resv/n1", "resv-key/t/k1"] {
        let got = store.conn.range(key, None).await?;
        let leases: Vec<i64> = got.kvs().iter().map(|kv| kv.lease()).collect();
        anyhow::ensure!(leases == [0], "{key}: leases {leases:?}");
    }
    let expired = store.expire_reservations(1_000_000).await?;
    anyhow::ensure!(expired.len() == 1);
    anyhow::ensure!(store.token("t").await?.map(|t| t.uses) == Some(0));
    for serial in &r.serials {
        anyhow::ensure!(store.is_revoked(serial).await?, "{serial} revoked");
    }
    Ok(())
}

/// More records than one etcd answer may hold (etcd-client decodes at most 4 MiB): they
/// are listed and expired a page at a time, and a record that does not read stops nothing.
#[tokio::test]
async fn records_past_one_answers_size_are_read_in_pages() -> anyhow::Result<()> {
    use crate::store::conformance::{reservation, token};
    let etcd = muster_tests::Etcd::start(1)?;
    let store = store_on(&etcd, "/pages/").await?;
    store.insert_token(&token("t", None), None).await?;
    // About 6 KB each, as two real certificates make a reservation about 3 KB: 5 MB.
    let n = 850;
    let pem = "x".repeat(3000);
    for i in 0..n {
        let mut r = reservation(
            &format!("n{i:04}"),
            "t",
            &format!("k{i}"),
            &format!("h{i}"),
            100,
        );
        r.transport_cert_pem = pem.clone();
        r.http_cert_pem = pem.clone();
        anyhow::ensure!(store.reserve(&r, 50).await? == ReserveOutcome::Reserved);
    }
    let listed: Vec<Reservation> = store.conn.list("resv/").await?;
    anyhow::ensure!(listed.len() == n, "listed {} of {n}", listed.len());
    let bad = store.conn.key("resv/n9999-unreadable");
    store
        .conn
        .call(|mut c| {
            let k = bad.clone();
            async move { c.put(k, "not json", None).await }
        })
        .await?;
    let expired = store.expire_reservations(200).await?;
    anyhow::ensure!(expired.len() == n, "expired {} of {n}", expired.len());
    let uses = store.token("t").await?.map(|t| t.uses);
    anyhow::ensure!(uses == Some(0), "every use given back: {uses:?}");
    Ok(())
}

/// A fleet joining with one token that has no use limit writes no key in common: every
/// reservation goes through on its first round (no guard broken by another join), the token's
/// record is never rewritten, and its uses are still counted exactly, and given back on expiry.
#[tokio::test]
async fn joins_of_a_token_without_a_use_limit_write_no_key_in_common() -> anyhow::Result<()> {
    use crate::store::conformance::{reservation, token};
    let etcd = muster_tests::Etcd::start(1)?;
    let store = store_on(&etcd, "/fleet/").await?;
    store.insert_token(&token("t", None), None).await?;
    let before = store
        .conn
        .get::<TokenRecord>("tokens/t")
        .await?
        .map(|t| t.rev);
    let joins = (0..40).map(|i| {
        let r = reservation(
            &format!("n{i}"),
            "t",
            &format!("k{i}"),
            &format!("h{i}"),
            100,
        );
        let store = &store;
        async move { store.reserve(&r, 50).await }
    });
    let outcomes = futures_util::future::join_all(joins).await;
    for o in &outcomes {
        anyhow::ensure!(matches!(o, Ok(ReserveOutcome::Reserved)), "{o:?}");
    }
    let retries = store.retries();
    anyhow::ensure!(retries == 0, "{retries} joins went round again");
    let after = store
        .conn
        .get::<TokenRecord>("tokens/t")
        .await?
        .map(|t| t.rev);
    anyhow::ensure!(before == after, "the token's record was rewritten");
    let uses = store.token("t").await?.map(|t| t.uses);
    anyhow::ensure!(uses == Some(40), "uses counted: {uses:?}");
    let listed = store.tokens().await?.iter().map(|t| t.uses).sum::<u32>();
    anyhow::ensure!(listed == 40, "uses listed: {listed}");
    // Committed ones keep their use; the rest expire and give theirs back, once.
    for i in 0..10 {
        store.commit(&format!("n{i}"), 60, "10.0.0.1").await?;
    }
    let expired = store.expire_reservations(200).await?;
    anyhow::ensure!(expired.len() == 30, "{} expired", expired.len());
    anyhow::ensure!(store.expire_reservations(201).await?.is_empty());
    let uses = store.token("t").await?.map(|t| t.uses);
    anyhow::ensure!(uses == Some(10), "uses after expiry: {uses:?}");
    // A token with a use limit still counts in its record, exactly.
    store.insert_token(&token("one", Some(1)), None).await?;
    let race = (0..10).map(|i| {
        let r = reservation(
            &format!("o{i}"),
            "one",
            &format!("ok{i}"),
            &format!("o{i}"),
            100,
        );
        let store = &store;
        async move { store.reserve(&r, 50).await }
    });
    let won = futures_util::future::join_all(race)
        .await
        .into_iter()
        .filter(|o| matches!(o, Ok(ReserveOutcome::Reserved)))
        .count();
    anyhow::ensure!(won == 1, "{won} won a one-use token");
    Ok(())
}

/// Audit events are numbered by the revision that wrote them, so they keep commit order with
/// no counter; the sweep files them by number once they are old enough, each once however many
/// coordinators sweep, and every event keeps its number and its place in the log.
#[tokio::test]
async fn audit_events_are_numbered_by_revision_and_filed_once() -> anyhow::Result<()> {
    let etcd = muster_tests::Etcd::start(1)?;
    let a = store_on(&etcd, "/filed/").await?;
    let b = store_on(&etcd, "/filed/").await?;
    for i in 0..150u64 {
        let e = super::super::event(
            1_000 + i,
            "refused",
            "user:admin",
            Some("t"),
            None,
            None,
            None,
        );
        if i % 2 == 0 {
            a.audit(&e).await?
        } else {
            b.audit(&e).await?
        }
    }
    let before = a.audit_log(0, 1_000).await?;
    let ats: Vec<u64> = before.iter().map(|e| e.at).collect();
    anyhow::ensure!(
        ats == (1_000..1_150).collect::<Vec<_>>(),
        "in the order written"
    );
    anyhow::ensure!(before.windows(2).all(|w| w[0].seq < w[1].seq));
    // The first 100 (at 1_000 to 1_099) are old enough then; two sweeps at once.
    let now = 1_099 + sweep::FILE_AFTER_SECS;
    let (fa, fb) = tokio::join!(
        sweep::file_events(&a.conn, now),
        sweep::file_events(&b.conn, now)
    );
    let filed = fa? + fb?;
    anyhow::ensure!(filed == 100, "filed {filed}");
    anyhow::ensure!(
        a.conn.count("audit/").await? == 100 && a.conn.count(AUDIT_WAITING).await? == 50
    );
    let after = b.audit_log(0, 1_000).await?;
    anyhow::ensure!(after == before, "the same log, filed or not");
    // Paging over the boundary between filed and waiting events.
    let mut paged = Vec::new();
    let mut cursor = 0;
    loop {
        let page = a.audit_log(cursor, 7).await?;
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        paged.extend(page);
    }
    anyhow::ensure!(
        paged == before,
        "paged: {} of {}",
        paged.len(),
        before.len()
    );
    Ok(())
}
