//! What a host says about itself: name, addresses, memory, zone. Read from the kernel, never
//! through NSS.

use muster_protocol::node::HostFacts;

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Addresses of the host's interfaces, loopback last (loopback only helps single-box setups).
pub fn addresses() -> Vec<String> {
    let mut out = muster_protocol::addr::interface_addresses();
    out.sort_by_key(|ip| ip.is_loopback());
    out.into_iter().map(|ip| ip.to_string()).collect()
}

/// Total memory in MiB from /proc/meminfo.
pub fn memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

pub fn gather(hostname_override: Option<&str>, zone: &str) -> HostFacts {
    HostFacts {
        // One name in any letter case, as the coordinator registers it.
        hostname: hostname_override
            .map(str::to_string)
            .unwrap_or_else(hostname)
            .to_ascii_lowercase(),
        addresses: addresses(),
        memory_mb: memory_mb(),
        zone: zone.to_string(),
    }
}
