//! End-to-end: what an operator sees of a running mesh — Prometheus metrics after real
//! traffic, the certificates the daemon holds against the one a peer presents, the CLI,
//! readiness, the log level, and start-up errors that say what to fix.

use std::time::Duration;

use anyhow::{Context, Result};
use hawser_testbed::{
    Testbed, can_run, hawser_bin,
    mesh::Mesh,
    metrics::{sample, scrape},
    peers::{echo_server, wait_until},
    write_atomically,
};

const A: &str = "spiffe://cluster.local/ns/default/sa/a";
const B: &str = "spiffe://cluster.local/ns/default/sa/b";
const ADMIN: &str = "http://127.0.0.1:15000";

#[test]
fn metrics_count_every_byte_with_istio_labels_on_both_ends() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;
    let _echo = echo_server(&m.b, 7000)?;
    const BYTES: usize = 300_000;
    let load = env!("CARGO_BIN_EXE_hawser-echo-load");
    let out =
        m.a.run(&[load, &format!("{}:7000", m.b.ip), "1", &BYTES.to_string()])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let bytes = BYTES as f64;
    for (node, reporter) in [(&m.node1, "source"), (&m.node2, "destination")] {
        let labels = [
            ("reporter", reporter),
            ("source_workload", "a"),
            ("source_workload_namespace", "default"),
            ("source_principal", A),
            ("destination_workload", "b"),
            ("destination_workload_namespace", "default"),
            ("destination_principal", B),
            ("connection_security_policy", "mutual_tls"),
        ];
        let mut text = String::new();
        wait_until(Duration::from_secs(10), "the connection to close", || {
            text = scrape(node).unwrap_or_default();
            sample(&text, "istio_tcp_connections_closed_total", &labels) == Some(1.0)
        })
        .with_context(|| format!("{} metrics:\n{text}", node.name))?;
        let value = |metric| sample(&text, metric, &labels);
        assert_eq!(value("istio_tcp_connections_opened_total"), Some(1.0));
        // Istio's convention: "received" is the request (client→server), "sent" the
        // response; the echo makes them equal to what the client sent.
        assert_eq!(
            value("istio_tcp_received_bytes_total"),
            Some(bytes),
            "{text}"
        );
        assert_eq!(value("istio_tcp_sent_bytes_total"), Some(bytes));
        assert!(
            sample(&text, "hawser_svid_expiry_timestamp_seconds", &[]).is_some_and(|t| t > 1e9)
        );
        assert!(
            sample(
                &text,
                "hawser_ca_request_duration_seconds_count",
                &[("method", "CreateCertificate"), ("result", "ok")]
            )
            .is_some_and(|n| n >= 1.0)
        );
        assert_eq!(
            sample(
                &text,
                "hawser_ebpf_map_entries",
                &[("map", "ENROLLED_NETNS")]
            ),
            Some(1.0)
        );
    }
    let side = |node, side| {
        let text = scrape(node).unwrap_or_default();
        sample(
            &text,
            "hawser_tls_handshake_duration_seconds_count",
            &[("side", side), ("result", "ok")],
        )
    };
    assert_eq!(side(&m.node1, "client"), Some(1.0));
    assert_eq!(side(&m.node2, "server"), Some(1.0));
    Ok(())
}

#[test]
fn series_of_a_workload_that_left_are_dropped_after_the_grace_period() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::with_node_args(&["--metrics-grace-secs", "1", "--log-format", "json"])?;
    let _echo = echo_server(&m.b, 7000)?;
    let load = env!("CARGO_BIN_EXE_hawser-echo-load");
    let out = m.a.run(&[load, &format!("{}:7000", m.b.ip), "1", "1000"])?;
    assert!(out.status.success());
    // The access log as JSON lines, for collectors.
    m.d2.wait_for("the JSON access record", Duration::from_secs(10), |log| {
        log.contains("\"target\":\"hawser::access\"")
    })?;
    let record: serde_json::Value = serde_json::from_str(
        &m.d2
            .lines_with(&["\"target\":\"hawser::access\""])
            .remove(0),
    )?;
    let fields = &record["fields"];
    assert_eq!(fields["direction"], "tunnel", "{record}");
    assert_eq!(fields["src_identity"], A);
    assert_eq!(fields["dst_identity"], B);
    assert_eq!(
        (&fields["bytes_sent"], &fields["bytes_received"]),
        (&1000.into(), &1000.into())
    );
    assert!(fields["duration_ms"].is_u64() && fields["tls"].is_string());
    let from_a = [("source_workload", "a")];
    wait_until(Duration::from_secs(10), "a's series on node2", || {
        scrape(&m.node2)
            .is_ok_and(|t| sample(&t, "istio_tcp_connections_closed_total", &from_a).is_some())
    })?;

    m.bed.enroll(&[&m.b])?; // pod a is deleted
    m.d1.wait_for("a unenrolled", Duration::from_secs(10), |log| {
        log.contains("pod unenrolled")
    })?;
    for node in [&m.node1, &m.node2] {
        wait_until(Duration::from_secs(15), "a's series to go", || {
            scrape(node)
                .is_ok_and(|t| sample(&t, "istio_tcp_connections_closed_total", &from_a).is_none())
        })
        .with_context(|| format!("on {}", node.name))?;
    }
    Ok(())
}

