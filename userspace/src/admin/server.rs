//! The HTTP servers: the admin API (meant for localhost) and the Prometheus endpoint.

use std::{net::SocketAddr, str::FromStr, sync::Arc, time::Instant};

use anyhow::{Context, Result};
use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;

use super::views::{
    Cert, Certs, ConfigDump, IdentityCerts, PodStatus, PolicyCheck, Status, rfc3339,
};
use crate::{
    context::{shared::Shared, status::NodeStatus},
    logging::LogLevel,
    metrics::METRICS,
    redirect::Dataplane,
};
use hawser_model::{
    SpiffeId,
    policy::{self, MtlsMode},
};

#[derive(Clone)]
pub struct Admin {
    pub shared: Arc<Shared>,
    /// The eBPF programs and maps (readiness, map occupancy).
    pub dataplane: Arc<Dataplane>,
    pub status: watch::Receiver<NodeStatus>,
    pub log_level: LogLevel,
    pub started: Instant,
    /// How long the series of a workload that left stay.
    pub series_grace: std::time::Duration,
    /// Whether a new daemon is taking over from this one (`node::takeover`).
    pub successor: watch::Receiver<bool>,
}

/// Binds both servers (so that a taken port fails start-up), then serves them until
/// `stop` (a shutdown or a take-over: only the daemon in charge answers); returns the
/// addresses they are bound to (a port 0 asked for any).
pub async fn serve(
    admin: SocketAddr,
    metrics: SocketAddr,
    state: Admin,
    stop: CancellationToken,
) -> Result<(SocketAddr, SocketAddr)> {
    let admin_listener = shared_listener(admin)
        .with_context(|| format!("admin API: bind {admin} (taken? set --admin-addr)"))?;
    let metrics_listener = shared_listener(metrics)
        .with_context(|| format!("metrics: bind {metrics} (taken? set --metrics-addr)"))?;
    let (admin, metrics) = (admin_listener.local_addr()?, metrics_listener.local_addr()?);
    tracing::info!(%admin, %metrics, "admin API and metrics listening");
    let admin_routes = Router::new()
        .route("/status", get(status))
        .route("/certs", get(certs_view))
        .route("/config_dump", get(config_dump))
        .route("/policy/check", get(policy_check))
        .route("/logging", get(logging).post(logging))
        .route("/healthz/ready", get(ready))
        .with_state(state.clone());
    let metrics_routes = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/stats/prometheus", get(metrics_text))
        .route("/healthz/ready", get(ready))
        .with_state(state);
    tokio::spawn(run(admin_listener, admin_routes, stop.clone()));
    tokio::spawn(run(metrics_listener, metrics_routes, stop));
    Ok((admin, metrics))
}

/// A listener a daemon taking over from this one can bind beside it (SO_REUSEPORT, same
/// user only): during an upgrade both answer, then the old one goes.
fn shared_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

async fn run(listener: TcpListener, routes: Router, stop: CancellationToken) {
    let served = axum::serve(listener, routes).with_graceful_shutdown(stop.cancelled_owned());
    if let Err(e) = served.await {
        tracing::error!("HTTP server stopped: {e}");
    }
}

/// A request the daemon cannot answer, with the reason as the body.
struct Problem(StatusCode, String);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        (self.0, self.1 + "\n").into_response()
    }
}

fn bad_request(e: impl std::fmt::Display) -> Problem {
    Problem(StatusCode::BAD_REQUEST, e.to_string())
}

async fn status(State(admin): State<Admin>) -> Json<Status> {
    Json(status_of(&admin))
}

fn status_of(admin: &Admin) -> Status {
    let node = admin.status.borrow().clone();
    let shared = &admin.shared;
    let pods = node
        .pods
        .iter()
        .map(|pod| {
            let svid = pod.svid();
            PodStatus {
                pod: pod.key.clone(),
                ip: pod.workload.ips_text(),
                identity: pod.identity.to_string(),
                svid_serial: svid.as_ref().map(|s| s.serial.clone()),
                svid_not_after: svid.map(|s| rfc3339(s.not_after)),
            }
        })
        .collect();
    let not_ready = not_ready(admin, &node);
    Status {
        node: shared.node_name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: admin.started.elapsed().as_secs(),
        ready: not_ready.is_empty(),
        not_ready,
        tls: shared.offload.path().as_str().into(),
        ca: shared.svids.is_some(),
        pods,
    }
}

/// Ready means: the eBPF programs are attached, every pod of the node is enrolled, and the
/// SVID of every local identity is held.
fn not_ready(admin: &Admin, node: &NodeStatus) -> Vec<String> {
    let mut missing = Vec::new();
    if *admin.successor.borrow() {
        missing.push("a new daemon is taking over from this one".into());
    }
    if let Err(e) = admin.dataplane.attached() {
        missing.push(e);
    }
    if !node.reconciled {
        missing.push("the node's workloads are not enrolled yet".into());
    }
    missing.extend(
        node.failing
            .iter()
            .map(|pod| format!("enrolling {pod} failed; retrying")),
    );
    if admin.shared.svids.is_some() {
        missing.extend(
            node.pods
                .iter()
                .filter(|pod| pod.svid().is_none())
                .map(|pod| format!("no SVID yet for {} (pod {})", pod.identity, pod.key)),
        );
    }
    missing.sort();
    missing.dedup();
    missing
}

