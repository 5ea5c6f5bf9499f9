//! The conformance checks of API keys and the admin password record.

use super::*;

/// API keys and the admin password record: added once by name, revoked once, each change
/// audited in its own step.
pub async fn run(s: &dyn Store) -> anyhow::Result<()> {
    let key = |name: &str| crate::store::ApiKeyRecord {
        name: name.into(),
        hash: format!("hash-{name}"),
        created: 7,
        created_by: "user:admin".into(),
        description: Some("ci".into()),
        revoked: None,
        mac: "m".into(),
    };
    let audited = |what: &str, name: &str| {
        let mut e = event(7, what, "user:admin", None, None, None, None);
        e.target = Some(format!("api-key:{name}"));
        e
    };
    let before = s.audit_log(0, 10_000).await?.last().map_or(0, |e| e.seq);
    check!(s.api_keys().await?.is_empty(), "no keys at first");
    check!(
        s.insert_api_key(&key("ci"), &audited("api_key_created", "ci"))
            .await?,
        "first key"
    );
    check!(
        s.insert_api_key(&key("backup"), &audited("api_key_created", "backup"))
            .await?,
        "second key"
    );
    let mut again = key("ci");
    again.hash = "another".into();
    check!(
        !s.insert_api_key(&again, &audited("api_key_created", "ci"))
            .await?,
        "a name is taken once"
    );
    check!(
        s.api_keys().await? == vec![key("backup"), key("ci")],
        "keys by name, the first of a name kept"
    );
    check!(
        s.revoke_api_key("ci", 9, &audited("api_key_revoked", "ci"))
            .await?,
        "revoke"
    );
    check!(
        !s.revoke_api_key("ci", 10, &audited("api_key_revoked", "ci"))
            .await?
            && !s
                .revoke_api_key("none", 10, &audited("api_key_revoked", "none"))
                .await?,
        "revoked once; an unknown key is not"
    );
    let keys = s.api_keys().await?;
    check!(
        keys.iter().find(|k| k.name == "ci").and_then(|k| k.revoked) == Some(9)
            && keys
                .iter()
                .find(|k| k.name == "backup")
                .and_then(|k| k.revoked)
                .is_none(),
        "revocation kept: {keys:?}"
    );
    check!(s.admin_password().await?.is_none(), "no password record");
    let mut changed = event(8, "password_changed", "user:admin", None, None, None, None);
    changed.target = Some("user:admin".into());
    s.set_admin_password(b"one", &changed).await?;
    s.set_admin_password(b"two", &changed).await?;
    check!(
        s.admin_password().await?.as_deref() == Some(&b"two"[..]),
        "the last password record"
    );
    let log: Vec<(String, Option<String>)> = s
        .audit_log(before, 100)
        .await?
        .into_iter()
        .map(|e| (e.event, e.target))
        .collect();
    let want: Vec<(String, Option<String>)> = [
        ("api_key_created", "api-key:ci"),
        ("api_key_created", "api-key:backup"),
        ("api_key_revoked", "api-key:ci"),
        ("password_changed", "user:admin"),
        ("password_changed", "user:admin"),
    ]
    .iter()
    .map(|(e, t)| (e.to_string(), Some(t.to_string())))
    .collect();
    check!(log == want, "each change audited once: {log:?}");
    Ok(())
}
