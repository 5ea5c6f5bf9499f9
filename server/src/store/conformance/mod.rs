//! Conformance tests every [`Store`] backend must pass.

use super::*;
use muster_protocol::node::HostFacts;
use muster_protocol::token::TokenKind;

pub fn token(id: &str, max_uses: Option<u32>) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        hash: "00".into(),
        kind: TokenKind::Persistent,
        roles: vec![Role::Allocator],
        created: 1,
        expires: None,
        max_uses,
        uses: 0,
        allowed_sources: vec![],
        revoked: false,
        description: None,
    }
}

pub fn reservation(
    node_id: &str,
    token_id: &str,
    key: &str,
    hostname: &str,
    expires_at: u64,
) -> Reservation {
    Reservation {
        node_id: node_id.into(),
        token_id: token_id.into(),
        key_hash: key.into(),
        spki_der: vec![1, 2, 3],
        host: HostFacts {
            hostname: hostname.into(),
            addresses: vec![],
            memory_mb: 1024,
            zone: "z".into(),
        },
        roles: vec![Role::Allocator],
        pending_roles: vec![],
        serials: vec![format!("serial-{node_id}")],
        transport_cert_pem: format!("transport certificate of {node_id}\n"),
        http_cert_pem: format!("HTTP certificate of {node_id}\n"),
        certs_der: None,
        cert_not_after: 99,
        created: 10,
        expires_at,
        source: "127.0.0.1".into(),
        committed: false,
    }
}

macro_rules! check {
    ($cond:expr, $($msg:tt)*) => { if !$cond { anyhow::bail!($($msg)*) } };
}

mod credentials;

