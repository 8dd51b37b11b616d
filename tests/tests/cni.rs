//! End-to-end: pods enrolled through `hawser-cni`, invoked the way a container runtime
//! does (CNI environment variables, the network configuration with the previous plugin's
//! result on stdin) for test-bed pods whose workload declares no network namespace.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Result;
use hawser_testbed::{
    Pod, Service, Testbed, can_run, cni_bin,
    fake_api::FakeApi,
    metrics::{sample, scrape},
    peers::{Nginx, curl, echo_server},
    write_atomically,
};

/// One plugin run: exit status, stdout, stderr.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `hawser-cni` for `pod` as the runtime would after the cluster's CNI set it up.
fn cni(command: &str, pod: &Pod, socket: &str, fail_closed: bool) -> Result<Run> {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "hawser-cni",
        "socket": socket,
        "failClosed": fail_closed,
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": pod.netns_path}],
            "ips": [{"address": format!("{}/24", pod.ip), "interface": 0}],
        },
    });
    let mut child = Command::new(cni_bin())
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("sandbox-{}", pod.name))
        .env("CNI_NETNS", &pod.netns_path)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID=sandbox-{}",
                pod.name, pod.name
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `pod`'s workload without a network namespace: the CNI hand-off brings it.
fn declared_without_netns(pod: &Pod) -> String {
    pod.workload_yaml()
        .lines()
        .filter(|l| !l.trim_start().starts_with("netns:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Connections the daemon relayed out of pod `a`.
fn relayed_from_a(daemon: &Service) -> usize {
    daemon
        .lines_with(&[
            "direction=\"outbound\"",
            "pod=default/a",
            "connection closed",
        ])
        .len()
}

#[test]
fn the_cni_plugin_enrolls_and_releases_pods_and_survives_a_missing_daemon() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let (a, b, c) = (
        bed.pod(&node, "a")?,
        bed.pod(&node, "b")?,
        bed.pod(&node, "c")?,
    );
    write_atomically(
        &bed.config_dir().join("workloads.yaml"),
        &[
            declared_without_netns(&a),
            b.workload_yaml(),
            declared_without_netns(&c),
        ]
        .join("---\n"),
    )?;
    let socket = bed.dir().join("run/cni.sock");
    let socket_arg = socket.display().to_string();
    let mut daemon = bed.start_node_with(&node, None, &["--cni-socket", &socket_arg])?;
    let nginx = Nginx::start(&bed, &b)?;
    let url = format!("http://{}/hello.txt", b.ip);

    // Before its sandbox is handed over, a is not enrolled: the daemon relays nothing.
    assert_eq!(curl(&a, &url)?, nginx.body);
    assert_eq!(relayed_from_a(&daemon), 0);

    // ADD: the plugin returns once the daemon enrolled a, and passes the result on.
    let add = cni("ADD", &a, &socket_arg, false)?;
    assert!(add.ok, "{}{}", add.stdout, add.stderr);
    let result: serde_json::Value = serde_json::from_str(&add.stdout)?;
    assert_eq!(result["ips"][0]["address"], format!("{}/24", a.ip));
    assert!(daemon.log().contains("pod enrolled pod=default/a"));
    assert_eq!(curl(&a, &url)?, nginx.body);
    daemon.wait_for("a's connection relayed", Duration::from_secs(5), |_| {
        relayed_from_a(&daemon) == 1
    })?;

    // A restarted daemon enrolls a again from the hand-offs it kept.
    daemon.restart()?;
    daemon.wait_for("a enrolled again", Duration::from_secs(10), |log| {
        log.matches("pod enrolled pod=default/a").count() == 2
    })?;

    // DEL releases a: its traffic no longer goes through the daemon.
    let del = cni("DEL", &a, &socket_arg, false)?;
    assert!(del.ok, "{}", del.stderr);
    daemon.wait_for("a released", Duration::from_secs(10), |log| {
        log.contains("pod unenrolled pod=default/a")
    })?;
    let relayed = relayed_from_a(&daemon);
    assert_eq!(curl(&a, &url)?, nginx.body);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(relayed_from_a(&daemon), relayed);

    // No daemon: a pod still starts (the previous result passes through), unless the
    // configuration says failClosed; DEL never fails.
    daemon.stop()?;
    let open = cni("ADD", &c, &socket_arg, false)?;
    assert!(
        open.ok && open.stderr.contains("starts without hawser"),
        "{}",
        open.stderr
    );
    assert!(open.stdout.contains(&c.ip));
    let closed = cni("ADD", &c, &socket_arg, true)?;
    assert!(!closed.ok);
    let error: serde_json::Value = serde_json::from_str(&closed.stdout)?;
    assert_eq!(error["code"], 100);
    assert!(error["msg"].as_str().unwrap().contains("failClosed"));
    assert!(cni("DEL", &c, &socket_arg, true)?.ok);
    Ok(())
}

/// A Pod as the API server has it right after scheduling: no address yet.
fn new_pod(pod: &Pod) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": "default", "labels": {"app": pod.name}},
        "spec": {"nodeName": pod.node, "serviceAccountName": pod.name, "containers": []},
        "status": {"phase": "Pending"}})
}