#[test]
fn the_cli_and_certs_show_what_the_daemon_holds_and_the_peer_presents() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;

    // The certificate b's tunnel listener presents, as a TLS client sees it.
    let tunnel = format!("{}:15008", m.b.ip);
    let script = format!(
        "openssl s_client -connect {tunnel} -alpn hawser-tunnel/1 </dev/null 2>/dev/null | openssl x509 -noout -serial"
    );
    let out = m.node1.run(&["sh", "-c", &script])?;
    let presented = String::from_utf8(out.stdout)?
        .trim()
        .trim_start_matches("serial=")
        .to_lowercase();
    assert!(
        !presented.is_empty(),
        "no certificate presented on {tunnel}"
    );

    let certs: serde_json::Value = serde_json::from_str(&m.node2.hawser(&["certs", "--json"])?)?;
    let held = certs["identities"]
        .as_array()
        .context("identities")?
        .iter()
        .find(|i| i["identity"] == B)
        .context("b's identity in /certs")?;
    assert_eq!(held["state"], "valid");
    assert_eq!(held["chain"][0]["serial"], presented.as_str());
    assert_eq!(held["chain"][0]["uri_sans"][0], B);
    let root_pem = std::fs::read_to_string(&m.ca.root)?;
    assert_eq!(
        certs["trust_roots"][0]["pem"].as_str().map(str::trim),
        Some(root_pem.trim())
    );
    let table = m.node2.hawser(&["certs"])?;
    assert!(table.contains(B) && table.contains(&presented), "{table}");

    // The same chain, fetched and checked by the CLI of a's node against its own bundle.
    let peer: serde_json::Value =
        serde_json::from_str(&m.node1.hawser(&["certs", "--peer", &tunnel, "--json"])?)?;
    assert_eq!(peer["identity"], B, "{peer}");
    assert_eq!(peer["chain"][0]["serial"], presented.as_str(), "{peer}");
    let table = m.node1.hawser(&["certs", "--peer", &tunnel])?;
    assert!(
        table.contains(&format!("verified against this node's trust bundle: {B}")),
        "{table}"
    );
    // A server whose certificate is not the mesh's: refused.
    let (crt, key) = (m.bed.dir().join("other.crt"), m.bed.dir().join("other.key"));
    let (crt, key) = (crt.to_str().context("path")?, key.to_str().context("path")?);
    let made = m.node1.run(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=elsewhere",
        "-days",
        "1",
        "-keyout",
        key,
        "-out",
        crt,
    ])?;
    anyhow::ensure!(made.status.success(), "openssl req: {made:?}");
    let _other = m.node1.spawn(&[
        "openssl",
        "s_server",
        "-quiet",
        "-accept",
        "127.0.0.1:15443",
        "-alpn",
        "hawser-tunnel/1",
        "-cert",
        crt,
        "-key",
        key,
    ])?;
    wait_until(Duration::from_secs(10), "openssl s_server", || {
        m.node1
            .run(&["socat", "-u", "/dev/null", "TCP:127.0.0.1:15443"])
            .is_ok_and(|o| o.status.success())
    })?;
    let why = m.node1.hawser(&["certs", "--peer", "127.0.0.1:15443"]);
    let why = why.expect_err("a chain from elsewhere passed").to_string();
    // Not a mesh identity, so no trust domain's roots to check its chain against.
    assert!(
        why.contains("does not pass") && why.contains("0 URI SANs, not one SPIFFE ID"),
        "{why}"
    );

    let status: serde_json::Value = serde_json::from_str(&m.node1.hawser(&["status", "--json"])?)?;
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["pods"][0]["pod"], "default/a");
    assert!(status["pods"][0]["svid_serial"].is_string());
    let table = m.node1.hawser(&["status"])?;
    assert!(table.contains("ready") && table.contains("default/a") && table.contains(A));

    let table = m.node1.hawser(&["workloads"])?;
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
    };
    assert_eq!(
        row("a").map(|r| r[3..].to_vec()),
        Some(vec!["node1", "a", "yes"]),
        "{table}"
    );
    assert_eq!(
        row("b").map(|r| r[3..].to_vec()),
        Some(vec!["node2", "b", "no"])
    );
    let dump: serde_json::Value = serde_json::from_str(&m.node1.hawser(&["workloads", "--json"])?)?;
    assert_eq!(dump["enrolled"], serde_json::json!(["default/a"]));

    // Policy: only c may call b; a plaintext caller is held by STRICT first.
    write_atomically(
        &m.bed.config_dir().join("policy.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: only-c, namespace: default}\n\
         spec: {selector: {matchLabels: {app: b}}, action: ALLOW, rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/c]}}]}]}\n\
         ---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {name: strict, namespace: default}\nspec: {mtls: {mode: STRICT}}\n",
    )?;
    let check = |from: &str| -> Result<serde_json::Value> {
        let args = ["policy", "check", "--from", from, "--to", "b:80", "--json"];
        Ok(serde_json::from_str(&m.node1.hawser(&args)?)?)
    };
    wait_until(Duration::from_secs(10), "the policy to load", || {
        check("default/a").is_ok_and(|c| c["allowed"] == false)
    })?;
    let denied = check("default/a")?;
    assert_eq!(denied["decided_by"], "AuthorizationPolicy");
    assert!(
        denied["reason"]
            .as_str()
            .unwrap_or("")
            .contains("default/only-c")
    );
    let allowed = check("spiffe://cluster.local/ns/default/sa/c")?;
    assert_eq!(allowed["allowed"], true);
    assert_eq!(
        allowed["reason"],
        "ALLOW policy default/only-c rules[0] matches"
    );
    let plaintext = check("none")?;
    assert_eq!(
        (&plaintext["decided_by"], &plaintext["mtls_mode"]),
        (&"PeerAuthentication".into(), &"STRICT".into())
    );
    let text = m
        .node1
        .hawser(&["policy", "check", "--from", "default/a", "--to", "b:80"])?;
    assert!(
        text.contains("DENY") && text.contains("default/only-c"),
        "{text}"
    );

    // The log level changes at run time.
    let set = m.node1.run(&[
        "curl",
        "-sS",
        "-X",
        "POST",
        &format!("{ADMIN}/logging?level=warn"),
    ])?;
    assert!(String::from_utf8_lossy(&set.stdout).contains("level: warn"));
    assert_eq!(
        m.node1.http_get(&format!("{ADMIN}/logging"))?,
        (200, "level: warn\n".into())
    );
    let bad = m.node1.run(&[
        "curl",
        "-sS",
        "-X",
        "POST",
        &format!("{ADMIN}/logging?level=x=y=z"),
    ])?;
    assert!(String::from_utf8_lossy(&bad.stdout).contains("invalid log level"));
    Ok(())
}

