//! Prometheus metrics. Connection metrics carry Istio's names and labels so that existing
//! dashboards work; the rest are hawser's own (`hawser_*`).
//!
//! Cardinality stays bounded: every connection series remembers the workloads it names,
//! and when one of them leaves (unenrolled, or gone from the registry) its series are
//! dropped after a grace period, unless it came back in the meantime.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Istio's connection labels, in Istio's order.
const CONNECTION_LABELS: [&str; 12] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "connection_security_policy",
    "request_protocol",
];

/// Istio's value for a label the reporter cannot know.
pub const UNKNOWN: &str = "unknown";

/// One side of a connection as the metrics name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// `namespace/name`, when the peer is a known workload.
    pub workload_key: Option<String>,
    pub workload: String,
    pub namespace: String,
    pub principal: String,
}

impl Peer {
    pub fn unknown() -> Self {
        Self {
            workload_key: None,
            workload: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            principal: UNKNOWN.into(),
        }
    }
}

/// The service a connection was for, as Istio's dashboards key on it: a Kubernetes
/// Service (`name.namespace.svc.cluster.local`, its name and namespace) or a ServiceEntry's
/// host (the host, and the entry's namespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DestinationService {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

impl DestinationService {
    pub fn unknown() -> Self {
        Self {
            host: UNKNOWN.into(),
            name: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
        }
    }

    pub fn kubernetes(name: &str, namespace: &str) -> Self {
        Self {
            host: format!("{name}.{namespace}.svc.cluster.local"),
            name: name.into(),
            namespace: namespace.into(),
        }
    }
}

/// The labels of one connection series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionLabels {
    /// `source` when the client's node reports, `destination` when the server's does.
    pub reporter: &'static str,
    pub source: Peer,
    pub destination: Peer,
    pub destination_service: DestinationService,
    /// `mutual_tls` or `none`.
    pub security: &'static str,
}

impl ConnectionLabels {
    fn values(&self) -> [&str; 12] {
        [
            self.reporter,
            &self.source.workload,
            &self.source.namespace,
            &self.source.principal,
            &self.destination.workload,
            &self.destination.namespace,
            &self.destination.principal,
            &self.destination_service.host,
            &self.destination_service.name,
            &self.destination_service.namespace,
            self.security,
            "tcp",
        ]
    }

    fn workloads(&self) -> impl Iterator<Item = &String> {
        [&self.source.workload_key, &self.destination.workload_key]
            .into_iter()
            .flatten()
    }
}

pub struct Metrics {
    registry: Registry,
    opened: IntCounterVec,
    closed: IntCounterVec,
    sent: IntCounterVec,
    received: IntCounterVec,
    pub handshake_seconds: HistogramVec,
    pub tls_offload: IntCounterVec,
    pub handshakes: IntCounterVec,
    pub tunnel_spares: IntCounterVec,
    pub svid_expiry: IntGaugeVec,
    pub ca_request_seconds: HistogramVec,
    pub policy_denials: IntCounterVec,
    pub ebpf_map_entries: IntGaugeVec,
    pub unenforceable_policies: IntGaugeVec,
    pub ca_token_reviews: IntCounterVec,
    refused: IntCounterVec,
    series: Mutex<Series>,
}

/// Which connection series exist, and which workloads left when.
#[derive(Default)]
struct Series {
    live: HashSet<ConnectionLabels>,
    left: HashMap<String, Instant>,
}

