//! The host registry as the API shows it: ECE's allocators and runners, roles granted and
//! pending, what a host may say about itself, and which record a host may replace.

use crate::error::ApiError;
use crate::store::HostRecord;
use muster_protocol::api::*;
use muster_protocol::node::HostFacts;
use muster_protocol::{ErrorCode, Role};
use std::net::IpAddr;

/// The most memory a host may report, in MiB (2 PiB, what ECE's 32-bit `capacity.memory`
/// holds): figures a node sends are checked, so a hostile one cannot put 2^64−1 into the
/// registry and every sum over it.
pub const MAX_MEMORY_MB: u64 = i32::MAX as u64;

/// Checks a host's self-description: a DNS-shaped hostname, IP literals, a sane zone.
pub fn check_facts(h: &HostFacts) -> Result<(), ApiError> {
    if h.memory_mb > MAX_MEMORY_MB {
        return Err(ApiError::new(
            ErrorCode::RequestInvalid,
            format!("host.memory_mb must be at most {MAX_MEMORY_MB}"),
        ));
    }
    if !muster_protocol::addr::is_dns_name(&h.hostname) {
        return Err(ApiError::new(
            ErrorCode::RequestInvalid,
            "host.hostname must be a DNS name (letters, digits, '-', '.')",
        ));
    }
    if h.addresses.len() > 32 || h.addresses.iter().any(|a| a.parse::<IpAddr>().is_err()) {
        return Err(ApiError::new(
            ErrorCode::RequestInvalid,
            "host.addresses must be at most 32 IP addresses",
        ));
    }
    if h.zone.len() > 64
        || !h
            .zone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(ApiError::new(
            ErrorCode::RequestInvalid,
            "host.zone must be at most 64 of [A-Za-z0-9._-]",
        ));
    }
    Ok(())
}

/// How registered hosts look at one moment: connected when heard from within the timeout,
/// in the default zone when they named none.
pub struct View<'a> {
    pub now: u64,
    pub heartbeat_timeout: u64,
    pub default_zone: &'a str,
}

impl View<'_> {
    pub fn connected(&self, h: &HostRecord) -> bool {
        self.now <= h.last_heartbeat + self.heartbeat_timeout
    }

    fn zone_of(&self, h: &HostRecord) -> String {
        if h.host.zone.is_empty() {
            self.default_zone.to_string()
        } else {
            h.host.zone.clone()
        }
    }

    /// An allocator as ECE shows it; `None` for a host without the allocator role.
    pub fn allocator(&self, h: &HostRecord) -> Option<AllocatorInfo> {
        if !h.roles.contains(&Role::Allocator) {
            return None;
        }
        let conn = self.connected(h);
        Some(AllocatorInfo {
            allocator_id: h.node_id.clone(),
            zone_id: self.zone_of(h),
            host_ip: host_ip(h),
            public_hostname: h.host.hostname.clone(),
            status: HostStatus {
                connected: conn,
                healthy: conn,
                maintenance_mode: false,
                last_heartbeat: h.last_heartbeat,
                agent_version: h.agent_version.clone(),
            },
            capacity: Capacity {
                memory: Memory {
                    total: h.host.memory_mb,
                    used: h.memory_used_mb,
                },
                storage: Storage { total: 0, used: 0 },
            },
            instances: vec![],
            settings: Default::default(),
            metadata: vec![],
            features: vec![],
            external_links: vec![],
        })
    }

    /// A runner as ECE shows it.
    pub fn runner(&self, h: &HostRecord) -> RunnerInfo {
        let conn = self.connected(h);
        RunnerInfo {
            runner_id: h.node_id.clone(),
            public_hostname: h.host.hostname.clone(),
            host_ip: host_ip(h),
            connected: conn,
            healthy: conn,
            containers: vec![],
            roles: h
                .roles
                .iter()
                .map(|r| RunnerRole { role_name: *r })
                .collect(),
            zone: self.zone_of(h),
            pending_roles: h.pending_roles.clone(),
            token_id: h.token_id.clone(),
            last_heartbeat: h.last_heartbeat,
            agent_version: h.agent_version.clone(),
            certificate_not_after: h.cert_not_after,
        }
    }
}

/// The version in an agent's `User-Agent` (`muster/0.1.0`, as every Muster agent sends):
/// at most 32 of `[0-9A-Za-z.+-]`, starting with a digit. Anything else names no version.
pub fn agent_version(user_agent: &str) -> Option<String> {
    let v = user_agent.strip_prefix("muster/")?;
    let v = v.split_whitespace().next()?;
    let ok = v.len() <= 32
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'+' || b == b'-');
    ok.then(|| v.to_string())
}

fn host_ip(h: &HostRecord) -> String {
    h.host.addresses.first().cloned().unwrap_or_default()
}

/// Allocators grouped by zone, the zones in the order their first allocator comes.
pub fn zones(allocators: Vec<AllocatorInfo>) -> Vec<AllocatorZone> {
    let mut zones: Vec<AllocatorZone> = vec![];
    for a in allocators {
        match zones.iter_mut().find(|z| z.zone_id == a.zone_id) {
            Some(z) => z.allocators.push(a),
            None => zones.push(AllocatorZone {
                zone_id: a.zone_id.clone(),
                allocators: vec![a],
            }),
        }
    }
    zones
}

