//! The Kubernetes workload source against an API server that replays recorded objects
//! (`fixtures/cluster.json`, as `kubectl get -o json` shows them) and watch events:
//! list, then added, modified and deleted objects on the watch, and a resync (the watch
//! expires with 410 Gone, the client lists again and must drop what is gone).

use std::{sync::Arc, time::Duration};

use axum::Router;
use hawser::workload::kubernetes;
use hawser_model::Registry;
use hawser_testbed::fake_api::FakeApi;
use serde_json::{Value, json};
use tokio::sync::watch;

/// Waits until the source publishes a registry for which `done` holds.
async fn until(
    rx: &mut watch::Receiver<Arc<Registry>>,
    what: &str,
    done: impl Fn(&Registry) -> bool,
) -> Arc<Registry> {
    let wait = async {
        loop {
            let current = rx.borrow_and_update().clone();
            if done(&current) {
                return current;
            }
            rx.changed().await.expect("the source ended");
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:#?}", rx.borrow()))
}

fn pods(registry: &Registry) -> Vec<String> {
    registry.workloads.keys().cloned().collect()
}

#[tokio::test]
async fn recorded_objects_and_watch_events_make_the_registry() {
    let recorded: Value =
        serde_json::from_str(include_str!("fixtures/cluster.json")).expect("fixture");
    let api = FakeApi::new(&recorded);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", api.serve(listener).unwrap());
    let config = kube::Config::new(url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let mut rx = kubernetes::follow(client).await.expect("synced");

    // The list: only mesh pods (namespace label), not host-network ones; the Service's
    // ready endpoint on the target port; the policies, a broken one (an AUDIT action)
    // kept as a deny-all for its namespace, never dropped.
    let registry = rx.borrow_and_update().clone();
    assert_eq!(
        pods(&registry),
        ["shop/cart-7d9f8-x2k4p", "shop/frontend-5c4b-abcde"]
    );
    let cart = &registry.workloads["shop/cart-7d9f8-x2k4p"];
    assert_eq!(
        (cart.service_account.as_str(), cart.node_name.as_str()),
        ("cart", "node1")
    );
    assert_eq!(cart.ips_text(), "10.1.0.5");
    assert_eq!(cart.netns, None, "the CNI plugin hands it over");
    let service = registry
        .service_at("10.96.12.34:80".parse().unwrap())
        .expect("the Service");
    assert_eq!(service.1, ["10.1.0.5:8080".parse().unwrap()]);
    assert_eq!(registry.policies.peer_authentications.len(), 1);
    let mut names: Vec<(&str, bool)> = registry
        .policies
        .authorization_policies
        .iter()
        .map(|p| (p.name.as_str(), p.unenforceable.is_some()))
        .collect();
    names.sort();
    assert_eq!(names, [("broken", true), ("cart", false)]);
    // Two ServiceEntries for one address and port: the later is refused and listed.
    let entries: Vec<&str> = registry
        .egress
        .service_entries
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(entries, ["payments"]);
    assert!(
        matches!(&registry.refused[..], [why] if why.contains("payments-legacy")
            && why.contains("nothing tells the two apart")),
        "{:?}",
        registry.refused
    );
    let frontend = &registry.workloads["shop/frontend-5c4b-abcde"];
    let verdict = hawser_model::policy::evaluate::authorize(&registry.policies, frontend, 80, None);
    assert!(
        verdict.to_string().contains("cannot be enforced"),
        "{verdict}"
    );

    // Watch events: a pod added, a pod opting out, a namespace joining, a pod deleted.
    let pod = |name: &str, ns: &str, ip: &str, labels: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": "node1", "serviceAccountName": name, "containers": []},
            "status": {"phase": "Running", "podIP": ip}})
    };
    api.event(
        "/api/v1/pods",
        "ADDED",
        pod("cart-2", "shop", "10.1.0.8", json!({"app": "cart"})),
    );
    until(&mut rx, "the added pod", |r| {
        r.workloads.contains_key("shop/cart-2")
    })
    .await;
    api.event(
        "/api/v1/pods",
        "MODIFIED",
        pod(
            "cart-2",
            "shop",
            "10.1.0.8",
            json!({"app": "cart", "istio.io/dataplane-mode": "none"}),
        ),
    );
    until(&mut rx, "the opted-out pod gone", |r| {
        !r.workloads.contains_key("shop/cart-2")
    })
    .await;
    api.event(
        "/api/v1/namespaces",
        "MODIFIED",
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "legacy", "labels": {"hawser.dev/mesh": "enabled"}}}),
    );
    until(&mut rx, "the namespace's pod", |r| {
        r.workloads.contains_key("legacy/batch-1")
    })
    .await;
    api.event(
        "/api/v1/pods",
        "DELETED",
        pod("batch-1", "legacy", "10.1.0.9", json!({})),
    );
    until(&mut rx, "the deleted pod gone", |r| {
        !r.workloads.contains_key("legacy/batch-1")
    })
    .await;

    // Resync: the watch expires; the new list no longer has cart (no DELETED event was
    // seen for it) but has cart-3.
    api.expire(
        "/api/v1/pods",
        vec![
            recorded["/api/v1/pods"][1].clone(),
            pod("cart-3", "shop", "10.1.0.10", json!({"app": "cart"})),
        ],
    );
    let after = until(&mut rx, "the relisted pods", |r| {
        pods(r) == ["shop/cart-3", "shop/frontend-5c4b-abcde"]
    })
    .await;
    assert_eq!(after.workloads["shop/cart-3"].ips_text(), "10.1.0.10");
}