/// An API server whose default namespace is in the mesh, and nothing else yet.
fn cluster() -> serde_json::Value {
    let mut recorded = serde_json::json!({
        "/api/v1/namespaces": [{"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default", "labels": {"istio.io/dataplane-mode": "ambient"}}}],
    });
    for path in [
        "/api/v1/pods",
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/apis/security.istio.io/v1/peerauthentications",
        "/apis/security.istio.io/v1/authorizationpolicies",
        "/apis/networking.istio.io/v1/serviceentries",
        "/apis/networking.istio.io/v1/destinationrules",
        "/apis/hawser.dev/v1alpha1/inboundports",
    ] {
        recorded[path] = serde_json::json!([]);
    }
    recorded
}

#[test]
fn a_new_kubernetes_pod_is_captured_from_its_first_connection_and_waits_for_the_daemon()
-> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let (a, b, c) = (
        bed.pod(&node, "a")?,
        bed.pod(&node, "b")?, // not in the API: outside the mesh
        bed.pod(&node, "c")?,
    );
    let nginx = Nginx::start(&bed, &b)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let _in_runtime = runtime.enter();
    let api = FakeApi::new(&cluster());
    let server = api.serve(node.listen_on_loopback()?)?;
    let kubeconfig = kubeconfig(&bed, "kubeconfig", server)?;
    let socket = bed.dir().join("run/cni.sock");
    let socket_arg = socket.display().to_string();
    let mut daemon = bed.start_node_in_cluster(&node, &kubeconfig, &socket, None)?;
    let url = format!("http://{}/hello.txt", b.ip);

    // The runtime creates a's sandbox while the API server has no address for it: ADD
    // enrolls a from the CNI result's address and returns once capture is in place, so
    // a's very first connection goes through the daemon.
    api.event("/api/v1/pods", "ADDED", new_pod(&a));
    let add = cni("ADD", &a, &socket_arg, true)?;
    assert!(add.ok, "{}{}", add.stdout, add.stderr);
    assert_eq!(curl(&a, &url)?, nginx.body);
    daemon.wait_for(
        "a's first connection relayed",
        Duration::from_secs(5),
        |_| relayed_from_a(&daemon) == 1,
    )?;
    assert_eq!(nginx.clients(), vec![a.ip.clone()]);
    let workloads = node.hawser(&["workloads"])?;
    assert!(workloads.contains(&a.ip), "{workloads}");

    // A pod created while the daemon is down does not start (failClosed, as deploy/
    // installs the plugin): ADD fails and the runtime retries until the daemon is back.
    daemon.stop()?;
    api.event("/api/v1/pods", "ADDED", new_pod(&c));
    let refused = cni("ADD", &c, &socket_arg, true)?;
    assert!(!refused.ok, "{}", refused.stdout);
    daemon.restart()?;
    let retried = cni("ADD", &c, &socket_arg, true)?;
    assert!(retried.ok, "{}{}", retried.stdout, retried.stderr);
    assert_eq!(curl(&c, &url)?, nginx.body);
    daemon.wait_for(
        "c's first connection relayed",
        Duration::from_secs(5),
        |_| {
            !daemon
                .lines_with(&[
                    "direction=\"outbound\"",
                    "pod=default/c",
                    "connection closed",
                ])
                .is_empty()
        },
    )?;
    Ok(())
}