pub async fn run(s: &dyn Store) -> anyhow::Result<()> {
    // Platform record: set once.
    check!(
        s.init_platform(b"p1").await?,
        "first init_platform must store"
    );
    check!(
        !s.init_platform(b"p2").await?,
        "second init_platform must refuse"
    );
    check!(
        s.platform().await?.as_deref() == Some(&b"p1"[..]),
        "platform record changed"
    );

    // One-use token: one reservation, then the limit; same key gets its reservation back.
    let created = event(
        5,
        "created",
        "user:admin",
        Some("t1"),
        None,
        Some("10.0.0.9"),
        None,
    );
    s.insert_token(&token("t1", Some(1)), Some(&created))
        .await?;
    let r1 = reservation("n1", "t1", "k1", "host-a", 100);
    check!(
        s.reserve(&r1, 10).await? == ReserveOutcome::Reserved,
        "first reserve"
    );
    check!(
        s.reservation("n1").await? == Some(r1.clone()),
        "a reservation reads back whole, its certificates with it"
    );
    check!(
        s.reserve(&reservation("n1b", "t1", "k1", "host-a", 100), 11)
            .await?
            == ReserveOutcome::Existing(Box::new(r1.clone())),
        "same key must get the same reservation"
    );
    // The same step again (a backend retrying a write whose answer was lost): the reservation
    // it finds has its own node id, which is how the join knows it as new, and no second use
    // was spent.
    check!(
        s.reserve(&r1, 10).await? == ReserveOutcome::Existing(Box::new(r1.clone()))
            && s.token("t1").await?.map(|t| t.uses) == Some(1),
        "the same reservation again finds itself"
    );
    check!(
        s.reserve(&reservation("n2", "t1", "k2", "host-b", 100), 11)
            .await?
            == ReserveOutcome::UseLimitReached,
        "use limit"
    );
    check!(
        s.reserve(&reservation("n3", "nope", "k3", "host-c", 100), 11)
            .await?
            == ReserveOutcome::UnknownToken,
        "unknown token"
    );

    // Commit registers, is idempotent, and an expired reservation cannot commit.
    match s.commit("n1", 20, "10.0.0.9").await? {
        CommitOutcome::Committed {
            host,
            replaced: None,
        } => check!(host.last_heartbeat == 20, "commit is a heartbeat"),
        other => anyhow::bail!("commit: {other:?}"),
    }
    check!(
        matches!(
            s.commit("n1", 21, "10.0.0.9").await?,
            CommitOutcome::AlreadyCommitted(_)
        ),
        "commit must be idempotent"
    );
    check!(
        s.commit("zzz", 21, "10.0.0.9").await? == CommitOutcome::Unknown,
        "unknown commit"
    );
    // The same key asking again after its commit finds it committed (the join answers a
    // committed host's bundle, not a fresh one).
    match s.reserve(&r1, 22).await? {
        ReserveOutcome::Existing(r) => check!(r.committed, "found uncommitted: {r:?}"),
        other => anyhow::bail!("reserve after commit: {other:?}"),
    }

    // Expiry gives the use back and revokes the certificates.
    s.insert_token(&token("t2", Some(1)), None).await?;
    check!(
        s.reserve(&reservation("n4", "t2", "k4", "host-d", 30), 25)
            .await?
            == ReserveOutcome::Reserved,
        "reserve t2"
    );
    check!(
        s.commit("n4", 31, "10.0.0.9").await? == CommitOutcome::Unknown,
        "expired reservation must not commit"
    );
    let expired = s.expire_reservations(31).await?;
    check!(
        expired.len() == 1 && expired[0].node_id == "n4",
        "expire: {expired:?}"
    );
    check!(
        s.token("t2").await?.map(|t| t.uses) == Some(0),
        "use must be given back"
    );
    check!(
        s.is_revoked("serial-n4").await?,
        "expired join's cert must be revoked"
    );
    check!(
        s.reservation("n4").await?.is_none(),
        "reservation must be gone"
    );

    // Same hostname replaces the old record and revokes its certs.
    s.insert_token(&token("t3", None), None).await?;
    check!(
        s.reserve(&reservation("n5", "t3", "k5", "host-a", 100), 40)
            .await?
            == ReserveOutcome::Reserved,
        "reserve n5"
    );
    match s.commit("n5", 41, "10.0.0.9").await? {
        CommitOutcome::Committed {
            replaced: Some(old),
            ..
        } => check!(old.node_id == "n1", "replaced {old:?}"),
        other => anyhow::bail!("rebuild commit: {other:?}"),
    }
    check!(
        s.is_revoked("serial-n1").await?,
        "old host's certs must be revoked"
    );
    check!(s.hosts().await?.len() == 1, "one host per hostname");
    check!(
        s.host_named("host-a").await?.map(|h| h.node_id) == Some("n5".into())
            && s.host_named("host-nobody").await?.is_none(),
        "host_named"
    );
    // Each use, commit, replacement and use given back was audited with it, once; nothing
    // else (a reservation found again, a refusal) was.
    let log: Vec<_> = s
        .audit_log(0, 100)
        .await?
        .into_iter()
        .map(|e| {
            (
                e.event,
                e.node_id.unwrap_or_default(),
                e.at,
                e.source.unwrap_or_default(),
                e.token_id.unwrap_or_default(),
            )
        })
        .collect();
    let want: Vec<_> = [
        ("created", "", 5, "10.0.0.9", "t1"),
        ("used", "n1", 10, "127.0.0.1", "t1"),
        ("committed", "n1", 20, "10.0.0.9", "t1"),
        ("used", "n4", 25, "127.0.0.1", "t2"),
        ("returned", "n4", 31, "", "t2"),
        ("used", "n5", 40, "127.0.0.1", "t3"),
        ("replaced", "n1", 41, "10.0.0.9", "t3"),
        ("committed", "n5", 41, "10.0.0.9", "t3"),
    ]
    .into_iter()
    .map(|(e, n, at, src, t)| {
        (
            e.to_string(),
            n.to_string(),
            at,
            src.to_string(),
            t.to_string(),
        )
    })
    .collect();
    check!(log == want, "audit log of the enrollments: {log:?}");
    // A join without the registered host's roles does not replace it at commit.
    let mut weaker = reservation("n7", "t3", "k7", "host-a", 100);
    weaker.roles = vec![];
    check!(
        s.reserve(&weaker, 42).await? == ReserveOutcome::Reserved,
        "reserve n7"
    );
    match s.commit("n7", 43, "10.0.0.9").await? {
        CommitOutcome::ReplaceRefused(old) => check!(old.node_id == "n5", "refused for {old:?}"),
        other => anyhow::bail!("a weaker commit must not replace host-a: {other:?}"),
    }
    check!(
        s.host_named("host-a").await?.map(|h| h.node_id) == Some("n5".into())
            && !s.is_revoked("serial-n5").await?
            && s.host("n7").await?.is_none(),
        "host-a untouched"
    );

    // Host updates.
    check!(
        s.heartbeat("n5", 50, 7, Some("1.2.3")).await?.map(|h| (
            h.last_heartbeat,
            h.memory_used_mb,
            h.agent_version
        )) == Some((50, 7, Some("1.2.3".into()))),
        "heartbeat"
    );
    check!(
        s.host("n5").await?.and_then(|h| h.agent_version) == Some("1.2.3".into()),
        "the agent's version is kept"
    );
    check!(
        s.heartbeat("gone", 50, 7, None).await?.is_none(),
        "heartbeat unknown"
    );
    let set = event(
        52,
        "roles_set",
        "api-key",
        None,
        None,
        Some("10.0.0.9"),
        None,
    );
    let h = s.set_roles("n5", &[Role::Proxy], &[], &set).await?;
    check!(h.map(|h| h.roles) == Some(vec![Role::Proxy]), "set_roles");
    let last = s.audit_log(0, 10_000).await?.pop();
    check!(
        last.as_ref()
            .map(|e| (e.event.as_str(), e.actor.as_deref(), e.node_id.as_deref()))
            == Some(("roles_set", Some("api-key"), Some("n5"))),
        "set_roles is audited with who set them: {last:?}"
    );
    // A renewal keeps the pair it was asked with; the next one drops whatever it was not
    // asked with (here the first renewal's pair, as if its answer had been lost). The same
    // step twice (a backend retrying a request whose answer was lost runs it again) finds the
    // new pair recorded already and keeps it valid.
    for run in [
        "replace_certs keeps the pair renewed with",
        "replace_certs run twice keeps the new pair",
    ] {
        let h = s
            .replace_certs(
                "n5",
                &["new".into(), "new-h".into()],
                &["serial-n5".into()],
                500,
            )
            .await?;
        check!(
            h.map(|h| h.serials) == Some(vec!["new".into(), "new-h".into(), "serial-n5".into()])
                && !s.is_revoked("serial-n5").await?
                && !s.is_revoked("new").await?
                && !s.is_revoked("new-h").await?,
            "{run}"
        );
    }
    s.replace_certs("n5", &["newer".into()], &["serial-n5".into()], 600)
        .await?;
    check!(
        s.is_revoked("new").await?
            && s.is_revoked("new-h").await?
            && !s.is_revoked("serial-n5").await?
            && !s.is_revoked("newer").await?,
        "replace_certs revokes the pairs not kept"
    );
    s.replace_certs("n5", &["newest".into()], &[], 700).await?;
    check!(
        s.is_revoked("serial-n5").await? && s.is_revoked("newer").await?,
        "replace_certs without keep revokes every old serial"
    );
    let removed = event(
        50,
        "host_removed",
        "user:admin",
        None,
        None,
        Some("10.0.0.9"),
        None,
    );
    check!(
        s.remove_host("n5", &removed).await?.is_some(),
        "remove_host"
    );
    check!(
        s.remove_host("n5", &removed).await?.is_none(),
        "remove_host again"
    );
    check!(
        s.is_revoked("newest").await?,
        "removed host's certs revoked"
    );
    check!(s.host("n5").await?.is_none(), "host gone");

    // Revocation.
    let revoked = |id: &str| event(51, "revoked", "user:admin", Some(id), None, None, None);
    check!(s.revoke_token("t3", &revoked("t3")).await?, "revoke");
    check!(
        !s.revoke_token("t3", &revoked("t3")).await?,
        "revoking again changes nothing and says so"
    );
    check!(
        !s.revoke_token("nope", &revoked("nope")).await?,
        "revoke unknown"
    );
    // The removal and the revocation were audited with them, once each; the removal names the
    // host it removed.
    let tail: Vec<_> = s
        .audit_log(0, 100)
        .await?
        .into_iter()
        .filter(|e| e.at >= 50 && e.event != "roles_set")
        .map(|e| (e.event, e.token_id, e.node_id, e.hostname))
        .collect();
    let some = |v: &str| Some(v.to_string());
    let want = [
        (
            "host_removed".to_string(),
            some("t3"),
            some("n5"),
            some("host-a"),
        ),
        ("revoked".to_string(), some("t3"), None, None),
    ];
    check!(tail == want, "audit of removal and revocation: {tail:?}");
    check!(
        s.reserve(&reservation("n6", "t3", "k6", "host-x", 100), 60)
            .await?
            == ReserveOutcome::Revoked,
        "revoked token"
    );

    // A key that joins again after its reservation expired but before the sweep: the sweep
    // takes the old reservation and leaves the new one findable by its key.
    s.insert_token(&token("t9", None), None).await?;
    check!(
        s.reserve(&reservation("n9", "t9", "k9", "host-9", 1_000), 900)
            .await?
            == ReserveOutcome::Reserved,
        "reserve n9"
    );
    check!(
        s.reserve(&reservation("n9b", "t9", "k9", "host-9", 2_000), 1_100)
            .await?
            == ReserveOutcome::Reserved,
        "the same key after its reservation expired"
    );
    let gone: Vec<String> = s
        .expire_reservations(1_200)
        .await?
        .into_iter()
        .map(|r| r.node_id)
        .collect();
    check!(
        gone.contains(&"n9".to_string()) && !gone.contains(&"n9b".to_string()),
        "the sweep takes n9 only: {gone:?}"
    );
    match s
        .reserve(&reservation("n9c", "t9", "k9", "host-9", 3_000), 1_300)
        .await?
    {
        ReserveOutcome::Existing(r) => check!(r.node_id == "n9b", "found {r:?}"),
        other => anyhow::bail!("the key's live reservation must be found: {other:?}"),
    }

    // A token revoked between a join and its commit: the commit is refused, nothing registered.
    s.insert_token(&token("t-rev", None), None).await?;
    check!(
        s.reserve(&reservation("n11", "t-rev", "k11", "host-11", 9_000), 1_400)
            .await?
            == ReserveOutcome::Reserved,
        "reserve with t-rev"
    );
    check!(
        s.revoke_token("t-rev", &revoked("t-rev")).await?,
        "revoke t-rev"
    );
    let refused = s.commit("n11", 1_401, "10.0.0.9").await?;
    check!(
        refused == CommitOutcome::TokenRevoked("t-rev".into()),
        "commit after revocation: {refused:?}"
    );
    check!(
        s.host("n11").await?.is_none() && s.host_named("host-11").await?.is_none(),
        "nothing registered after a refused commit"
    );
    // An ephemeral token retired by the sweep past its expiry is not revoked for the joins it
    // answered before: they commit within their reservation.
    let mut brief = token("t-brief", None);
    brief.kind = TokenKind::Ephemeral;
    brief.expires = Some(1_450);
    s.insert_token(&brief, None).await?;
    check!(
        s.reserve(
            &reservation("n12", "t-brief", "k12", "host-12", 9_000),
            1_440
        )
        .await?
            == ReserveOutcome::Reserved,
        "reserve with t-brief"
    );
    check!(
        s.revoke_token("t-brief", &revoked("t-brief")).await?,
        "retire t-brief"
    );
    let late = s
        .commit(
            "n12",
            1_450 + muster_protocol::token::LEEWAY_SECS + 10,
            "10.0.0.9",
        )
        .await?;
    check!(
        matches!(late, CommitOutcome::Committed { .. }),
        "commit after the token's expiry: {late:?}"
    );

    // Tokens are listed in the order they were made, however often one was used since.
    let mut early = token("order-a", None);
    early.created = 5;
    let mut late = token("order-b", None);
    late.created = 6;
    s.insert_token(&early, None).await?;
    s.insert_token(&late, None).await?;
    check!(
        s.reserve(
            &reservation("n10", "order-a", "k10", "host-10", 9_000),
            1_400
        )
        .await?
            == ReserveOutcome::Reserved,
        "reserve with order-a"
    );
    let order: Vec<String> = s
        .tokens()
        .await?
        .into_iter()
        .map(|t| t.id)
        .filter(|id| id.starts_with("order-"))
        .collect();
    check!(order == ["order-a", "order-b"], "token order: {order:?}");

    // Audit is ordered and append-only.
    use muster_protocol::api::AuditEvent;
    let before = s.audit_log(0, 1_000).await?.last().map_or(0, |e| e.seq);
    let e = AuditEvent {
        seq: 0,
        at: 1,
        event: "created".into(),
        actor: Some("token:t".into()),
        token_id: Some("t1".into()),
        node_id: None,
        hostname: None,
        source: None,
        reason: None,
        target: None,
    };
    s.audit(&e).await?;
    s.audit(&AuditEvent {
        event: "used".into(),
        ..e.clone()
    })
    .await?;
    let log = s.audit_log(before, 10).await?;
    check!(
        log.len() == 2 && log[1].seq > log[0].seq && log[1].event == "used",
        "audit_log: {log:?}"
    );
    check!(
        log[0].actor.as_deref() == Some("token:t"),
        "who acted is kept: {log:?}"
    );
    let after = s.audit_log(log[0].seq, 10).await?;
    check!(
        after.len() == 1 && after[0].seq == log[1].seq,
        "audit_log after {}: {after:?}",
        log[0].seq
    );

    // Coordinators' names: each replaces what it published before; all are read together.
    s.publish_names("a", &["c-a.example".into(), "10.0.0.1".into()])
        .await?;
    s.publish_names("b", &["c-b.example".into()]).await?;
    let mut names = s.coordinator_names().await?;
    names.sort();
    check!(
        names == ["10.0.0.1", "c-a.example", "c-b.example"],
        "coordinator names: {names:?}"
    );
    s.publish_names("a", &["10.0.0.2".into()]).await?;
    let mut names = s.coordinator_names().await?;
    names.sort();
    check!(
        names == ["10.0.0.2", "c-b.example"],
        "republished names replace the old: {names:?}"
    );

    // A host an earlier version registered under an upper-case name is filed under the
    // lower-case one; not when another host holds that name, and only once.
    s.insert_token(&token("t-case", None), None).await?;
    for (id, name) in [
        ("n-case", "Host-Case"),
        ("n-dup1", "dup"),
        ("n-dup2", "DUP"),
    ] {
        let r = reservation(id, "t-case", &format!("k-{id}"), name, 1_000);
        check!(
            s.reserve(&r, 500).await? == ReserveOutcome::Reserved,
            "reserve {id}"
        );
        check!(
            matches!(
                s.commit(id, 500, "10.0.0.1").await?,
                CommitOutcome::Committed { .. }
            ),
            "commit {id}"
        );
    }
    check!(s.lowercase_host_name("n-case").await?, "lower-cased");
    check!(
        s.host_named("host-case")
            .await?
            .map(|h| (h.node_id, h.host.hostname))
            == Some(("n-case".into(), "host-case".into()))
            && s.host_named("Host-Case").await?.is_none(),
        "filed under the lower-case name only"
    );
    check!(!s.lowercase_host_name("n-case").await?, "only once");
    check!(
        !s.lowercase_host_name("n-dup2").await?,
        "not over another host's name"
    );
    check!(
        s.host_named("DUP").await?.map(|h| h.node_id) == Some("n-dup2".into())
            && s.host_named("dup").await?.map(|h| h.node_id) == Some("n-dup1".into()),
        "both kept as they were"
    );
    check!(!s.lowercase_host_name("no-such").await?, "unknown host");
    credentials::run(s).await?;
    addresses(s).await
}