#[test]
fn readiness_waits_until_every_pod_is_enrolled() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let a = bed.pod(&node, "a")?;
    // A pod whose namespace is gone (e.g. deleted under the daemon) cannot be enrolled.
    let ghost = a
        .workload_yaml()
        .replace("name: a", "name: ghost")
        .replace(&a.ip, "10.1.0.99")
        .replace(
            &a.netns_path.display().to_string(),
            "/run/netns/hawser-no-such-pod",
        );
    write_atomically(
        &bed.config_dir().join("workloads.yaml"),
        &format!("{}---\n{ghost}", a.workload_yaml()),
    )?;
    let _daemon = bed.start_daemon(&node)?;
    let ready = format!("{ADMIN}/healthz/ready");
    let (code, body) = node.http_get(&ready)?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("enrolling default/ghost failed"), "{body}");

    bed.enroll(&[&a])?;
    wait_until(Duration::from_secs(10), "ready", || {
        node.http_get(&ready).is_ok_and(|(code, _)| code == 200)
    })?;
    assert_eq!(
        node.http_get("http://127.0.0.1:15020/healthz/ready")?.0,
        200
    );
    Ok(())
}

#[test]
fn start_up_failures_say_what_is_missing_and_how_to_fix_it() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let not_cgroup2 = bed.dir().join("plain-dir");
    std::fs::create_dir_all(&not_cgroup2)?;
    let bin = hawser_bin();
    let node_args = |cgroup: &std::path::Path| {
        vec![
            "node".to_string(),
            "--node-name=n".into(),
            format!("--config-dir={}", bed.config_dir().display()),
            format!("--pin-dir={}", bed.pin_dir().join("n").display()),
            format!("--cgroup={}", cgroup.display()),
        ]
    };
    let failure = |argv: &mut std::process::Command| -> Result<String> {
        let out = argv.output()?;
        assert!(!out.status.success());
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };

    let err = failure(std::process::Command::new(&bin).args(node_args(&not_cgroup2)))?;
    assert!(
        err.contains("is not a cgroup v2 directory (try: mount -t cgroup2"),
        "{err}"
    );

    let err = failure(
        std::process::Command::new("setpriv")
            .args(["--bounding-set=-bpf,-net_admin,-sys_admin", "--"])
            .arg(&bin)
            .args(node_args(&not_cgroup2)),
    )?;
    assert!(
        err.contains("missing capabilities: CAP_BPF") && err.contains("run as root or grant them"),
        "{err}"
    );
    Ok(())
}
