//! What `install` and the other commands share, below them all: the clock, the coordinator
//! addresses to try, the hooks' environment, and clients signing in with the host's files.
//!
//! Depends on `net`, `layout`, `state`, `exit` and `muster-protocol`; never on a flow.

use crate::exit::{Exit, Failure, Result};
use crate::layout::File;
use crate::net::{Client, ClientIdentity};
use crate::state::State;
use muster_protocol::node::{Heartbeat, HeartbeatReply};
use muster_protocol::paths;
use std::path::Path;

/// Seconds since the epoch by this host's clock (0 before it).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

/// The environment the hooks run with: `MUSTER_NODE_ID`, `MUSTER_ROLES`, `MUSTER_TLS_DIR`.
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

/// A client signing in to the state's coordinators with the host's certificate and key,
/// pinned to its HTTP CA.
pub fn client(root: &Path, st: &State, timeout: std::time::Duration) -> Result<Client> {
    client_as(root, st, timeout, None)
}

/// [`client`] signing in as `identity` rather than with the files on disk.
pub fn client_as(
    root: &Path,
    st: &State,
    timeout: std::time::Duration,
    identity: Option<ClientIdentity>,
) -> Result<Client> {
    let read = |f: File| {
        std::fs::read_to_string(f.path(root)).map_err(|e| {
            Failure::new(
                Exit::NotEnrolled,
                format!("reading {}: {e}", f.path(root).display()),
            )
        })
    };
    let pin = pin_of_pem(read(File::HttpCa)?.as_bytes()).ok_or_else(|| {
        Failure::new(
            Exit::Other,
            format!(
                "{} is not a PEM certificate",
                File::HttpCa.path(root).display()
            ),
        )
    })?;
    let id = match identity {
        Some(id) => id,
        None => ClientIdentity {
            cert_pem: read(File::NodeCert)?,
            key_pem: zeroize::Zeroizing::new(read(File::NodeKey)?),
        },
    };
    Client::new(st.coordinators.clone(), vec![pin], Some(&id), timeout)
}

/// Whether the coordinator still takes the enrollment whose files `path` gives (a heartbeat
/// with them answered, within ten seconds).
pub async fn still_registered(path: &dyn Fn(File) -> std::path::PathBuf) -> bool {
    let read = |f: File| std::fs::read_to_string(path(f)).ok();
    let (Some(state), Some(ca), Some(cert), Some(key)) = (
        read(File::State),
        read(File::HttpCa),
        read(File::NodeCert),
        read(File::NodeKey).map(zeroize::Zeroizing::new),
    ) else {
        return false;
    };
    let Ok(st) = serde_json::from_str::<State>(&state) else {
        return false;
    };
    let Some(pin) = pin_of_pem(ca.as_bytes()) else {
        return false;
    };
    let id = ClientIdentity {
        cert_pem: cert,
        key_pem: key,
    };
    let Ok(mut c) = Client::new(
        st.coordinators,
        vec![pin],
        Some(&id),
        std::time::Duration::from_secs(10),
    ) else {
        return false;
    };
    c.post::<_, HeartbeatReply>(paths::HEARTBEAT, &Heartbeat::default())
        .await
        .is_ok()
}

/// The SPKI pin of a CA certificate in PEM.
pub fn pin_of_pem(pem: &[u8]) -> Option<String> {
    muster_protocol::cert::pem_to_der(pem)
        .and_then(|der| muster_protocol::cert::spki_pin_of_cert(&der))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // The one given is not tried twice when the token names it too.
        assert_eq!(
            coordinator_list(Some(" https://c1:12443 "), &t),
            vec!["c1:12443", "c2:12443"]
        );
    }

    #[test]
    fn hooks_are_told_the_node_its_roles_and_tls_folder() {
        let st = State {
            node_id: Some("n-1".into()),
            roles: vec![
                muster_protocol::Role::Coordinator,
                muster_protocol::Role::Proxy,
            ],
            ..State::new(crate::state::Stage::Committed)
        };
        let env = hook_env(Path::new("/r"), &st);
        assert_eq!(
            env,
            vec![
                ("MUSTER_NODE_ID", "n-1".to_string()),
                ("MUSTER_ROLES", "coordinator,proxy".to_string()),
                ("MUSTER_TLS_DIR", "/r/etc/muster/tls".to_string()),
            ]
        );
        // No node id yet: an empty one, not a missing variable.
        let env = hook_env(Path::new("/"), &State::new(crate::state::Stage::Keys));
        assert_eq!(env[0], ("MUSTER_NODE_ID", String::new()));
    }

    #[test]
    fn a_pin_needs_a_pem_certificate() {
        assert_eq!(pin_of_pem(b"not a certificate"), None);
        assert_eq!(pin_of_pem(b""), None);
    }
}
