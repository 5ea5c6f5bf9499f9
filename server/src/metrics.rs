//! The coordinator's metrics (`GET /metrics`), kept and written by `prometheus-client` in the
//! OpenMetrics text format Prometheus scrapes: counters (refusals by error code, enrolled hosts
//! by role), latency histograms of the node protocol's steps, gauges of the registry, and
//! build info.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::time::Duration;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub step: String,
}

/// The registry as `/metrics` shows it, counted when scraped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Registered {
    pub hosts: usize,
    /// Hosts heard from within the heartbeat timeout.
    pub connected: usize,
    /// The earliest `not_after` of the hosts' certificates, seconds since the epoch.
    pub earliest_expiry: Option<u64>,
}

/// What a coordinator counts. Each service adds to its own metrics through a shared
/// `Arc<Metrics>`; `/metrics` writes them all.
pub struct Metrics {
    pub joins: Counter,
    pub commits: Counter,
    /// Hosts registered, by each role they were granted.
    pub enrolled: Family<RoleLabel, Counter>,
    /// Refused roles tokens, by error code.
    pub refusals: Family<CodeLabel, Counter>,
    pub heartbeats: Counter,
    pub renewals: Counter,
    pub tokens_created: Counter,
    pub login_failures: Counter,
    pub reservations_expired: Counter,
    /// How long each step of the node protocol took to answer, by step.
    steps: Family<StepLabel, Histogram>,
    store_retries: Counter,
    hosts: Gauge,
    connected: Gauge,
    earliest_expiry: Gauge,
    registry: Registry,
    /// Keeps two scrapes from bringing `store_retries` up to the store's count twice.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let steps = Family::<StepLabel, Histogram>::new_with_constructor(|| {
            // 0.5 ms to 4 s, doubling.
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        let m = Metrics {
            joins: Counter::default(),
            commits: Counter::default(),
            enrolled: Family::default(),
            refusals: Family::default(),
            heartbeats: Counter::default(),
            renewals: Counter::default(),
            tokens_created: Counter::default(),
            login_failures: Counter::default(),
            reservations_expired: Counter::default(),
            steps,
            store_retries: Counter::default(),
            hosts: Gauge::default(),
            connected: Gauge::default(),
            earliest_expiry: Gauge::default(),
            registry: Registry::default(),
            scrape: Mutex::new(()),
        };
        let mut r = Registry::default();
        r.register("muster_joins", "Join reservations made", m.joins.clone());
        r.register(
            "muster_commits",
            "Joins committed (hosts registered)",
            m.commits.clone(),
        );
        r.register(
            "muster_enrolled",
            "Hosts registered, by each role granted",
            m.enrolled.clone(),
        );
        r.register(
            "muster_refusals",
            "Roles tokens refused, by error code",
            m.refusals.clone(),
        );
        r.register(
            "muster_heartbeats",
            "Heartbeats received",
            m.heartbeats.clone(),
        );
        r.register(
            "muster_renewals",
            "Certificate renewals",
            m.renewals.clone(),
        );
        r.register(
            "muster_tokens_created",
            "Roles tokens created",
            m.tokens_created.clone(),
        );
        r.register(
            "muster_login_failures",
            "Failed admin logins",
            m.login_failures.clone(),
        );
        r.register(
            "muster_reservations_expired",
            "Joins expired uncommitted",
            m.reservations_expired.clone(),
        );
        r.register(
            "muster_step_seconds",
            "Time to answer each step of the node protocol (join, commit, renew, heartbeat)",
            m.steps.clone(),
        );
        r.register(
            "muster_store_retries",
            "Store writes that found their records changed and went round again",
            m.store_retries.clone(),
        );
        r.register("muster_hosts", "Registered hosts", m.hosts.clone());
        r.register(
            "muster_hosts_connected",
            "Registered hosts heard from within the heartbeat timeout",
            m.connected.clone(),
        );
        r.register(
            "muster_certificate_earliest_expiry_seconds",
            "The earliest expiry of the hosts' certificates, seconds since the epoch (absent with no host)",
            m.earliest_expiry.clone(),
        );
        r.register(
            "muster_build",
            "The musterd build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics { registry: r, ..m }
    }

    /// Counts a refused token by its error code.
    pub fn refused(&self, code: &str) {
        self.refusals
            .get_or_create(&CodeLabel { code: code.into() })
            .inc();
    }

    /// Counts a host registered with `roles`.
    pub fn enrolled<'a>(&self, roles: impl IntoIterator<Item = &'a str>) {
        for role in roles {
            self.enrolled
                .get_or_create(&RoleLabel { role: role.into() })
                .inc();
        }
    }

    /// Records how long a step of the node protocol took to answer.
    pub fn step(&self, step: &str, took: Duration) {
        self.steps
            .get_or_create(&StepLabel { step: step.into() })
            .observe(took.as_secs_f64());
    }

    /// Every metric as OpenMetrics text, with the store's retries and the registry as counted
    /// now (`None` when the store could not be read: the gauges then keep their last values).
    pub fn render(&self, store_retries: u64, registered: Option<Registered>) -> String {
        let _one = self.scrape.lock();
        let have = self.store_retries.get();
        if store_retries > have {
            self.store_retries.inc_by(store_retries - have);
        }
        if let Some(r) = registered {
            let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.hosts.set(gauge(r.hosts as u64));
            self.connected.set(gauge(r.connected as u64));
            self.earliest_expiry.set(r.earliest_expiry.map_or(0, gauge));
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            tracing::error!("could not write the metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_as_openmetrics_with_labels_histograms_and_the_registry() {
        let m = Metrics::new();
        m.joins.inc();
        m.joins.inc();
        m.refused("token.revoked");
        m.refused("token.revoked");
        m.refused("token.invalid");
        m.enrolled(["allocator", "proxy"]);
        m.step("join", Duration::from_millis(3));
        let registered = Registered {
            hosts: 7,
            connected: 5,
            earliest_expiry: Some(1_900_000_000),
        };
        let text = m.render(3, Some(registered));
        for line in [
            "muster_joins_total 2",
            "muster_commits_total 0",
            "muster_store_retries_total 3",
            "muster_refusals_total{code=\"token.revoked\"} 2",
            "muster_refusals_total{code=\"token.invalid\"} 1",
            "muster_enrolled_total{role=\"proxy\"} 1",
            "muster_step_seconds_count{step=\"join\"} 1",
            "muster_step_seconds_bucket{le=\"0.004\",step=\"join\"} 1",
            "muster_step_seconds_bucket{le=\"0.002\",step=\"join\"} 0",
            "muster_hosts 7",
            "muster_hosts_connected 5",
            "muster_certificate_earliest_expiry_seconds 1900000000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        let build = format!(
            "muster_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.lines().any(|l| l == build), "{build:?} in\n{text}");
        assert!(text.ends_with("# EOF\n"));
        // The store's count is brought up to, never past, what the store says.
        let again = m.render(3, None);
        assert!(again.lines().any(|l| l == "muster_store_retries_total 3"));
        assert!(again.lines().any(|l| l == "muster_hosts 7"), "kept");
    }
}