/// A host's roles, granted and pending, once an operator set them to `asked`. Blessed (the
/// default, `bless=true`), the roles are granted and no longer pending; unblessed
/// (`bless=false`), only those of them the host already had stay granted and the rest wait,
/// pending, for a blessing.
pub fn roles_set(host: &HostRecord, asked: Vec<Role>, bless: bool) -> (Vec<Role>, Vec<Role>) {
    if bless {
        let pending = host
            .pending_roles
            .iter()
            .copied()
            .filter(|r| !asked.contains(r))
            .collect();
        (asked, pending)
    } else {
        let granted = host
            .roles
            .iter()
            .copied()
            .filter(|r| asked.contains(r))
            .collect::<Vec<_>>();
        let pending = asked
            .iter()
            .copied()
            .filter(|r| !granted.contains(r))
            .collect();
        (granted, pending)
    }
}

/// The refusal of a join or commit that would replace `old` without all its roles.
pub fn replace_refused(old: &HostRecord) -> ApiError {
    ApiError::new(
        ErrorCode::HostReplaceRoles,
        format!(
            "a host named {} is registered with roles [{}] this join does not grant; use a token that grants them, or remove that host first",
            old.host.hostname,
            muster_protocol::role::join(&old.roles)
        ),
    )
}

/// The transport and HTTP pair among a host's serials that `serial` belongs to.
pub fn pair_of(serials: &[String], serial: &str) -> Vec<String> {
    serials
        .chunks(2)
        .find(|pair| pair.iter().any(|s| s == serial))
        .map(<[String]>::to_vec)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_version_is_read_from_its_user_agent_and_nothing_else() {
        assert_eq!(agent_version("muster/0.1.0"), Some("0.1.0".into()));
        assert_eq!(
            agent_version("muster/1.2.3-rc.1+g1 (agent)"),
            Some("1.2.3-rc.1+g1".into())
        );
        for odd in [
            "curl/8.0",
            "muster/",
            "muster/latest",
            "muster/1.0<script>",
            "muster/1.0\u{1b}[31m",
            "MUSTER/1.0",
            &format!("muster/1{}", "0".repeat(40)),
        ] {
            assert_eq!(agent_version(odd), None, "{odd:?}");
        }
    }

    fn facts() -> HostFacts {
        HostFacts {
            hostname: "alloc-1.example".into(),
            addresses: vec!["10.0.0.1".into()],
            memory_mb: 1024,
            zone: "zone-a".into(),
        }
    }

    fn record(roles: &[Role], pending: &[Role]) -> HostRecord {
        let mut h = HostRecord {
            node_id: "n1".into(),
            token_id: "t1".into(),
            host: HostFacts {
                hostname: "alloc-1".into(),
                addresses: vec!["10.0.0.1".into(), "10.0.0.2".into()],
                memory_mb: 0,
                zone: String::new(),
            },
            roles: vec![],
            pending_roles: vec![],
            spki_der: vec![],
            serials: ["a", "b", "c", "d"].map(String::from).to_vec(),
            cert_not_after: 0,
            registered_at: 1,
            last_heartbeat: 100,
            memory_used_mb: 5,
            agent_version: None,
        };
        h.roles = roles.to_vec();
        h.pending_roles = pending.to_vec();
        h
    }

    #[test]
    fn a_host_may_describe_itself_only_within_bounds() {
        assert!(check_facts(&facts()).is_ok());
        let bad = [
            HostFacts {
                memory_mb: MAX_MEMORY_MB + 1,
                ..facts()
            },
            HostFacts {
                hostname: "<script>".into(),
                ..facts()
            },
            HostFacts {
                addresses: vec!["not-an-ip".into()],
                ..facts()
            },
            HostFacts {
                addresses: vec!["10.0.0.1".into(); 33],
                ..facts()
            },
            HostFacts {
                zone: "a zone".into(),
                ..facts()
            },
            HostFacts {
                zone: "z".repeat(65),
                ..facts()
            },
        ];
        for h in bad {
            assert_eq!(
                check_facts(&h).err().map(|e| e.code),
                Some(ErrorCode::RequestInvalid),
                "{h:?}"
            );
        }
    }

    #[test]
    fn blessed_roles_are_granted_and_unblessed_ones_wait() {
        use Role::*;
        let h = record(&[Allocator], &[Proxy, Director]);
        assert_eq!(
            roles_set(&h, vec![Allocator, Proxy], true),
            (vec![Allocator, Proxy], vec![Director])
        );
        assert_eq!(
            roles_set(&h, vec![Allocator, Proxy], false),
            (vec![Allocator], vec![Proxy])
        );
        assert_eq!(roles_set(&h, vec![], false), (vec![], vec![]));
    }

    #[test]
    fn a_host_is_connected_while_its_heartbeats_are_recent() {
        let h = record(&[Role::Allocator], &[]);
        let view = |now| View {
            now,
            heartbeat_timeout: 30,
            default_zone: "default",
        };
        assert!(view(130).connected(&h));
        assert!(!view(131).connected(&h));
        let a = view(100)
            .allocator(&h)
            .unwrap_or_else(|| panic!("an allocator"));
        assert_eq!(
            (a.zone_id.as_str(), a.host_ip.as_str()),
            ("default", "10.0.0.1")
        );
        assert!(view(100).allocator(&record(&[Role::Proxy], &[])).is_none());
        let r = view(200).runner(&h);
        assert!(!r.connected && !r.healthy);
        assert_eq!(pair_of(&h.serials, "c"), ["c", "d"]);
        assert!(pair_of(&h.serials, "x").is_empty());
    }
}
