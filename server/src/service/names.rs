//! The names and addresses no ordinary host is certified for: what each coordinator answers
//! on (its serving certificate names them), and the addresses registered hosts hold (another
//! host's certificate would stand in for theirs).

use crate::pki;
use crate::store::{HostRecord, Store};
use muster_protocol::node::HostFacts;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

/// How often a coordinator reads every registered host's addresses again, in seconds. Between
/// two reads it knows the hosts it committed itself; another coordinator's are seen at the
/// next read.
pub const ADDRESSES_EVERY: u64 = 30;

/// The names and addresses reserved from hosts' certificates, as this coordinator knows them.
pub struct Names {
    store: Arc<dyn Store>,
    /// This coordinator's id among the platform's coordinators: the hex SPKI SHA-256 of the key
    /// in its data folder.
    coordinator_id: String,
    advertise: Vec<String>,
    /// What this coordinator answers on ([`local_names`]): its serving certificate names
    /// them, and no host without the coordinator role is certified for them. Read again each
    /// sweep ([`Names::reread`]): addresses come and go with DHCP and interfaces.
    own: RwLock<Vec<String>>,
    /// The names as last read, when they differed from `own`: a change is taken once two
    /// reads in a row agree, so one odd read (an interface list that failed, an address
    /// flapping during a DHCP renewal) changes nothing.
    seen: Mutex<Option<Vec<String>>>,
    /// The names no host without the coordinator role is certified for, as SAN keys
    /// (`pki::san_key_of_name`): this coordinator's own, and what every coordinator of the
    /// platform published, as last read from the store.
    reserved: RwLock<HashSet<String>>,
    /// The addresses registered hosts hold, with the names of the hosts holding each: no other
    /// host is certified for one. Read from the store every [`ADDRESSES_EVERY`] seconds and
    /// kept up to date with this coordinator's own commits.
    addresses: RwLock<HostAddresses>,
}

impl Names {
    pub fn new(store: Arc<dyn Store>, coordinator_id: String, advertise: Vec<String>) -> Names {
        let own = local_names(&advertise);
        let reserved = own.iter().map(|n| pki::san_key_of_name(n)).collect();
        Names {
            store,
            coordinator_id,
            advertise,
            own: RwLock::new(own),
            seen: Mutex::new(None),
            reserved: RwLock::new(reserved),
            addresses: Default::default(),
        }
    }

    /// What this coordinator answers on, as last read.
    pub fn own(&self) -> Vec<String> {
        self.own.read().map(|n| n.clone()).unwrap_or_default()
    }

    /// Reads this coordinator's names again (an address from DHCP, a new interface, a renamed
    /// host) and, when they changed, keeps and publishes them; whether they changed. The
    /// serving certificate follows at once ([`crate::serve::ServingCert::renew_if_due`]).
    pub async fn reread(&self) -> anyhow::Result<bool> {
        self.read(local_names(&self.advertise)).await
    }

    /// Takes `read` as this coordinator's names if the read before it said the same.
    pub async fn read(&self, read: Vec<String>) -> anyhow::Result<bool> {
        let confirmed = {
            let mut seen = self
                .seen
                .lock()
                .map_err(|_| anyhow::anyhow!("names lock poisoned"))?;
            if same_names(&self.own(), &read) {
                *seen = None;
                return Ok(false);
            }
            let confirmed = seen.as_ref().is_some_and(|s| same_names(s, &read));
            *seen = (!confirmed).then(|| read.clone());
            confirmed
        };
        if !confirmed {
            return Ok(false);
        }
        self.set_own(read).await
    }

    /// Takes `names` as this coordinator's and publishes them; whether they changed.
    pub async fn set_own(&self, names: Vec<String>) -> anyhow::Result<bool> {
        let before = {
            let mut current = self
                .own
                .write()
                .map_err(|_| anyhow::anyhow!("own names lock poisoned"))?;
            if same_names(&current, &names) {
                return Ok(false);
            }
            tracing::info!(names = ?names, "this coordinator's names changed");
            std::mem::replace(&mut *current, names)
        };
        if let Err(e) = self.publish().await {
            // Kept as they were, so the next sweep sees the change again and tries again.
            if let Ok(mut current) = self.own.write() {
                *current = before;
            }
            return Err(e.context("publishing this coordinator's new names"));
        }
        Ok(true)
    }

    /// Publishes this coordinator's names in the store, under the id of its serving key, for
    /// the platform's other coordinators to keep from ordinary hosts' certificates.
    pub async fn publish(&self) -> anyhow::Result<()> {
        self.store
            .publish_names(&self.coordinator_id, &self.own())
            .await?;
        self.refresh().await
    }