/// `pod` running on its node with its address, as the API server has it.
fn running_pod(pod: &Pod) -> serde_json::Value {
    let mut running = new_pod(pod);
    running["status"] = serde_json::json!({"phase": "Running", "podIP": pod.ip});
    running
}

/// A kubeconfig in the bed naming the API server at `server`.
fn kubeconfig(bed: &Testbed, name: &str, server: std::net::SocketAddr) -> Result<PathBuf> {
    let path = bed.dir().join(name);
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: \"http://{server}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n"
        ),
    )?;
    Ok(path)
}

/// A Service whose port is not its targetPort, dialed from a pod on another node than
/// its endpoint: the connection crosses in the tunnel (mTLS, both identities) and
/// reaches the endpoint's targetPort, the one the EndpointSlice names.
#[test]
fn a_service_reaches_its_target_port_on_another_node_through_the_tunnel() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let (node1, node2) = (bed.node("node1", 1)?, bed.node("node2", 2)?);
    bed.connect_nodes(&node1, &node2)?;
    let (a, b) = (bed.pod(&node1, "a")?, bed.pod(&node2, "b")?);
    // The CA learns which node runs which identity from the bed's configuration; the
    // daemons, from the API server.
    bed.enroll(&[&a, &b])?;
    let (_ca, info) = bed.start_ca(&node1, &[&node1, &node2])?;
    let _echo = echo_server(&b, 8080)?;
    let mut recorded = cluster();
    recorded["/api/v1/pods"] = serde_json::json!([running_pod(&a), running_pod(&b)]);
    recorded["/api/v1/services"] = serde_json::json!([{"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "tcp", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}]);
    recorded["/apis/discovery.k8s.io/v1/endpointslices"] = serde_json::json!([{
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "echo-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [b.ip], "conditions": {"ready": true}}],
        "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}]}]);
    let runtime = tokio::runtime::Runtime::new()?;
    let _in_runtime = runtime.enter();
    let api = FakeApi::new(&recorded);
    let mut daemons = Vec::new();
    for (node, pod) in [(&node1, &a), (&node2, &b)] {
        let server = api.serve(node.listen_on_loopback()?)?;
        let config = kubeconfig(&bed, &format!("kubeconfig-{}", node.name), server)?;
        let socket = bed.dir().join(format!("run/cni-{}.sock", node.name));
        let daemon = bed.start_node_in_cluster(node, &config, &socket, Some(&info))?;
        let add = cni("ADD", pod, &socket.display().to_string(), true)?;
        assert!(add.ok, "{}{}", add.stdout, add.stderr);
        daemons.push(daemon);
    }
    let send = "printf request | socat -t 5 - TCP:10.96.0.10:80";
    let out = a.run(&["sh", "-c", send])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "request", "{out:?}");
    let tunnel = [
        "direction=\"tunnel\"",
        "connection closed",
        "src_identity=\"spiffe://cluster.local/ns/default/sa/a\"",
        "security=\"mtls\"",
    ];
    let delivered = format!("dst={}:8080", b.ip);
    daemons[1].wait_for("the tunnel's record", Duration::from_secs(10), |_| {
        daemons[1]
            .lines_with(&tunnel)
            .iter()
            .any(|l| l.contains(&delivered))
    })?;
    // Both ends name the Service in their metrics: the client's daemon by the address
    // dialed, the server's by the port the preamble names (the tunnel's own names none).
    for (node, reporter) in [(&node1, "source"), (&node2, "destination")] {
        let labels = [
            ("reporter", reporter),
            ("destination_service", "echo.default.svc.cluster.local"),
            ("destination_service_name", "echo"),
            ("destination_service_namespace", "default"),
        ];
        let text = scrape(node)?;
        let closed = sample(&text, "istio_tcp_connections_closed_total", &labels);
        assert_eq!(closed, Some(1.0), "{}:\n{text}", node.name);
    }
    Ok(())
}
