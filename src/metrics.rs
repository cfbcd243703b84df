//! The controller's counters, one registry shared by the services (`fleet serve` makes one
//! `Arc<Metrics>` and hands it to DHCP, TFTP, the HTTP boot routes, the executor and both HTTP
//! listeners, as it hands them their sockets), rendered at `GET /metrics` in the Prometheus
//! text exposition format (0.0.4) by the Prometheus organisation's `prometheus-client` crate.
//!
//! Everything here is a counter or histogram bumped where the thing happens (atomics, no lock
//! on the hot paths but the families' read lock), except the machines per status: those are
//! read from the store at scrape time (one grouped query, [`Metrics::render`] takes its rows),
//! so they are never stale and cost nothing between scrapes.
//!
//! Label values come from fixed sets only (statuses, reply types, route templates, methods,
//! status classes): no MAC, address, machine name or raw path ever becomes a label, so a flood
//! of requests cannot grow the registry.

use crate::model::Status;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the request latency buckets: from a cached answer on loopback
/// (about a millisecond) to a slow store under load.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// How an apply's step ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StepOutcome {
    Done = 0,
    Failed = 1,
}

impl StepOutcome {
    fn label(self) -> &'static str {
        match self {
            StepOutcome::Done => "done",
            StepOutcome::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DhcpReplyLabels {
    r#type: &'static str,
}

/// The replies the DHCP server sends.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DhcpReply {
    Offer = 0,
    Ack = 1,
    Nak = 2,
}

impl DhcpReply {
    fn label(self) -> &'static str {
        match self {
            DhcpReply::Offer => "offer",
            DhcpReply::Ack => "ack",
            DhcpReply::Nak => "nak",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DhcpDropLabels {
    reason: &'static str,
}

/// Why a DHCP datagram got no reply (RELEASE and DECLINE get none by design and are not drops).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DhcpDrop {
    /// Not a DHCP request we can read (bad header, bad options, oversized).
    Malformed = 0,
    /// Read, and left unanswered: an ignored MAC, no subnet for it, the pool exhausted, a
    /// REQUEST for another server.
    Unanswered,
    /// A reply was made but could not be encoded or sent.
    Unsent = 2,
}

impl DhcpDrop {
    fn label(self) -> &'static str {
        match self {
            DhcpDrop::Malformed => "malformed",
            DhcpDrop::Unanswered => "unanswered",
            DhcpDrop::Unsent => "unsent",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: &'static str,
    /// The route's template (`/api/v1/machines/{name}`), never the raw path; `unmatched` for
    /// requests no route took.
    route: String,
    method: &'static str,
    /// `2xx`, `4xx` ...
    status: &'static str,
}

/// Which of the controller's two HTTP listeners answered.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Listener {
    /// The operator API (HTTPS).
    Api,
    /// The boot routes and the machine API (plain HTTP).
    Boot,
}

impl Listener {
    fn label(self) -> &'static str {
        match self {
            Listener::Api => "api",
            Listener::Boot => "boot",
        }
    }
}

/// One HTTP request as the latency histogram files it.
pub struct RequestObservation<'a> {
    pub listener: Listener,
    /// The matched route's template, `None` when no route matched.
    pub route: Option<&'a str>,
    pub method: &'a str,
    pub status: u16,
    /// Until the response's head was ready (a streamed body is not included).
    pub elapsed: Duration,
}

type HistogramMaker = fn() -> Histogram;

