//! Per-source failure budgets: failed admin logins and refused roles tokens, each counted per
//! client address over a one-minute window. A source over its budget is refused at once
//! (`429`) until its window ends, whatever it sends, so guessing cannot go faster than the
//! budget; other sources are not affected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Window length in seconds.
const WINDOW: u64 = 60;
/// Above this many tracked sources, finished windows are dropped, so a flood of addresses
/// cannot grow the map without bound.
const PRUNE_ABOVE: usize = 4096;

/// The address a budget is kept for: an IPv4 address as it is (an IPv4-mapped IPv6 one as its
/// IPv4 address), an IPv6 address by its /64, the least a single site or host is given: one
/// client must not get a fresh budget from every address of its own network.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

pub struct FailureLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl FailureLimiter {
    pub fn new(per_minute: u32) -> FailureLimiter {
        FailureLimiter {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds `source` must wait, if it has used up its budget in the current window.
    pub fn blocked(&self, source: IpAddr, now: u64) -> Option<u64> {
        let map = self.windows.lock().ok()?;
        match map.get(&source_of(source)) {
            Some((start, n)) if now < start + WINDOW && *n >= self.per_minute => {
                Some(start + WINDOW - now)
            }
            _ => None,
        }
    }

    /// Counts one failure from `source`.
    pub fn failed(&self, source: IpAddr, now: u64) {
        let Ok(mut map) = self.windows.lock() else {
            return;
        };
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, (start, _)| now < *start + WINDOW);
        }
        let entry = map.entry(source_of(source)).or_insert((now, 0));
        if now >= entry.0 + WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.windows.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// Things (handshakes, open connections) in flight per source address, up to a limit.
pub struct PerSource {
    limit: usize,
    pub(crate) map: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One slot of a source; given back when dropped.
pub struct Slot {
    map: std::sync::Arc<PerSource>,
    ip: std::net::IpAddr,
}

impl PerSource {
    pub fn new(limit: usize) -> PerSource {
        PerSource {
            limit,
            map: Default::default(),
        }
    }

    pub fn take(self: &std::sync::Arc<Self>, ip: std::net::IpAddr) -> Option<Slot> {
        let ip = source_of(ip);
        let mut m = self.map.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            map: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.map.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_network_is_one_source() {
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0u8; 4]));
        assert_eq!(source_of(v6("2001:db8:1:2:aaaa::1")), v6("2001:db8:1:2::"));
        assert_eq!(source_of(v6("::ffff:192.0.2.7")), v6("192.0.2.7"));
        assert_eq!(source_of(v6("192.0.2.7")), v6("192.0.2.7"));
        let l = FailureLimiter::new(2);
        l.failed(v6("2001:db8:1:2::1"), 0);
        l.failed(v6("2001:db8:1:2::2"), 0);
        assert!(l.blocked(v6("2001:db8:1:2::3"), 1).is_some(), "same /64");
        assert!(l.blocked(v6("2001:db8:1:3::1"), 1).is_none(), "another /64");
    }

    #[test]
    fn a_source_over_budget_waits_out_its_window_and_others_do_not() {
        let l = FailureLimiter::new(3);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..3 {
            assert_eq!(l.blocked(a, 100), None);
            l.failed(a, 100);
        }
        assert_eq!(l.blocked(a, 100), Some(60));
        assert_eq!(l.blocked(a, 159), Some(1));
        assert_eq!(l.blocked(b, 120), None);
        assert_eq!(l.blocked(a, 160), None);
        l.failed(a, 160);
        assert_eq!(l.blocked(a, 161), None, "a new window starts from zero");
    }

    #[test]
    fn many_sources_do_not_grow_the_map_without_bound() {
        let l = FailureLimiter::new(3);
        for i in 0..(PRUNE_ABOVE as u32 * 3) {
            // Each source fails once, a minute after the previous batch.
            let now = u64::from(i / 1000) * 61;
            l.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(l.tracked() <= PRUNE_ABOVE + 1001, "{}", l.tracked());
    }
}
