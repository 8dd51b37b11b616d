//! The handlers' decisions, in-process: real sockets on loopback, steering faked (see
//! `context::testing`). The end-to-end suite tests the same handlers on real steering.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use hawser_model::{Registry, config::parse_registry, egress::OutboundPolicy};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
};

use super::{inbound, outbound};
use crate::{
    context::testing::{FakeSteering, pod},
    metrics::METRICS,
};

const A: &str = "apiVersion: hawser.dev/v1alpha1
kind: Workload
metadata: {name: a, labels: {app: a}}
spec: {serviceAccount: a, podIP: 10.1.0.2, nodeName: node1}
";

const STRICT: &str = "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec: {mtls: {mode: STRICT}}
";

fn registry(yaml: &str) -> Registry {
    parse_registry("test.yaml".as_ref(), yaml).unwrap()
}

fn refused(direction: &str, reason: &str) -> u64 {
    let series = format!(
        "hawser_connections_refused_total{{direction=\"{direction}\",reason=\"{reason}\"}} "
    );
    METRICS
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or(0)
}

/// An echo server: what the app or an upstream would be.
async fn echo() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = accepted.send(());
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, rx)
}

/// Serves one of the pod's listeners with `serve`, returning its address.
async fn listener<F, Fut>(serve: F) -> SocketAddr
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener));
    addr
}

/// Connects from a port known before the connection exists (as the connect hook
/// records it), after `before` saw that address.
async fn connect_from(to: SocketAddr, before: impl FnOnce(SocketAddr)) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    before(socket.local_addr().unwrap());
    socket.connect(to).await.unwrap()
}

