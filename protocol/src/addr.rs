//! Coordinator addresses as people write them: `host:port`, `host`, `[v6]:port`, `[v6]` or a
//! bare IPv6 address (whose colons are not a port).

/// The addresses of this host's network interfaces, each once, in the kernel's order; link-local
/// IPv6 ones left out (meaningless without a scope, which no URL or certificate carries).
#[cfg(feature = "net")]
pub fn interface_addresses() -> Vec<std::net::IpAddr> {
    let mut out: Vec<std::net::IpAddr> = Vec::new();
    let Ok(ifs) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for i in ifs {
        let Some(addr) = i.address else { continue };
        let ip = match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
            (Some(v4), _) => std::net::IpAddr::V4(v4.ip()),
            (_, Some(v6)) if v6.ip().segments()[0] & 0xffc0 != 0xfe80 => {
                std::net::IpAddr::V6(v6.ip())
            }
            _ => continue,
        };
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// The host (without brackets) and the port, if one is given.
pub fn split(addr: &str) -> (&str, Option<u16>) {
    let addr = addr.trim();
    if let Some(rest) = addr.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (rest, None),
        };
    }
    match addr.rsplit_once(':') {
        // One colon: host and port. More: a bare IPv6 address.
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (addr, None),
        },
        _ => (addr, None),
    }
}

/// `host:port` with the default port when none is given; an IPv6 host in brackets.
/// Whether `name` is DNS-shaped: dot-separated labels of 1 to 63 letters, digits and `-`, 253
/// characters at most.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Checks an address given as `host[:port]`: a DNS name or an IP literal (IPv6 in brackets
/// when a port follows), and a port from 1 to 65535. Says what is wrong.
pub fn check_host_port(addr: &str) -> Result<(), String> {
    let (host, port) = split(addr);
    if let Some((h, p)) = host.rsplit_once(':') {
        if !h.contains(':') {
            return Err(format!(
                "{addr:?}: port {p:?} is not a number from 1 to 65535"
            ));
        }
    }
    if port == Some(0) {
        return Err(format!("{addr:?}: port 0 is not a number from 1 to 65535"));
    }
    if host.parse::<std::net::IpAddr>().is_ok() || is_dns_name(host) {
        Ok(())
    } else {
        Err(format!(
            "{addr:?}: {host:?} is neither a DNS name nor an IP address"
        ))
    }
}

pub fn with_port(addr: &str, default: u16) -> String {
    let (host, port) = split(addr);
    let port = port.unwrap_or(default);
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_are_checked_by_part() {
        for ok in [
            "c1.example.net:12443",
            "10.0.0.1:1",
            "[2001:db8::1]:65535",
            "c1",
            "2001:db8::1",
        ] {
            assert_eq!(check_host_port(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("not a host", "neither"),
            ("c1:99999", "port \"99999\""),
            ("c1:0", "port 0"),
            ("c1:http", "port \"http\""),
            ("", "neither"),
        ] {
            let e = check_host_port(bad).err().unwrap_or_default();
            assert!(!e.is_empty() && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn reads_every_way_of_writing_an_address() {
        assert_eq!(split("c1.example:9443"), ("c1.example", Some(9443)));
        assert_eq!(split("c1.example"), ("c1.example", None));
        assert_eq!(split("10.0.0.1:12443"), ("10.0.0.1", Some(12443)));
        assert_eq!(split("[2001:db8::1]:9443"), ("2001:db8::1", Some(9443)));
        assert_eq!(split("[2001:db8::1]"), ("2001:db8::1", None));
        assert_eq!(split("2001:db8::1"), ("2001:db8::1", None), "not port 1");
        assert_eq!(split("c1:notaport"), ("c1:notaport", None));
        assert_eq!(with_port("2001:db8::1", 12443), "[2001:db8::1]:12443");
        assert_eq!(with_port("[2001:db8::1]:9443", 12443), "[2001:db8::1]:9443");
        assert_eq!(with_port("c1", 12443), "c1:12443");
        assert_eq!(with_port("c1:1", 12443), "c1:1");
    }
}