/// The API server's TokenReview, for the tokens the test knows.
async fn review(axum::Json(request): axum::Json<Value>) -> axum::Json<Value> {
    let spec = &request["spec"];
    let for_ca = spec["audiences"] == json!(["hawser-ca"]);
    let user = |name: &str, node: Option<&str>| {
        let extra = node.map_or(json!({}), |n| {
            json!({"authentication.kubernetes.io/node-name": [n],
                   "authentication.kubernetes.io/pod-name": ["hawser-node-x7k2p"]})
        });
        json!({"authenticated": true, "user": {"username": name, "extra": extra},
               "audiences": ["hawser-ca"]})
    };
    let status = match spec["token"].as_str() {
        Some("node1-daemon") if for_ca => user(
            "system:serviceaccount:hawser-system:hawser-node",
            Some("node1"),
        ),
        Some("other-account") => user("system:serviceaccount:shop:cart", Some("node1")),
        Some("unbound") => user("system:serviceaccount:hawser-system:hawser-node", None),
        // The API server accepts it, for its own audience only.
        Some("for-the-api-server") => {
            let mut status = user(
                "system:serviceaccount:hawser-system:hawser-node",
                Some("node1"),
            );
            status["audiences"] = json!(["https://kubernetes.default.svc"]);
            status
        }
        _ => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    axum::Json(
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "metadata": {}, "spec": spec, "status": status}),
    )
}

#[tokio::test]
async fn token_review_names_the_node_of_a_daemons_token_and_refuses_others() {
    use hawser::ca::node_auth::TokenReviewer;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        axum::routing::post(review),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let reviewer = TokenReviewer {
        client,
        audience: "hawser-ca".into(),
        service_account: "hawser-system/hawser-node".into(),
        budget: Default::default(),
    };
    let source = Some("10.0.0.9".parse().unwrap());
    assert_eq!(
        reviewer.review(source, "node1-daemon").await.unwrap(),
        "node1"
    );
    for (token, says) in [
        ("stolen", "rejected by the API server: invalid bearer token"),
        ("other-account", "not of the node daemons' ServiceAccount"),
        ("unbound", "names no node"),
        ("for-the-api-server", "not for audience hawser-ca"),
    ] {
        let refused = reviewer.review(source, token).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(
            refused.message().contains(says),
            "{token}: {}",
            refused.message()
        );
    }
    // The source's budget (20 per 10 s) is spent: no more reviews are sent for it.
    for _ in 0..20 {
        let _ = reviewer.review(source, "stolen").await;
    }
    let counted = |result: &str| {
        hawser::metrics::METRICS
            .ca_token_reviews
            .with_label_values(&[result])
            .get()
    };
    assert_eq!(counted("authenticated"), 1);
    assert_eq!(
        counted("refused"),
        19,
        "4 refused above, then 15 within the budget"
    );
    assert_eq!(counted("throttled"), 5);
    assert!(
        hawser::metrics::METRICS
            .render()
            .contains("hawser_ca_token_reviews_total{result=\"throttled\"} 5")
    );
}

#[tokio::test]
async fn nothing_is_served_before_every_kind_that_can_restrict_traffic_is_listed() {
    let recorded: Value =
        serde_json::from_str(include_str!("fixtures/cluster.json")).expect("fixture");
    let mut recorded = recorded.as_object().unwrap().clone();
    // No InboundPorts CRD on this cluster: none to wait for.
    recorded.remove("/apis/hawser.dev/v1alpha1/inboundports");
    let api = FakeApi::new(&Value::Object(recorded));
    let policies = "/apis/security.istio.io/v1/authorizationpolicies";
    api.fail(policies, 403);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", api.serve(listener).unwrap());
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let follow = tokio::spawn(kubernetes::follow(client));
    // Pods, namespaces, services are there; the policies are not readable yet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !follow.is_finished(),
        "a registry without the policies was served"
    );
    api.heal(policies);
    let rx = tokio::time::timeout(Duration::from_secs(30), follow)
        .await
        .expect("synced once the policies are listed")
        .unwrap()
        .expect("synced");
    let registry = rx.borrow().clone();
    assert_eq!(registry.policies.authorization_policies.len(), 2);
}