async fn ready(State(admin): State<Admin>) -> Problem {
    let node = admin.status.borrow().clone();
    match not_ready(&admin, &node) {
        missing if missing.is_empty() => Problem(StatusCode::OK, "ready".into()),
        missing => Problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", missing.join("; ")),
        ),
    }
}

async fn certs_view(State(admin): State<Admin>) -> Result<Json<Certs>, Problem> {
    let Some(svids) = &admin.shared.svids else {
        return Err(Problem(
            StatusCode::NOT_FOUND,
            "the daemon runs without a CA: it holds no certificates".into(),
        ));
    };
    let bundle = svids.trust_bundle().borrow().clone();
    let identities = svids
        .held()
        .into_iter()
        .map(|(id, svid)| IdentityCerts {
            identity: id.to_string(),
            state: if svid.is_some() { "valid" } else { "pending" }.into(),
            chain: svid.map_or(Vec::new(), |s| {
                s.chain.iter().filter_map(|c| Cert::from_pem(c)).collect()
            }),
        })
        .collect();
    Ok(Json(Certs {
        trust_domain: admin.shared.trust_domain.clone(),
        identities,
        trust_roots: bundle
            .roots
            .iter()
            .filter_map(|c| Cert::from_pem(c))
            .collect(),
        revoked_serials: bundle.revoked_serials.clone(),
        revoked_identities: bundle.revoked_identities.clone(),
    }))
}

async fn config_dump(State(admin): State<Admin>) -> Json<ConfigDump> {
    let registry = admin.shared.registry.borrow().clone();
    let enrolled = admin
        .status
        .borrow()
        .pods
        .iter()
        .map(|p| p.key.clone())
        .collect();
    Json(ConfigDump {
        node: admin.shared.node_name.clone(),
        trust_domain: admin.shared.trust_domain.clone(),
        enrolled,
        workloads: registry.workloads.values().cloned().collect(),
        policies: registry.policies.clone(),
        egress: registry.egress.clone(),
        inbound_ports: registry.ports.clone(),
        resolved_names: admin.shared.resolved.borrow().as_ref().clone(),
        refused: registry.refused.clone(),
    })
}

#[derive(Deserialize)]
struct CheckQuery {
    from: String,
    to: String,
}

/// `from`: a SPIFFE ID, a workload (`namespace/name`, or `name` in `default`), or `none`
/// for a caller without a mesh identity; `to`: `workload:port`.
async fn policy_check(
    State(admin): State<Admin>,
    Query(q): Query<CheckQuery>,
) -> Result<Json<PolicyCheck>, Problem> {
    let registry = admin.shared.registry.borrow().clone();
    let trust_domain = &admin.shared.trust_domain;
    let from = match q.from.as_str() {
        "none" | "-" => None,
        s if s.starts_with("spiffe://") => Some(SpiffeId::from_str(s).map_err(bad_request)?),
        s => {
            let w = registry
                .workloads
                .get(&workload_key(s))
                .ok_or_else(|| bad_request(format!("no workload {s:?}")))?;
            Some(SpiffeId::new(
                trust_domain,
                &w.namespace,
                &w.service_account,
            ))
        }
    };
    let (name, port) =
        q.to.rsplit_once(':')
            .ok_or_else(|| bad_request("--to is workload:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad_request(format!("bad port {port:?}")))?;
    let to = registry
        .workloads
        .get(&workload_key(name))
        .ok_or_else(|| bad_request(format!("no workload {name:?}")))?;
    let mode = policy::evaluate::mtls_mode(&registry.policies, to, port);
    let principal = from.clone().map(policy::Principal::from);
    let decision = policy::evaluate::admit(&registry.policies, to, port, principal.as_ref());
    let (allowed, decided_by, reason) = match decision {
        Ok(why) => (true, "AuthorizationPolicy", why),
        Err(denial) => (false, denial.by, denial.reason),
    };
    Ok(Json(PolicyCheck {
        from: from.map(|id| id.to_string()),
        to: to.key(),
        port,
        mtls_mode: mtls_name(mode).into(),
        allowed,
        decided_by: decided_by.into(),
        reason,
    }))
}

fn workload_key(name: &str) -> String {
    match name.contains('/') {
        true => name.to_string(),
        false => format!("default/{name}"),
    }
}

fn mtls_name(mode: MtlsMode) -> &'static str {
    match mode {
        MtlsMode::Strict => "STRICT",
        MtlsMode::Disable => "DISABLE",
        MtlsMode::Permissive | MtlsMode::Unset => "PERMISSIVE",
    }
}

#[derive(Deserialize)]
struct LevelQuery {
    level: Option<String>,
}

/// `GET /logging` shows the filter; `POST /logging?level=...` replaces it.
async fn logging(
    State(admin): State<Admin>,
    method: axum::http::Method,
    Query(q): Query<LevelQuery>,
) -> Result<String, Problem> {
    match (method, q.level) {
        (axum::http::Method::POST, Some(level)) => admin
            .log_level
            .set(&level)
            .map_err(|e| bad_request(format!("{e:#}")))?,
        (axum::http::Method::POST, None) => {
            return Err(bad_request("POST /logging?level=<filter>"));
        }
        _ => {}
    }
    Ok(format!("level: {}\n", admin.log_level.current()))
}

async fn metrics_text(State(admin): State<Admin>) -> String {
    METRICS.sweep(admin.series_grace);
    for (map, entries) in admin.dataplane.map_entries() {
        METRICS
            .ebpf_map_entries
            .with_label_values(&[map])
            .set(entries as i64);
    }
    METRICS.render()
}