/// The controller's metrics registry.
pub struct Metrics {
    registry: Registry,
    machines: Family<StatusLabels, Gauge>,
    /// The counters of fixed label sets, held directly (one atomic add on the hot paths: a
    /// DHCP reply takes no lock nor hash), indexed by their enum's order.
    steps: [Counter; 2],
    dhcp_replies: [Counter; 3],
    dhcp_drops: [Counter; 3],
    tftp_bytes: Counter,
    http_boot_bytes: Counter,
    requests: Family<RequestLabels, Histogram, HistogramMaker>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Metrics { .. }")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

const STEP_OUTCOMES: [StepOutcome; 2] = [StepOutcome::Done, StepOutcome::Failed];
const DHCP_REPLIES: [DhcpReply; 3] = [DhcpReply::Offer, DhcpReply::Ack, DhcpReply::Nak];
const DHCP_DROPS: [DhcpDrop; 3] = [DhcpDrop::Malformed, DhcpDrop::Unanswered, DhcpDrop::Unsent];

impl Metrics {
    /// Every metric registered, with each fixed label value present from the start (a counter
    /// that has not moved reads 0, so `rate()` and alerts see it before its first event).
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fleet");
        let machines = Family::<StatusLabels, Gauge>::default();
        for status in Status::ALL {
            let _ = machines.get_or_create(&StatusLabels {
                status: status.as_str(),
            });
        }
        registry.register(
            "machines",
            "Machines in each life-cycle status (read from the store at scrape time)",
            machines.clone(),
        );
        let steps = Family::<OutcomeLabels, Counter>::default();
        let step_counters = STEP_OUTCOMES.map(|outcome| {
            steps.get_or_create_owned(&OutcomeLabels {
                outcome: outcome.label(),
            })
        });
        registry.register(
            "apply_steps",
            "Steps of applies that ended, by outcome",
            steps,
        );
        let replies = Family::<DhcpReplyLabels, Counter>::default();
        let reply_counters = DHCP_REPLIES.map(|reply| {
            replies.get_or_create_owned(&DhcpReplyLabels {
                r#type: reply.label(),
            })
        });
        registry.register(
            "dhcp_replies",
            "DHCP replies sent, by message type",
            replies,
        );
        let drops = Family::<DhcpDropLabels, Counter>::default();
        let drop_counters = DHCP_DROPS.map(|reason| {
            drops.get_or_create_owned(&DhcpDropLabels {
                reason: reason.label(),
            })
        });
        registry.register(
            "dhcp_drops",
            "DHCP datagrams that got no reply (RELEASE and DECLINE, which get none, excluded)",
            drops,
        );
        let tftp_bytes = Counter::default();
        registry.register(
            "tftp_sent_bytes",
            "TFTP payload bytes the clients acknowledged, counted as each transfer ends",
            tftp_bytes.clone(),
        );
        let http_boot_bytes = Counter::default();
        registry.register(
            "http_boot_sent_bytes",
            "Bytes of boot files (kernels, initrds, images, loaders) sent over HTTP",
            http_boot_bytes.clone(),
        );
        let requests: Family<RequestLabels, Histogram, HistogramMaker> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP requests until the response head, by listener, route template, method and status class",
            requests.clone(),
        );
        Metrics {
            registry,
            machines,
            steps: step_counters,
            dhcp_replies: reply_counters,
            dhcp_drops: drop_counters,
            tftp_bytes,
            http_boot_bytes,
            requests,
        }
    }

    /// A step of an apply ended.
    pub fn step_ended(&self, outcome: StepOutcome) {
        self.steps[outcome as usize].inc();
    }

    pub fn dhcp_replied(&self, reply: DhcpReply) {
        self.dhcp_replies[reply as usize].inc();
    }

    pub fn dhcp_dropped(&self, reason: DhcpDrop) {
        self.dhcp_drops[reason as usize].inc();
    }

    pub fn tftp_sent(&self, bytes: u64) {
        self.tftp_bytes.inc_by(bytes);
    }

    pub fn http_boot_sent(&self, bytes: u64) {
        self.http_boot_bytes.inc_by(bytes);
    }

    pub fn observe_request(&self, request: &RequestObservation<'_>) {
        let labels = RequestLabels {
            listener: request.listener.label(),
            route: request.route.unwrap_or("unmatched").to_string(),
            method: known_method(request.method),
            status: status_class(request.status),
        };
        self.requests
            .get_or_create(&labels)
            .observe(request.elapsed.as_secs_f64());
    }

    /// The text exposition of every metric, with the machines per status set from `counts`
    /// (the store's grouped count; a status it does not name has no machine).
    pub fn render(&self, counts: &[(Status, i64)]) -> String {
        for status in Status::ALL {
            let count = counts
                .iter()
                .find(|(counted, _)| *counted == status)
                .map_or(0, |(_, count)| *count);
            self.machines
                .get_or_create(&StatusLabels {
                    status: status.as_str(),
                })
                .set(count);
        }
        let mut text = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The method as a label from a fixed set (anything else is `other`).
fn known_method(method: &str) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("other")
}

fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_is_rendered_and_counters_start_at_zero() {
        let metrics = Metrics::new();
        let text = metrics.render(&[(Status::Ready, 3)]);
        assert!(
            text.contains("fleet_machines{status=\"ready\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("fleet_machines{status=\"new\"} 0\n"),
            "{text}"
        );
        let statuses = text
            .lines()
            .filter(|line| line.starts_with("fleet_machines{"))
            .count();
        assert_eq!(statuses, 23);
        assert!(text.contains("fleet_apply_steps_total{outcome=\"failed\"} 0\n"));
        assert!(text.contains("fleet_dhcp_replies_total{type=\"nak\"} 0\n"));
        assert!(text.contains("fleet_tftp_sent_bytes_total 0\n"));
    }

    #[test]
    fn each_fixed_counter_moves_its_own_series() {
        let metrics = Metrics::new();
        metrics.step_ended(StepOutcome::Failed);
        metrics.dhcp_replied(DhcpReply::Nak);
        metrics.dhcp_replied(DhcpReply::Ack);
        metrics.dhcp_replied(DhcpReply::Ack);
        metrics.dhcp_dropped(DhcpDrop::Unsent);
        let text = metrics.render(&[]);
        for line in [
            "fleet_apply_steps_total{outcome=\"done\"} 0\n",
            "fleet_apply_steps_total{outcome=\"failed\"} 1\n",
            "fleet_dhcp_replies_total{type=\"offer\"} 0\n",
            "fleet_dhcp_replies_total{type=\"ack\"} 2\n",
            "fleet_dhcp_replies_total{type=\"nak\"} 1\n",
            "fleet_dhcp_drops_total{reason=\"malformed\"} 0\n",
            "fleet_dhcp_drops_total{reason=\"unsent\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
    }

    #[test]
    fn requests_are_filed_by_template_method_and_status_class() {
        let metrics = Metrics::new();
        metrics.observe_request(&RequestObservation {
            listener: Listener::Api,
            route: Some("/api/v1/machines/{name}"),
            method: "BREW",
            status: 404,
            elapsed: Duration::from_millis(2),
        });
        let text = metrics.render(&[]);
        let line = "fleet_http_request_duration_seconds_count{listener=\"api\",\
                    route=\"/api/v1/machines/{name}\",method=\"other\",status=\"4xx\"} 1\n";
        assert!(text.contains(line), "{text}");
    }
}