/// What the hosts that report addresses report, in the order they registered; none other.
async fn addresses(s: &dyn Store) -> anyhow::Result<()> {
    s.insert_token(&token("ta", None), None).await?;
    let hosts = [
        ("addr-b", "10.9.0.2"),
        ("addr-none", ""),
        ("addr-a", "fd00::1"),
    ];
    for (i, (name, address)) in hosts.into_iter().enumerate() {
        let mut r = reservation(&format!("na{i}"), "ta", &format!("ka{i}"), name, 1000);
        r.host.addresses = address.split_terminator(',').map(String::from).collect();
        check!(
            s.reserve(&r, 100).await? == ReserveOutcome::Reserved,
            "reserve {name}"
        );
        let done = s.commit(&r.node_id, 200 + i as u64, "10.0.0.9").await?;
        check!(
            matches!(done, CommitOutcome::Committed { .. }),
            "commit {name}"
        );
    }
    let got: Vec<(String, Vec<String>)> = (s.host_addresses().await?.into_iter())
        .filter(|h| h.hostname.starts_with("addr-"))
        .map(|h| (h.hostname, h.addresses))
        .collect();
    let want = [("addr-b", "10.9.0.2"), ("addr-a", "fd00::1")]
        .map(|(n, a)| (n.to_string(), vec![a.to_string()]));
    check!(got == want, "host addresses: {got:?}, not {want:?}");
    Ok(())
}