/// The daemon's metrics (one registry per process, like the node it describes).
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique name");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets");
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    registry.register(Box::new(h.clone())).expect("unique name");
    h
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique name");
    g
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let c = &CONNECTION_LABELS;
        Self {
            opened: counter(
                &r,
                "istio_tcp_connections_opened_total",
                "TCP connections opened",
                c,
            ),
            closed: counter(
                &r,
                "istio_tcp_connections_closed_total",
                "TCP connections closed",
                c,
            ),
            sent: counter(
                &r,
                "istio_tcp_sent_bytes_total",
                "Bytes sent from the client to the server",
                c,
            ),
            received: counter(
                &r,
                "istio_tcp_received_bytes_total",
                "Bytes sent from the server back to the client",
                c,
            ),
            handshake_seconds: histogram(
                &r,
                "hawser_tls_handshake_duration_seconds",
                "mTLS handshake duration, by side and result",
                &["side", "result"],
            ),
            tls_offload: counter(
                &r,
                "hawser_tls_offload_total",
                "Where established tunnels' TLS runs: ktls, userspace, or failed (with reason)",
                &["result", "reason"],
            ),
            handshakes: counter(
                &r,
                "hawser_tls_handshakes_total",
                "Completed TLS handshakes, by side and kind (full, or resumed from a ticket)",
                &["side", "kind"],
            ),
            tunnel_spares: counter(
                &r,
                "hawser_tunnel_spares_total",
                "Idle tunnel sessions (spares made ahead of need; serial sessions kept after a \
                 stream, counted as kept), by what became of them: used, expired unused, stale \
                 (the SVID or trust bundle changed), closed by the peer, surplus (more than a \
                 pair keeps), failed (a spare's handshake)",
                &["outcome"],
            ),
            svid_expiry: gauge(
                &r,
                "hawser_svid_expiry_timestamp_seconds",
                "Expiry (Unix time) of the SVID held for each identity",
                &["identity"],
            ),
            ca_request_seconds: histogram(
                &r,
                "hawser_ca_request_duration_seconds",
                "Requests to the CA: latency by method and result",
                &["method", "result"],
            ),
            policy_denials: counter(
                &r,
                "hawser_policy_denials_total",
                "Inbound connections refused by policy",
                &[
                    "destination_workload",
                    "destination_workload_namespace",
                    "policy",
                ],
            ),
            ebpf_map_entries: gauge(
                &r,
                "hawser_ebpf_map_entries",
                "Entries in each eBPF map, at the last scrape",
                &["map"],
            ),
            unenforceable_policies: gauge(
                &r,
                "hawser_policy_unenforceable",
                "AuthorizationPolicies hawser cannot enforce (1 each): their workloads deny all",
                &["namespace", "name"],
            ),
            refused: counter(
                &r,
                "hawser_connections_refused_total",
                "Connections refused before any byte was relayed, by listener and kind of refusal",
                &["direction", "reason"],
            ),
            ca_token_reviews: counter(
                &r,
                "hawser_ca_token_reviews_total",
                "TokenReviews the CA asked of the API server, by result (throttled: over the caller's budget, not sent)",
                &["result"],
            ),
            registry: r,
            series: Mutex::default(),
        }
    }

    /// Counts a refused connection (`reason`: the kind of refusal, a short fixed word).
    pub fn connection_refused(&self, direction: &str, reason: &str) {
        self.refused.with_label_values(&[direction, reason]).inc();
    }

    /// Counts a connection as opened.
    pub fn connection_opened(&self, labels: &ConnectionLabels) {
        self.series.lock().unwrap().live.insert(labels.clone());
        self.opened.with_label_values(&labels.values()).inc();
    }

    /// Counts a connection as closed, with its bytes each way. As in Istio, "received" is
    /// what the client sent (the request), "sent" what the server sent back.
    pub fn connection_closed(&self, labels: &ConnectionLabels, request: u64, response: u64) {
        let values = labels.values();
        self.closed.with_label_values(&values).inc();
        self.received.with_label_values(&values).inc_by(request);
        self.sent.with_label_values(&values).inc_by(response);
    }

    /// The policies in force that hawser cannot enforce, replacing the last set.
    pub fn unenforceable(&self, policies: &hawser_model::policy::Policies) {
        self.unenforceable_policies.reset();
        for p in policies.authorization_policies.iter() {
            if p.unenforceable.is_some() {
                let labels = [p.scope.namespace.as_str(), p.name.as_str()];
                self.unenforceable_policies
                    .with_label_values(&labels)
                    .set(1);
            }
        }
    }

    /// The workloads that are here now (enrolled on this node, or known elsewhere in the
    /// mesh): a series naming any other one is dropped once it has been gone for the
    /// grace period (see `sweep`).
    pub fn workloads_present(&self, present: &BTreeSet<String>) {
        let mut series = self.series.lock().unwrap();
        let named: BTreeSet<String> = series
            .live
            .iter()
            .flat_map(|l| l.workloads().cloned())
            .collect();
        series.left.retain(|w, _| !present.contains(w));
        for gone in named.difference(present) {
            series.left.entry(gone.clone()).or_insert_with(Instant::now);
        }
    }

    /// Drops the series of workloads that left more than `grace` ago.
    pub fn sweep(&self, grace: Duration) {
        let mut series = self.series.lock().unwrap();
        let expired: BTreeSet<String> = series
            .left
            .iter()
            .filter(|(_, at)| at.elapsed() >= grace)
            .map(|(w, _)| w.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        series.left.retain(|w, _| !expired.contains(w));
        let dropped: Vec<ConnectionLabels> = series
            .live
            .iter()
            .filter(|l| l.workloads().any(|w| expired.contains(w)))
            .cloned()
            .collect();
        for labels in &dropped {
            series.live.remove(labels);
            let values = labels.values();
            for vec in [&self.opened, &self.closed, &self.sent, &self.received] {
                let _ = vec.remove_label_values(&values);
            }
        }
        tracing::debug!(workloads = ?expired, series = dropped.len(), "dropped the metric series of workloads that left");
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Records how long `f` took in `histogram`, labelled `label` and `ok` or `error`, and
/// returns its result.
pub async fn timed<T, E>(
    histogram: &HistogramVec,
    label: &str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let result = f.await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    histogram
        .with_label_values(&[label, outcome])
        .observe(started.elapsed().as_secs_f64());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(source: &str) -> ConnectionLabels {
        ConnectionLabels {
            reporter: "destination",
            source: Peer {
                workload_key: Some(format!("default/{source}")),
                workload: source.into(),
                namespace: "default".into(),
                principal: UNKNOWN.into(),
            },
            destination: Peer::unknown(),
            destination_service: DestinationService::unknown(),
            security: "none",
        }
    }

    #[test]
    fn series_of_a_workload_that_left_go_after_the_grace_period_only() {
        let m = Metrics::new();
        m.connection_opened(&labels("gone"));
        m.connection_opened(&labels("back"));
        m.connection_opened(&labels("stays"));
        let present = |names: &[&str]| names.iter().map(|n| format!("default/{n}")).collect();
        m.workloads_present(&present(&["stays"]));
        m.sweep(Duration::from_secs(3600));
        assert!(m.render().contains("source_workload=\"gone\""));
        m.workloads_present(&present(&["stays", "back"]));
        m.sweep(Duration::ZERO);
        let text = m.render();
        assert!(!text.contains("source_workload=\"gone\""), "{text}");
        assert!(text.contains("source_workload=\"back\""));
        assert!(text.contains("source_workload=\"stays\""));
    }
}