    /// Reads again what every coordinator published.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let published = self.store.coordinator_names().await?;
        let reserved = self
            .own()
            .iter()
            .chain(&published)
            .map(|n| pki::san_key_of_name(n))
            .collect();
        if let Ok(mut r) = self.reserved.write() {
            *r = reserved;
        }
        Ok(())
    }

    /// Whether a SAN key (`pki::san_key`) names a coordinator.
    pub fn reserved(&self, san_key: &str) -> bool {
        self.reserved
            .read()
            .map(|r| r.contains(san_key))
            .unwrap_or(false)
    }

    /// Reads again which addresses the registered hosts hold, if the last read is older than
    /// [`ADDRESSES_EVERY`] at `at` (or `force` asks for it).
    pub async fn refresh_addresses(&self, at: u64, force: bool) -> anyhow::Result<()> {
        let due = self
            .addresses
            .read()
            .map(|a| force || a.read_at.is_none_or(|t| at >= t + ADDRESSES_EVERY))
            .unwrap_or(true);
        if !due {
            return Ok(());
        }
        let mut fresh = HostAddresses {
            read_at: Some(at),
            ..Default::default()
        };
        for host in &self.store.host_addresses().await? {
            fresh.add(host);
        }
        if let Ok(mut a) = self.addresses.write() {
            *a = fresh;
        }
        Ok(())
    }

    /// Records the addresses of a host this coordinator just registered.
    pub fn registered(&self, host: &HostFacts) {
        if let Ok(mut a) = self.addresses.write() {
            a.add(host);
        }
    }

    /// Gives back the addresses of a host no longer registered (another coordinator sees that
    /// at its next read).
    pub fn forget_addresses(&self, gone: &HostRecord) {
        if let Ok(mut a) = self.addresses.write() {
            a.forget(&gone.host.hostname);
        }
    }

    /// Whether `ip` is held by a registered host other than one named `hostname` (which keeps
    /// its own: a renewal, a rebuilt host replacing its old record).
    pub fn address_taken(&self, ip: &IpAddr, hostname: &str) -> bool {
        self.addresses
            .read()
            .map(|a| a.taken(ip, hostname))
            .unwrap_or(false)
    }
}

/// The names and addresses this coordinator answers on: loopback, its host name, the addresses
/// of its network interfaces (as the installer reports a host's), and the hosts it advertises.
/// Its serving certificate names them all, so an admin's
/// `curl https://COORDINATOR_HOST_IP:12443/…` checks; no other host is certified for them.
pub fn local_names(advertise: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = nix::unistd::gethostname() {
        names.extend(h.into_string().ok());
    }
    names.extend(
        muster_protocol::addr::interface_addresses()
            .iter()
            .map(|ip| ip.to_string()),
    );
    for a in advertise {
        names.push(pki::host_of_address(a).to_string());
    }
    let mut seen = HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// The addresses registered hosts hold, each with the name of the host that holds it: the
/// first registered of those that report it (the others were certified without it).
#[derive(Default)]
struct HostAddresses {
    read_at: Option<u64>,
    by_address: HashMap<IpAddr, String>,
}

impl HostAddresses {
    /// Records `host`'s addresses that no host holds yet, leaving out those that name no one
    /// host: loopback, link-local and unspecified addresses are every host's.
    fn add(&mut self, host: &HostFacts) {
        for ip in host
            .addresses
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok())
        {
            if unique_address(&ip) {
                self.by_address
                    .entry(ip)
                    .or_insert_with(|| host.hostname.clone());
            }
        }
    }

    fn forget(&mut self, hostname: &str) {
        self.by_address.retain(|_, holder| holder != hostname);
    }

    fn taken(&self, ip: &IpAddr, hostname: &str) -> bool {
        self.by_address
            .get(ip)
            .is_some_and(|holder| !holder.eq_ignore_ascii_case(hostname))
    }
}

/// Whether `ip` can name one host: not loopback, link-local or unspecified.
fn unique_address(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Whether two lists hold the same names, in any order.
fn same_names(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|n| b.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, addresses: &[&str]) -> HostFacts {
        HostFacts {
            hostname: name.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            memory_mb: 0,
            zone: String::new(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn the_first_host_to_report_an_address_holds_it_until_it_goes() {
        let mut a = HostAddresses::default();
        a.add(&host(
            "alpha",
            &["10.0.0.1", "127.0.0.1", "fe80::1", "0.0.0.0"],
        ));
        a.add(&host("beta", &["10.0.0.1", "10.0.0.2"]));
        assert!(a.taken(&ip("10.0.0.1"), "beta"));
        assert!(
            !a.taken(&ip("10.0.0.1"), "ALPHA"),
            "a holder keeps its own, in any case"
        );
        assert!(!a.taken(&ip("10.0.0.2"), "beta"));
        assert!(a.taken(&ip("10.0.0.2"), "alpha"));
        for everyones in ["127.0.0.1", "fe80::1", "0.0.0.0"] {
            assert!(
                !a.taken(&ip(everyones), "beta"),
                "{everyones} names no one host"
            );
        }
        a.forget("alpha");
        assert!(!a.taken(&ip("10.0.0.1"), "beta"));
    }

    #[test]
    fn names_are_the_same_in_any_order() {
        let v = |s: &[&str]| s.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(same_names(&v(&["a", "b"]), &v(&["b", "a"])));
        assert!(!same_names(&v(&["a", "b"]), &v(&["a"])));
        assert!(!same_names(&v(&["a", "b"]), &v(&["a", "c"])));
    }

    #[test]
    fn a_coordinator_answers_on_loopback_and_what_it_advertises() {
        let names = local_names(&["coord.example:12443".into(), "localhost:1".into()]);
        for n in ["localhost", "127.0.0.1", "::1", "coord.example"] {
            assert!(names.contains(&n.to_string()), "{n} in {names:?}");
        }
        assert_eq!(names.iter().filter(|n| *n == "localhost").count(), 1);
    }
}