/// Sends `text`, half-closes, reads to the end: the echo, or what came before a reset.
async fn exchange(mut conn: TcpStream, text: &str) -> String {
    let _ = conn.write_all(text.as_bytes()).await;
    let _ = conn.shutdown().await;
    let mut got = Vec::new();
    let read = conn.read_to_end(&mut got);
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn outbound_relays_a_captured_connection_to_where_it_was_going() {
    let (upstream, _) = echo().await;
    let net = Arc::new(FakeSteering::default());
    let pod = pod(registry(A), OutboundPolicy::AllowAny, net.clone());
    let at = listener(|l| outbound::serve(l, pod)).await;
    let conn = connect_from(at, |me| {
        net.original.lock().unwrap().insert(me, upstream);
    })
    .await;
    assert_eq!(exchange(conn, "ping").await, "ping");
}

/// Whether the metrics hold a connection series with all of `labels`.
fn series_with(labels: &[(&str, &str)]) -> bool {
    METRICS.render().lines().any(|l| {
        l.starts_with("istio_tcp_connections_opened_total{")
            && labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
    })
}

#[tokio::test]
async fn outbound_names_the_service_a_connection_is_for() {
    let (upstream, _) = echo().await;
    let mut with_services = registry(&format!(
        "{A}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: api}}\nspec: {{hosts: [api.example.com], addresses: [192.0.2.80], \
         resolution: STATIC, endpoints: [{{address: 127.0.0.1}}], \
         ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {}}}]}}\n",
        upstream.port()
    ));
    with_services.services.push(hawser_model::Service {
        name: "cart".into(),
        namespace: "shop".into(),
        cluster_ips: vec!["10.96.0.9".parse().unwrap()],
        ports: [(80, vec![upstream])].into(),
    });
    let net = Arc::new(FakeSteering::default());
    let pod = pod(with_services, OutboundPolicy::AllowAny, net.clone());
    let at = listener(|l| outbound::serve(l, pod)).await;
    for dialed in ["10.96.0.9:80", "192.0.2.80:80"] {
        let conn = connect_from(at, |me| {
            net.original
                .lock()
                .unwrap()
                .insert(me, dialed.parse().unwrap());
        })
        .await;
        assert_eq!(exchange(conn, "ping").await, "ping", "via {dialed}");
    }
    assert!(series_with(&[
        ("destination_service", "cart.shop.svc.cluster.local"),
        ("destination_service_name", "cart"),
        ("destination_service_namespace", "shop"),
    ]));
    assert!(series_with(&[
        ("destination_service", "api.example.com"),
        ("destination_service_name", "api.example.com"),
        ("destination_service_namespace", "default"),
    ]));
}

#[tokio::test]
async fn outbound_refuses_without_a_recorded_destination_or_a_route() {
    let (upstream, mut reached) = echo().await;
    let net = Arc::new(FakeSteering::default());
    let pod = pod(registry(A), OutboundPolicy::RegistryOnly, net.clone());
    let at = listener(|l| outbound::serve(l, pod)).await;

    let before = refused("outbound", "no_original_destination");
    let unknown = connect_from(at, |_| {}).await;
    assert_eq!(exchange(unknown, "lost").await, "");
    assert_eq!(refused("outbound", "no_original_destination"), before + 1);

    // REGISTRY_ONLY, and nothing declares the upstream.
    let before = refused("outbound", "no_route");
    let undeclared = connect_from(at, |me| {
        net.original.lock().unwrap().insert(me, upstream);
    })
    .await;
    assert_eq!(exchange(undeclared, "lost").await, "");
    assert_eq!(refused("outbound", "no_route"), before + 1);
    assert!(reached.try_recv().is_err(), "the upstream saw a connection");
}

#[tokio::test]
async fn inbound_delivers_a_steered_connection_announced_and_refuses_others() {
    let (app, mut reached) = echo().await;
    let net = Arc::new(FakeSteering::default());
    let pod_a = pod(registry(A), OutboundPolicy::AllowAny, net.clone());
    let at = listener(move |l| inbound::serve(l, pod_a)).await;
    // Steered from the network (PERMISSIVE: plaintext is admitted): delivered.
    let conn = connect_from(at, |me| {
        net.dialed.lock().unwrap().insert(me, app);
    })
    .await;
    assert_eq!(exchange(conn, "ping").await, "ping");
    let announced = net.announced.lock().unwrap().clone();
    assert_eq!(announced.len(), 1);
    assert_eq!(
        announced[0].1, app,
        "announced before connecting to the app"
    );
    assert_eq!(
        *net.forgotten.lock().unwrap(),
        announced,
        "and forgotten after"
    );

    // Another delivery holds the first port's pass: the delivery takes another port, and
    // leaves the other's pass alone.
    reached.try_recv().unwrap();
    net.passes_held.store(1, Ordering::SeqCst);
    let conn = connect_from(at, |me| {
        net.dialed.lock().unwrap().insert(me, app);
    })
    .await;
    assert_eq!(exchange(conn, "pong").await, "pong");
    let announced = net.announced.lock().unwrap()[1..].to_vec();
    assert_eq!(announced.len(), 2, "{announced:?}");
    assert_ne!(announced[0].0, announced[1].0, "a port of its own");
    let forgotten = net.forgotten.lock().unwrap()[1..].to_vec();
    assert_eq!(forgotten, announced[1..], "only its own pass forgotten");

    // Dialed at the daemon's listener from inside the pod: refused, the app sees nothing.
    reached.try_recv().unwrap();
    let before = refused("inbound", "not_steered");
    assert_eq!(
        exchange(TcpStream::connect(at).await.unwrap(), "x").await,
        ""
    );
    assert_eq!(refused("inbound", "not_steered"), before + 1);

    // STRICT: plaintext refused by policy.
    let net = Arc::new(FakeSteering::default());
    let strict = pod(
        registry(&format!("{A}{STRICT}")),
        OutboundPolicy::AllowAny,
        net.clone(),
    );
    let at = listener(move |l| inbound::serve(l, strict)).await;
    let before = refused("inbound", "policy");
    let conn = connect_from(at, |me| {
        net.dialed.lock().unwrap().insert(me, app);
    })
    .await;
    assert_eq!(exchange(conn, "x").await, "");
    assert_eq!(refused("inbound", "policy"), before + 1);
    assert!(
        net.announced.lock().unwrap().is_empty(),
        "nothing was delivered"
    );
    assert!(reached.try_recv().is_err(), "the app saw a connection");
}

#[tokio::test]
async fn the_tunnel_listener_refuses_a_client_that_does_not_speak_its_tls() {
    let net = Arc::new(FakeSteering::default());
    let pod = pod(registry(A), OutboundPolicy::AllowAny, net.clone());
    let at = listener(move |l| inbound::serve_tunnel(l, pod)).await;
    let before = refused("tunnel", "handshake");
    let plaintext = connect_from(at, |me| {
        net.dialed
            .lock()
            .unwrap()
            .insert(me, "10.1.0.2:8080".parse().unwrap());
    })
    .await;
    assert_eq!(exchange(plaintext, "GET / HTTP/1.1\r\n\r\n").await, "");
    assert_eq!(refused("tunnel", "handshake"), before + 1);
    assert!(
        net.announced.lock().unwrap().is_empty(),
        "nothing was delivered"
    );
}
