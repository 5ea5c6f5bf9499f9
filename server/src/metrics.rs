//! The coordinator's counters and their Prometheus text form (`GET /metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

/// What a coordinator counts. Each service adds to its own counters through a shared
/// `Arc<Metrics>`; `/metrics` reads them all.
#[derive(Default)]
pub struct Metrics {
    pub joins: AtomicU64,
    pub commits: AtomicU64,
    pub refusals: AtomicU64,
    pub heartbeats: AtomicU64,
    pub renewals: AtomicU64,
    pub tokens_created: AtomicU64,
    pub login_failures: AtomicU64,
    pub reservations_expired: AtomicU64,
}

impl Metrics {
    /// Adds one to `counter`.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in Prometheus' text format, the store's retries, and the registered hosts
    /// when they could be counted.
    pub fn render(&self, store_retries: u64, hosts: Option<usize>) -> String {
        let mut out = String::new();
        for (name, help, v) in [
            ("muster_joins_total", "Join reservations made.", &self.joins),
            (
                "muster_commits_total",
                "Joins committed (hosts registered).",
                &self.commits,
            ),
            ("muster_refusals_total", "Joins refused.", &self.refusals),
            (
                "muster_heartbeats_total",
                "Heartbeats received.",
                &self.heartbeats,
            ),
            (
                "muster_renewals_total",
                "Certificate renewals.",
                &self.renewals,
            ),
            (
                "muster_tokens_created_total",
                "Roles tokens created.",
                &self.tokens_created,
            ),
            (
                "muster_login_failures_total",
                "Failed admin logins.",
                &self.login_failures,
            ),
            (
                "muster_reservations_expired_total",
                "Joins expired uncommitted.",
                &self.reservations_expired,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "# HELP muster_store_retries_total Store writes that found their records changed and went round again.\n# TYPE muster_store_retries_total counter\nmuster_store_retries_total {store_retries}\n"
        ));
        if let Some(hosts) = hosts {
            out.push_str(&format!(
                "# HELP muster_hosts Registered hosts.\n# TYPE muster_hosts gauge\nmuster_hosts {hosts}\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text_with_the_hosts_when_known() {
        let m = Metrics::default();
        Metrics::count(&m.joins);
        Metrics::count(&m.joins);
        Metrics::count(&m.refusals);
        let text = m.render(3, Some(7));
        assert!(text.contains("\nmuster_store_retries_total 3\n"));
        assert!(text.contains("# TYPE muster_joins_total counter\nmuster_joins_total 2\n"));
        assert!(text.contains("\nmuster_refusals_total 1\n"));
        assert!(text.contains("\nmuster_commits_total 0\n"));
        assert!(text.ends_with("# TYPE muster_hosts gauge\nmuster_hosts 7\n"));
        assert!(!m.render(0, None).contains("muster_hosts"));
    }
}
