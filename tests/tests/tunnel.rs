//! End-to-end: pod-to-pod traffic between two nodes crosses the link only inside mutual
//! TLS between the node daemons, authenticated by the workloads' own SVIDs.

use std::time::Duration;

use anyhow::{Context, Result};
use hawser_testbed::{
    Pod, Proc, Service, can_run,
    copies::{Copied, CopyWatch},
    mesh::Mesh,
    peers::{
        Capture, Nginx, Reader, curl, echo_once, echo_server, quiet_server, rr_counts,
        wait_listening, wait_until,
    },
    pki,
};

const A: &str = "spiffe://cluster.local/ns/default/sa/a";
const B: &str = "spiffe://cluster.local/ns/default/sa/b";

#[test]
fn traffic_between_nodes_is_mtls_on_the_wire() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;
    let nginx = Nginx::start(&m.bed, &m.b)?;
    let capture = Capture::start(&m.bed, &m.node1, &m.link)?;
    assert_eq!(
        curl(&m.a, &format!("http://{}/hello.txt", m.b.ip))?,
        nginx.body
    );
    // On the link: the tunnel port (up to its close), and neither the request nor the
    // response in clear.
    let tunnel = format!("{}.15008 > {}", m.b.ip, m.a.ip);
    let wire = capture.stop_once("the tunnel on the wire", |wire| {
        wire.lines()
            .any(|l| l.contains(&tunnel) && l.contains("[F"))
    })?;
    assert!(
        !wire.contains("GET /hello.txt") && !wire.contains("hello from b"),
        "plaintext on the wire:\n{wire}"
    );
    assert!(
        !wire.contains(&format!("{}.80:", m.b.ip)),
        "a direct connection to port 80 crossed the link"
    );
    // Each side proved the other's identity; the app saw the client pod's own address.
    m.d1.wait_for("the outbound record", Duration::from_secs(5), |log| {
        let peer = format!("dst_identity=\"{B}\"");
        log.lines().any(|l| {
            l.contains("direction=\"outbound\"")
                && l.contains("security=\"mtls\"")
                && l.contains(&peer)
        })
    })?;
    m.d2.wait_for("the tunnel record", Duration::from_secs(5), |log| {
        log.lines().any(|l| {
            l.contains("direction=\"tunnel\"")
                && l.contains("connection closed")
                && l.contains(&format!("src_identity=\"{A}\""))
        })
    })?;
    assert_eq!(nginx.clients(), vec![m.a.ip.clone()]);

    // Where the kernel has TLS, it encrypted; elsewhere rustls did. Both ends say which.
    let path = format!("tls=\"{}\"", hawser_testbed::expected_tls_path());
    for d in [&m.d1, &m.d2] {
        assert!(
            d.lines_with(&["connection closed", "security=\"mtls\"", &path])
                .len()
                == 1,
            "{}",
            d.log()
        );
    }
    if hawser_testbed::expected_tls_path() == "ktls" {
        // Counters are per network namespace: read them where the sockets live.
        for pod in [&m.a, &m.b] {
            let stat = String::from_utf8(pod.run(&["cat", "/proc/net/tls_stat"])?.stdout)?;
            assert!(
                tls_stat(&stat, "TlsTxSw") >= 1 && tls_stat(&stat, "TlsRxSw") >= 1,
                "{}: {stat}",
                pod.name
            );
        }
    }
    Ok(())
}

/// `ktls` where the kernel has the `tls` module loaded (the VM tests load it), else
/// `userspace`.
fn tls_stat(stat: &str, name: &str) -> u64 {
    stat.lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

#[test]
fn a_server_with_the_wrong_identity_is_refused() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;
    // Pod c sits on node2's network but is registered on node3, which has no daemon: an
    // impostor (a real openssl server) answers on its 15008 with a valid mesh certificate
    // for another identity.
    let c = m.bed.pod(&m.node2, "c")?;
    let c_yaml = c
        .workload_yaml()
        .replace("nodeName: node2", "nodeName: node3");
    let yaml = [m.a.workload_yaml(), m.b.workload_yaml(), c_yaml].join("---\n");
    hawser_testbed::write_atomically(&m.bed.config_dir().join("workloads.yaml"), &yaml)?;
    m.d1.wait_for("the registry to know c", Duration::from_secs(5), |log| {
        log.contains("workload configuration reloaded")
    })?;
    let impostor = impostor_cert(&m, "spiffe://cluster.local/ns/default/sa/evil")?;
    let _server = c.spawn(&[
        "openssl",
        "s_server",
        "-quiet",
        "-accept",
        "15008",
        "-tls1_3",
        "-cert",
        &impostor.0,
        "-key",
        &impostor.1,
    ])?;
    // Wait for the impostor to listen (loopback inside c is not captured).
    hawser_testbed::peers::wait_until(Duration::from_secs(30), "openssl s_server", || {
        c.run(&["socat", "-u", "/dev/null", "TCP:127.0.0.1:15008"])
            .is_ok_and(|o| o.status.success())
    })?;
    assert!(
        curl(&m.a, &format!("http://{}/", c.ip)).is_err(),
        "the request must not go through"
    );
    m.d1.wait_for("the refusal", Duration::from_secs(15), |log| {
        log.lines().any(|l| {
            l.contains("connection refused")
                && l.contains("server identity spiffe://cluster.local/ns/default/sa/evil is not spiffe://cluster.local/ns/default/sa/c")
        })
    })?;
    Ok(())
}

#[test]
fn a_revoked_client_is_refused() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;
    let nginx = Nginx::start(&m.bed, &m.b)?;
    assert_eq!(
        curl(&m.a, &format!("http://{}/hello.txt", m.b.ip))?,
        nginx.body
    );
    revoke(&m, &format!("identities: [\"{A}\"]"), A, &[&m.d2])?;
    assert!(curl(&m.a, &format!("http://{}/hello.txt", m.b.ip)).is_err());
    m.d2.wait_for("the refusal", Duration::from_secs(5), |log| {
        log.lines().any(|l| {
            l.contains("connection refused")
                // The handshake's certificate check refuses it: an mTLS connection refused,
                // nothing plaintext.
                && l.contains("refusal=\"handshake\"")
                && l.contains("security=\"mtls\"")
                && l.contains(&format!("the peer identity {A} is revoked"))
        })
    })?;
    assert_eq!(
        nginx.clients().len(),
        1,
        "the app saw only the request from before the revocation"
    );
    Ok(())
}

/// What the app sent before its tunnel was up crosses the link in the preamble's record
/// (in a frame on a serial session): the server daemon has it when it reaches the app
/// (not a record later), and the connection costs one record less. Both daemons count it.
#[test]
fn an_apps_first_bytes_cross_in_the_preambles_record() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    first_bytes_cross_with_the_preamble(&[], 0)?;
    // A frame's header is a 4-byte length. Where the kernel has TLS the flag is
    // ignored: one session per connection.
    let frame = match hawser_testbed::expected_tls_path() {
        "ktls" => 0,
        _ => 4,
    };
    first_bytes_cross_with_the_preamble(&["--tunnel-reuse"], frame)
}

/// The record a 100-byte request crosses the link in, with daemons given `args`; `frame`:
/// the bytes of a frame's header before it.
fn first_bytes_cross_with_the_preamble(args: &[&str], frame: usize) -> Result<()> {
    let m = Mesh::with_node_args(args)?;
    let _echo = echo_server(&m.b, 7000)?;
    let capture = Capture::start(&m.bed, &m.node1, &m.link)?;
    // Written as soon as the connection is up, by the process that connected: the first
    // connection between the pods waits for a handshake, so the request is there when
    // its daemon reads.
    let request = "r".repeat(100);
    let echo = echo_once(&m.a, (&m.b.ip, 7000), &request, &[], None)?;
    assert_eq!(echo, request);
    // TLS 1.3 application-data records from a to b: plaintext + content type + 16-byte
    // tag. The preamble is 10 bytes.
    let from_a = format!("tls.record.opaque_type == 23 && ip.src == {}", m.a.ip);
    let lengths = || -> Result<Vec<usize>> {
        let lines = capture.fields(&from_a, &["tls.record.length"])?;
        let each = lines.iter().flat_map(|l| l.split(','));
        Ok(each.map(str::parse).collect::<Result<_, _>>()?)
    };
    let record = |plaintext: usize| plaintext + 1 + 16;
    let together = record(10 + frame + 100);
    // tcpdump may lag behind on a busy or emulated machine.
    let mut seen = Vec::new();
    let waited = wait_until(Duration::from_secs(30), "the request's record", || {
        seen = lengths().unwrap_or_default();
        seen.contains(&together)
    });
    waited.with_context(|| format!("{args:?}: records of {seen:?}"))?;
    for alone in [record(10), record(frame + 100)] {
        assert!(
            !seen.contains(&alone),
            "{args:?}: a record of {alone}: {seen:?}"
        );
    }
    let counted = "bytes_sent=100 bytes_received=100";
    for d in [&m.d1, &m.d2] {
        d.wait_for("the connection's record", Duration::from_secs(5), |log| {
            log.lines()
                .any(|l| l.contains("connection closed") && l.contains(counted))
        })?;
    }
    Ok(())
}

/// An app that resets its connection before sending anything: the daemon finds the reset
/// where it reads the first bytes, and the connection ends there, logged as cut; the
/// server's app is never reached (a reset read there would look like a clean end later).
#[test]
fn a_connection_the_app_resets_at_once_reaches_no_server() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;
    let accepted = m.bed.dir().join("accepted");
    let listen = "TCP-LISTEN:7200,reuseaddr,fork";
    let note = format!("SYSTEM:echo accepted >> {}", accepted.display());
    let _server = m.b.spawn(&["socat", listen, &note])?;
    wait_listening(&m.b, 7200, "socat")?;
    // The check's own connection.
    wait_until(Duration::from_secs(10), "the check's note", || {
        accepted.exists()
    })?;
    std::fs::remove_file(&accepted)?;
    let reset = "import socket, struct, sys\n\
        s = socket.create_connection((sys.argv[1], 7200))\n\
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
        s.close()";
    let out = m.a.run(&["python3", "-c", reset, &m.b.ip])?;
    assert!(out.status.success(), "{out:?}");
    m.d1.wait_for("the cut record", Duration::from_secs(10), |log| {
        log.lines().any(|l| {
            l.contains("connection cut")
                && l.contains("direction=\"outbound\"")
                && l.contains("bytes_sent=0")
                && l.to_lowercase().contains("reset")
        })
    })?;
    std::thread::sleep(Duration::from_secs(1));
    assert!(!accepted.exists(), "the server's app was reached");
    // The witness: a connection that stays reaches it.
    let send = format!("printf x | socat -t 5 - TCP:{}:7200", m.b.ip);
    assert!(m.a.run(&["sh", "-c", &send])?.status.success());
    wait_until(Duration::from_secs(10), "the app to accept", || {
        accepted.exists()
    })?;
    Ok(())
}

#[test]
fn a_gibibyte_crosses_the_tunnel_intact() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;
    // 8 connections x 128 MiB = 1 GiB each way (the emulated VM moves less: it is slow).
    let each = bulk_bytes(1 << 30) / 8;
    echo_in_bulk(&m, 8, each)?;
    let full = format!("bytes_sent={each} bytes_received={each}");
    m.d1.wait_for("8 complete records", Duration::from_secs(10), |log| {
        log.lines()
            .filter(|l| l.contains("security=\"mtls\"") && l.contains(&full))
            .count()
            == 8
    })?;
    Ok(())
}

/// With kernel TLS the payload never enters the daemons: a bulk echo's bytes pass them
/// by `splice` alone, and what their threads copy through system calls (strace counts
/// it) is the handshakes and the log. On the userspace path, the same count sees every
/// byte cross each daemon twice each way: the witness that the count misses no copy.
#[test]
fn the_payload_enters_the_daemons_only_without_kernel_tls() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;
    // 4 connections x 8 MiB each way (the emulated VM moves less: it is slow).
    let total = bulk_bytes(32 << 20);
    let watches =
        [&m.d1, &m.d2].map(|d| CopyWatch::attach(d.pid().context("the daemon runs")?, m.bed.dir()));
    let watches: Vec<CopyWatch> = watches.into_iter().collect::<Result<_>>()?;
    echo_in_bulk(&m, 4, total / 4)?;
    let copied: Vec<Copied> = watches
        .into_iter()
        .map(CopyWatch::finish)
        .collect::<Result<_>>()?;
    for (daemon, copied) in ["client's", "server's"].iter().zip(copied) {
        let seen = format!("the {daemon} daemon copied {copied:?} of {total} bytes each way");
        if hawser_testbed::expected_tls_path() == "ktls" {
            // The handshakes are seen (the count works), the payload is not.
            assert!(copied.read > 0 && copied.written > 0, "{seen}");
            assert!(copied.read + copied.written < total / 32, "{seen}");
        } else {
            // Plaintext from its app one way, records from the other daemon the other.
            assert!(
                copied.read >= 2 * total && copied.written >= 2 * total,
                "{seen}"
            );
        }
        eprintln!("{seen}");
    }
    Ok(())
}

/// `default` bytes, or fewer where `HAWSER_BULK_BYTES` says so (the emulated VM).
fn bulk_bytes(default: u64) -> u64 {
    std::env::var("HAWSER_BULK_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Echoes `each` bytes on each of `connections` connections from pod a to an echo server
/// in pod b, and checks every byte came back.
fn echo_in_bulk(m: &Mesh, connections: u64, each: u64) -> Result<()> {
    let _echo = echo_server(&m.b, 7000)?;
    let load = env!("CARGO_BIN_EXE_hawser-echo-load");
    let connections = connections.to_string();
    let argv = [
        load,
        &format!("{}:7000", m.b.ip),
        &connections,
        &each.to_string(),
    ];
    let out = m.a.run(&argv)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("echo ok: {connections}/{connections}")),
        "{stdout}"
    );
    Ok(())
}

/// A client that closes first (an echo, a probe, a request-reply protocol) leaves each
/// delivery's port in TIME_WAIT in the app's pod for a minute: the server daemon ends the
/// delivery when the client ends its connection. Connections keep arriving when there are
/// more of them within the minute than the app pod's port range holds (the client's own
/// range is its own limit, as without the mesh), and when live ones to the app hold all
/// but one of its ports. Each is echoed: delivered, not refused.
#[test]
fn more_connections_within_a_minute_than_the_app_pods_port_range_holds_arrive() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;
    let bench = env!("CARGO_BIN_EXE_hawser-bench");
    let _echo = m.b.spawn(&[bench, "echo-server", "7000"])?;
    wait_listening(&m.b, 7000, "the echo server")?;
    let to_b = format!("{}:7000", m.b.ip);
    let refused = || m.d2.lines_with(&["connection refused"]).first().cloned();

    // 15 live connections in a range of 16 ports: the last ones find the free ports left.
    // (The daemon reads a pod's range at its first delivery there, then every 10 s.)
    let first = 40100..=40115;
    m.b.port_range("40100 40115")?;
    let log = m.bed.dir().join("hold.log");
    let argv = [bench, "hold", &to_b, "15"];
    let mut hold = Proc::spawn_logged(&argv, &m.a.netns_path, &m.a.cgroup, &log)?;
    let held = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(Duration::from_secs(20), "15 connections held", || {
        held().contains("held 15") || hold.exited()
    })?;
    assert!(held().contains("held 15"), "{}\n{:?}", held(), refused());
    let ports = delivery_ports(&m)?;
    assert!(
        ports.len() >= 15 && ports.iter().all(|p| first.contains(p)),
        "{ports:?}"
    );
    drop(hold);

    // Four clients at once through 64 ports, new connections as fast as they go (a few
    // thousand in 3 s), once the daemon reads the new range.
    let second = 40000..=40063;
    m.b.port_range("40000 40063")?;
    std::thread::sleep(Duration::from_secs(11));
    let out =
        m.a.run(&[bench, "rr", &to_b, "1", "newconn", "0", "4", "3000"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (requests, errors) = rr_counts(&stdout).context("no rr report")?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(errors, 0, "{stdout}\n{:?}", refused());
    assert!(requests > 4 * 64, "{stdout}");
    let ports = delivery_ports(&m)?;
    let in_second = ports.iter().filter(|&p| second.contains(p)).count();
    let outside = ports
        .iter()
        .find(|p| !first.contains(p) && !second.contains(p));
    assert!(in_second >= 32 && outside.is_none(), "{ports:?}");
    Ok(())
}

/// The ports of the deliveries in b (sockets bound to a's address there), in any state.
fn delivery_ports(m: &Mesh) -> Result<Vec<u16>> {
    let out = m.b.run(&["ss", "-Htan", "src", &m.a.ip])?;
    let text = String::from_utf8(out.stdout)?;
    let local = text.lines().filter_map(|l| l.split_whitespace().nth(3));
    let ports = local.filter_map(|a| a.rsplit_once(':')?.1.parse().ok());
    Ok(ports
        .collect::<std::collections::BTreeSet<u16>>()
        .into_iter()
        .collect())
}

/// A certificate for `identity` signed by the mesh's root (the test can read the CA's key):
/// valid in every way except secure naming. Returns (cert, key) paths.
fn impostor_cert(m: &Mesh, identity: &str) -> Result<(String, String)> {
    let mesh_ca = pki::Pair::mesh_ca(m.ca.root.parent().unwrap());
    let ext = format!("subjectAltName=URI:{identity}");
    let pair = pki::leaf(
        &m.bed.dir().join("impostor"),
        "impostor",
        "/CN=evil",
        &ext,
        &mesh_ca,
    )?;
    Ok((
        pair.cert.display().to_string(),
        pair.key.display().to_string(),
    ))
}

/// Istio YAML, as a user would apply it, in the daemons' configuration directory; waits
/// until both daemons read it (a reload more than before).
fn apply_policy(m: &Mesh, yaml: &str) -> Result<()> {
    let reloaded = "workload configuration reloaded";
    let before = [&m.d1, &m.d2].map(|d| d.count(reloaded));
    hawser_testbed::write_atomically(&m.bed.config_dir().join("policies.yaml"), yaml)?;
    for (d, before) in [&m.d1, &m.d2].into_iter().zip(before) {
        d.wait_for("the policy", Duration::from_secs(10), |log| {
            log.matches(reloaded).count() > before
        })?;
    }
    Ok(())
}

#[test]
fn authorization_and_peer_authentication_are_enforced() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;
    let nginx = Nginx::start(&m.bed, &m.b)?;
    // c: a pod on node2 outside the mesh (not enrolled), a plaintext client of b.
    let c = m.bed.pod(&m.node2, "c")?;
    let url = format!("http://{}/hello.txt", m.b.ip);
    assert_eq!(
        curl(&c, &url)?,
        nginx.body,
        "PERMISSIVE by default: plaintext is accepted"
    );

    apply_policy(
        &m,
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b-from-c-only, namespace: default}
spec:
  selector: {matchLabels: {app: b}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/c"]}}]
"#,
    )?;
    // STRICT: the plaintext client is refused before the app.
    assert!(curl(&c, &url).is_err());
    m.d2.wait_for("the STRICT refusal", Duration::from_secs(5), |log| {
        log.lines()
            .any(|l| l.contains("connection refused") && l.contains("PeerAuthentication STRICT"))
    })?;
    // a comes through mTLS, but the ALLOW policy names only c: refused.
    assert!(curl(&m.a, &url).is_err());
    m.d2.wait_for("the authorization refusal", Duration::from_secs(5), |log| {
        log.lines().any(|l| {
            l.contains("connection refused")
                && l.contains("refusal=\"policy\"")
                && l.contains("no rule of ALLOW policies default/b-from-c-only matches")
        })
    })?;
    let (_, metrics) = m.node2.http_get("http://127.0.0.1:15020/metrics")?;
    for refused in [
        "hawser_connections_refused_total{direction=\"inbound\",reason=\"policy\"} 1",
        "hawser_connections_refused_total{direction=\"tunnel\",reason=\"policy\"} 1",
    ] {
        assert!(metrics.contains(refused), "{refused} in\n{metrics}");
    }
    assert_eq!(
        nginx.clients(),
        vec![c.ip.clone()],
        "only the request made before the policies reached the app"
    );

    // Allowing a's principal lets it through again.
    apply_policy(
        &m,
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b-from-a, namespace: default}
spec:
  selector: {matchLabels: {app: b}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/a"]}}]
    to: [{operation: {ports: ["80"]}}]
"#,
    )?;
    m.d2.wait_for("the new policy", Duration::from_secs(10), |log| {
        log.matches("workload configuration reloaded").count() >= 2
    })?;
    assert_eq!(curl(&m.a, &url)?, nginx.body);
    Ok(())
}

#[test]
fn a_closed_app_port_is_refused_at_once_through_the_tunnel_and_on_the_node() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;
    let c = m.bed.pod(&m.node2, "c")?; // outside the mesh, beside b
    for (from, path) in [(&m.a, "tunnel"), (&c, "inbound")] {
        let started = std::time::Instant::now();
        let url = format!("http://{}:7999/", m.b.ip);
        assert!(curl(from, &url).is_err(), "nothing listens on 7999");
        // The app's kernel answers the daemon's delivery with a reset: no connect timeout.
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "{path}: refused after {took:?}"
        );
        m.d2.wait_for("the refusal", Duration::from_secs(5), |log| {
            log.lines().any(|l| {
                l.contains("connection refused")
                    && l.contains(&format!("direction=\"{path}\""))
                    && l.contains("Connection refused")
            })
        })?;
    }
    Ok(())
}

#[test]
fn a_connection_made_before_the_pods_svid_arrives_waits_for_it() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let mut m = Mesh::new()?;
    let nginx = Nginx::start(&m.bed, &m.b)?;
    // a's daemon restarts while the CA is down: it captures a, but holds no SVID.
    m.ca_service.stop()?;
    m.d1.stop()?;
    m.d1.restart()?;
    let (a, url) = (m.a.clone(), format!("http://{}/hello.txt", m.b.ip));
    let started = std::time::Instant::now();
    let request = std::thread::spawn(move || curl(&a, &url));
    std::thread::sleep(Duration::from_secs(2));
    m.ca_service.restart()?;
    let body = request.join().expect("the curl thread")?;
    assert_eq!(
        body, nginx.body,
        "the request waited for a's SVID and went through"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    Ok(())
}

#[test]
fn a_stream_cut_by_a_dead_peer_daemon_reaches_the_app_as_a_reset() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let mut m = Mesh::new()?;
    let _endless =
        m.b.spawn(&["socat", "TCP-LISTEN:7100,reuseaddr,fork", "EXEC:yes"])?;
    wait_listening(&m.b, 7100, "the endless server")?;
    let reader = Reader::start(&m.bed, &m.a, &m.b.ip, 7100)?;
    reader.wait_started("bytes through the tunnel")?;
    // The peer's daemon dies mid-stream: no close_notify ever comes.
    m.d2.kill();
    let said = reader.outcome()?;
    assert!(
        said.starts_with("ERROR ECONNRESET"),
        "the app read {said:?}"
    );
    let a_itself = format!("src={}:", m.a.ip);
    m.d1.wait_for(
        "the cut in the access log",
        Duration::from_secs(10),
        |log| {
            log.lines().any(|l| {
                l.contains("connection cut")
                    && l.contains("direction=\"outbound\"")
                    && l.contains(&a_itself)
                    && l.contains("close_notify")
                    && !l.contains("bytes_received=0 ")
            })
        },
    )?;
    Ok(())
}

/// A tunnel's key seals a bounded number of records (2^24 for AES-GCM, or the operator's
/// lower `--tls-records-per-key`). Out of rustls (in the kernel's TLS, or the daemon's
/// record layer without it) keys are not updated: a connection that would send more
/// under one key is cut (its app reads a reset), and the wire carries no more records
/// under it.
#[test]
fn a_stream_longer_than_a_tunnel_key_may_seal_is_cut_before_it() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    const LIMIT: usize = 64;
    const LINES: usize = 200;
    let m = Mesh::with_node_args(&["--tls-records-per-key", &LIMIT.to_string()])?;
    // A line per write, most of them a record each: more records than the key may seal.
    let talker = m.bed.dir().join("talker.sh");
    let script = format!("for i in $(seq {LINES}); do echo tick; sleep 0.02; done\n");
    std::fs::write(&talker, script)?;
    let exec = format!("EXEC:sh {}", talker.display());
    let _talker =
        m.b.spawn(&["socat", "TCP-LISTEN:7100,reuseaddr,fork", &exec])?;
    wait_listening(&m.b, 7100, "the talker")?;
    let capture = Capture::start(&m.bed, &m.node1, &m.link)?;
    let said = Reader::start(&m.bed, &m.a, &m.b.ip, 7100)?.outcome()?;
    // The server daemon's encrypted records on the link (from the tunnel port): its
    // handshake flight (under the handshake key, at most four records), then the tickets
    // and the stream under the traffic key (cut with no close_notify: at most LIMIT - 1).
    let records = || -> Result<usize> {
        // TLS 1.3 names an encrypted record's outer type its opaque type.
        let fields = ["tcp.srcport", "tls.record.opaque_type"];
        let packets = capture.fields("tls.record.opaque_type == 23", &fields)?;
        Ok(packets
            .iter()
            .filter_map(|l| l.strip_prefix("15008\t"))
            .map(|types| types.split(',').filter(|t| *t == "23").count())
            .sum())
    };
    assert!(
        said.starts_with("ERROR ECONNRESET"),
        "the app read {said:?}"
    );
    m.d2.wait_for(
        "the cut in the access log",
        Duration::from_secs(10),
        |log| {
            log.lines().any(|l| {
                l.contains("connection cut")
                    && l.contains("direction=\"tunnel\"")
                    && l.contains(&format!("of the {LIMIT} records it may"))
            })
        },
    )?;
    // Everything up to the end from b's daemon is on the link (a reset from the kernel's
    // TLS; from userspace a FIN without close_notify, which the client daemon takes for a
    // cut as well).
    capture.wait_for("the end of the tunnel on the link", |wire| {
        wire.lines()
            .any(|l| l.contains(".15008 > ") && (l.contains("Flags [R") || l.contains("Flags [F")))
    })?;
    let records = records()?;
    assert!(
        records <= LIMIT + 3,
        "{records} records from b's daemon, {LIMIT} allowed under its key"
    );
    assert!(records >= LIMIT - 8, "cut early: {records} records");
    Ok(())
}

#[test]
fn a_peer_that_vanishes_without_a_word_is_found_by_keepalives() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::with_node_args(&["--keepalive-secs", "2"])?;
    let _quiet = quiet_server(&m.b, 7300)?;
    let reader = Reader::start(&m.bed, &m.a, &m.b.ip, 7300)?;
    reader.wait_started("the greeting")?;
    // The link goes dark at node2's end: no FIN, no RST, nothing more from b's side. The
    // idle connection sends nothing either, so only keep-alive probes find out.
    let cut = std::time::Instant::now();
    let down = m.node2.run(&["ip", "link", "set", "to-node1", "down"])?;
    assert!(down.status.success(), "{down:?}");
    let said = reader.outcome()?;
    assert!(
        said.starts_with("ERROR ECONNRESET"),
        "the app read {said:?}"
    );
    // 2 s idle + 4 probes 1 s apart, with room for a slow machine; the reader itself
    // would give up only after 120 s.
    assert!(
        cut.elapsed() < Duration::from_secs(40),
        "{:?}",
        cut.elapsed()
    );
    // The probes go unanswered (timed out), or the link layer gives up first (no route).
    m.d1.wait_for("the cut in the access log", Duration::from_secs(5), |log| {
        log.lines().any(|l| {
            l.contains("connection cut")
                && ["timed out", "No route to host", "unreachable"]
                    .iter()
                    .any(|why| l.contains(why))
        })
    })?;
    Ok(())
}

#[test]
fn sigterm_lets_open_streams_finish_in_the_drain_window_and_cuts_the_rest() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let mut m = Mesh::with_node_args(&["--drain-secs", "6"])?;
    let _slow = m.b.spawn(&[
        "socat",
        "TCP-LISTEN:7400,reuseaddr,fork",
        "SYSTEM:echo hello; sleep 2; echo bye",
    ])?;
    let _endless = quiet_server(&m.b, 7401)?;
    wait_listening(&m.b, 7400, "the slow server")?;
    let finishing = Reader::start(&m.bed, &m.a, &m.b.ip, 7400)?;
    let endless = Reader::start(&m.bed, &m.a, &m.b.ip, 7401)?;
    finishing.wait_started("the slow greeting")?;
    endless.wait_started("the endless greeting")?;
    // A connection a opens while its daemon drains is refused, never let around it.
    let a = m.a.clone();
    let to_b = format!("TCP:{}:7400,connect-timeout=5", m.b.ip);
    let during = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        a.run(&["socat", "-u", "-T", "5", &to_b, "STDOUT"])
    });
    let stopping = std::time::Instant::now();
    m.d1.stop()?; // SIGTERM; returns when the daemon has exited
    let stopped = stopping.elapsed();
    let said = finishing.outcome()?;
    assert!(said.starts_with("EOF 10"), "the slow stream read {said:?}");
    let said = endless.outcome()?;
    assert!(
        said.starts_with("ERROR ECONNRESET"),
        "the endless stream read {said:?}"
    );
    assert!(
        stopped >= Duration::from_secs(5) && stopped < Duration::from_secs(20),
        "the daemon took {stopped:?} to stop with a 6 s drain window"
    );
    let during = during.join().expect("the thread")?;
    assert!(
        !during.status.success() || during.stdout.is_empty(),
        "a new connection got through a draining daemon: {during:?}"
    );
    let log = m.d1.log();
    assert!(log.contains("draining: no new connections"), "{log}");
    assert!(
        log.lines().any(|l| l.contains("connection cut")
            && l.contains("drain window ended")
            && l.contains("dst=10.2.0.2:7401")),
        "{log}"
    );
    Ok(())
}

#[test]
fn open_connections_are_cut_when_policy_or_revocation_no_longer_allows_them() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;
    let c = m.bed.pod(&m.node2, "c")?; // outside the mesh, on b's node
    let _quiet = quiet_server(&m.b, 7200)?;
    let open = |from: &Pod| -> Result<Reader> {
        let reader = Reader::start(&m.bed, from, &m.b.ip, 7200)?;
        reader.wait_started("the greeting")?;
        Ok(reader)
    };
    let cut = |reader: Reader, why: &str| -> Result<()> {
        let said = reader.outcome()?;
        assert!(
            said.starts_with("ERROR ECONNRESET"),
            "{why}: the app read {said:?}"
        );
        m.d2.wait_for(why, Duration::from_secs(5), |log| {
            log.lines()
                .any(|l| l.contains("connection cut") && l.contains(why))
        })
    };
    let (through_tunnel, plaintext) = (open(&m.a)?, open(&c)?);

    // A DENY for a's principal: a's open tunnel connection is cut, c's plaintext one stays.
    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
        metadata: {name: no-a, namespace: default}\nspec:\n  action: DENY\n\
        \x20 rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/a]}}]}]\n";
    apply_policy(&m, deny)?;
    cut(
        through_tunnel,
        "no longer allowed: policy: DENY policy default/no-a",
    )?;
    // STRICT: the plaintext one is cut now.
    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
        metadata: {name: strict, namespace: default}\nspec: {mtls: {mode: STRICT}}\n";
    apply_policy(&m, strict)?;
    cut(
        plaintext,
        "no longer allowed: policy: PeerAuthentication STRICT",
    )?;
    // Back to allowed; then a's identity is revoked: cut within a bundle poll.
    apply_policy(&m, "")?;
    let through_tunnel = open(&m.a)?;
    std::fs::write(&m.ca.revocations, format!("identities: [\"{A}\"]\n"))?;
    cut(
        through_tunnel,
        &format!("no longer allowed: the peer identity {A} is revoked"),
    )?;
    Ok(())
}

#[test]
fn a_deny_during_the_drain_window_cuts_what_it_no_longer_allows() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let mut m = Mesh::with_node_args(&["--drain-secs", "30"])?;
    let _quiet = quiet_server(&m.b, 7200)?;
    let open = Reader::start(&m.bed, &m.a, &m.b.ip, 7200)?;
    open.wait_started("the greeting")?;
    // b's daemon is told to stop: it drains a's connection, and still applies policy.
    let pid = nix::unistd::Pid::from_raw(m.d2.pid().expect("b's daemon runs"));
    let stopping = std::time::Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM)?;
    m.d2.wait_for("the drain", Duration::from_secs(5), |log| {
        log.contains("draining: no new connections")
    })?;
    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
        metadata: {name: no-a, namespace: default}\nspec:\n  action: DENY\n\
        \x20 rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/a]}}]}]\n";
    hawser_testbed::write_atomically(&m.bed.config_dir().join("policies.yaml"), deny)?;
    let said = open.outcome()?;
    assert!(
        said.starts_with("ERROR ECONNRESET"),
        "the app read {said:?}"
    );
    // Nothing left to drain: the daemon ends long before its window would.
    while !m.d2.exited() {
        let waited = stopping.elapsed();
        assert!(
            waited < Duration::from_secs(20),
            "still draining after {waited:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let why = "no longer allowed: policy: DENY policy default/no-a";
    let cut = m.d2.lines_with(&["connection cut", why]);
    assert!(!cut.is_empty(), "{}", m.d2.log());
    Ok(())
}

/// A daemon's `hawser_tls_handshakes_total` for `side` and `kind` (0 before any).
fn handshakes(node: &hawser_testbed::Node, side: &str, kind: &str) -> Result<u64> {
    counter(
        node,
        &format!("hawser_tls_handshakes_total{{kind=\"{kind}\",side=\"{side}\"}}"),
    )
}

fn spares(node: &hawser_testbed::Node, outcome: &str) -> Result<u64> {
    counter(
        node,
        &format!("hawser_tunnel_spares_total{{outcome=\"{outcome}\"}}"),
    )
}

/// Serial sessions need both daemons to keep tunnels in userspace. Beside a daemon whose
/// kernel takes the TLS over, `--tunnel-reuse` falls back to a session per connection,
/// whichever side the kernel-TLS daemon is on, and every connection arrives.
#[test]
fn serial_sessions_fall_back_to_one_per_connection_beside_a_kernel_tls_daemon() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    if hawser_testbed::expected_tls_path() != "ktls" {
        eprintln!("SKIPPED: needs a kernel with TLS (`cargo xtask vm-test` runs it)");
        return Ok(());
    }
    let (userspace, kernel) = (
        &["--tunnel-reuse", "--no-ktls"][..],
        &["--tunnel-reuse"][..],
    );
    for (node1, node2) in [(userspace, kernel), (kernel, userspace)] {
        let m = Mesh::with_args(node1, node2)?;
        let nginx = Nginx::start(&m.bed, &m.b)?;
        let url = format!("http://{}/hello.txt", m.b.ip);
        for _ in 0..3 {
            assert_eq!(curl(&m.a, &url)?, nginx.body);
        }
        assert_eq!(spares(&m.node1, "kept")?, 0, "a session was kept");
        assert!(settled_handshakes(&m)? >= 3, "a handshake per connection");
        for (d, args) in [(&m.d1, node1), (&m.d2, node2)] {
            let path = if args.contains(&"--no-ktls") {
                "userspace"
            } else {
                "ktls"
            };
            let closed = [
                "connection closed",
                "security=\"mtls\"",
                &format!("tls=\"{path}\""),
            ];
            wait_until(Duration::from_secs(5), "3 connections logged", || {
                d.lines_with(&closed).len() == 3
            })?;
        }
    }
    Ok(())
}

/// A counter of a node daemon's metrics (0 until it counted anything).
fn counter(node: &hawser_testbed::Node, series: &str) -> Result<u64> {
    let (_, metrics) = node.http_get("http://127.0.0.1:15020/metrics")?;
    let prefix = format!("{series} ");
    Ok(metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(Ok(0), str::parse)?)
}

/// Every handshake node1 did as a client, once node2 has answered as many (a spare's
/// handshake starts a little after the connection that asked for it).
fn settled_handshakes(m: &Mesh) -> Result<u64> {
    std::thread::sleep(Duration::from_millis(300));
    let mut counts = (0, 1);
    wait_until(Duration::from_secs(10), "the handshakes to settle", || {
        counts = (
            all_handshakes(&m.node1, "client").unwrap_or(0),
            all_handshakes(&m.node2, "server").unwrap_or(1),
        );
        counts.0 == counts.1
    })?;
    Ok(counts.0)
}

/// Waits until node1 did `n` handshakes as a client and node2 as many as a server.
fn wait_handshakes(m: &Mesh, n: u64) -> Result<()> {
    wait_until(Duration::from_secs(10), &format!("{n} handshakes"), || {
        all_handshakes(&m.node1, "client").is_ok_and(|c| c == n)
            && all_handshakes(&m.node2, "server").is_ok_and(|s| s == n)
    })
}

/// Publishes the revocation list `yaml` and waits until each of `daemons` has the trust
/// bundle that names `mark`.
fn revoke(m: &Mesh, yaml: &str, mark: &str, daemons: &[&Service]) -> Result<()> {
    std::fs::write(&m.ca.revocations, format!("{yaml}\n"))?;
    for d in daemons {
        d.wait_for("the new bundle", Duration::from_secs(10), |log| {
            log.lines()
                .any(|l| l.contains("trust bundle updated") && l.contains(mark))
        })?;
    }
    Ok(())
}

fn all_handshakes(node: &hawser_testbed::Node, side: &str) -> Result<u64> {
    Ok(handshakes(node, side, "full")? + handshakes(node, side, "resumed")?)
}

#[test]
fn tunnels_between_the_same_pods_resume_until_the_bundle_changes() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;
    let nginx = Nginx::start(&m.bed, &m.b)?;
    let url = format!("http://{}/hello.txt", m.b.ip);
    for _ in 0..3 {
        assert_eq!(curl(&m.a, &url)?, nginx.body);
    }
    // With the spare sessions made ahead (see the next test), more than three.
    let all = settled_handshakes(&m)?;
    assert!(all >= 3, "{all} handshakes for three connections");
    // Without kernel TLS each tunnel's session reads its tickets before it leaves rustls
    // for the daemon's record layer: every handshake after the first resumes. A tunnel
    // handed to the kernel at once cannot keep its tickets (its relay passes over them):
    // under kernel TLS the spare sessions, which read theirs before the hand-off, bring
    // them, so the first spare is a full handshake and the next resumes.
    let resumed = |node, side| handshakes(node, side, "resumed");
    if hawser_testbed::expected_tls_path() == "userspace" {
        assert_eq!(handshakes(&m.node1, "client", "full")?, 1);
        assert_eq!(resumed(&m.node1, "client")?, all - 1);
    } else {
        wait_until(Duration::from_secs(20), "a spare session to resume", || {
            resumed(&m.node1, "client").is_ok_and(|r| r >= 1)
        })?;
        settled_handshakes(&m)?;
    }
    assert_eq!(resumed(&m.node2, "server")?, resumed(&m.node1, "client")?);

    // A new bundle (here: a revoked serial no one holds) ends every session: the next
    // tunnel is a full handshake, checked against the bundle in force.
    let full = handshakes(&m.node1, "client", "full")?;
    revoke(&m, "serials: [\"0badc0de\"]", "0badc0de", &[&m.d1, &m.d2])?;
    assert_eq!(curl(&m.a, &url)?, nginx.body);
    assert!(handshakes(&m.node1, "client", "full")? > full);
    Ok(())
}

/// For pods with recent traffic, the client daemon keeps a session to the destination
/// handshaken ahead: the next connection takes it. It is never used under another trust
/// bundle than it was made with (nor SVID: the same check), nor past its age, and a
/// revoked server stays refused.
#[test]
fn a_spare_session_carries_the_next_connection_until_the_bundle_changes() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;
    let nginx = Nginx::start(&m.bed, &m.b)?;
    let url = format!("http://{}/hello.txt", m.b.ip);
    // The first connection is a pair's only one so far: no spare. The second is recent
    // traffic: a spare is made beside it.
    for _ in 0..2 {
        assert_eq!(curl(&m.a, &url)?, nginx.body);
    }
    wait_handshakes(&m, 3)?;
    assert_eq!(curl(&m.a, &url)?, nginx.body);
    assert_eq!(spares(&m.node1, "used")?, 1);
    // It carried the request without a handshake of its own; the next spare is made.
    wait_handshakes(&m, 4)?;

    // A bundle change makes the ready spare stale: the connection takes a fresh session.
    // (Under emulation the bundle can take longer than a spare's age to arrive: then it
    // is dropped as expired instead. Either way it is not used.)
    let dropped =
        || -> Result<u64> { Ok(spares(&m.node1, "stale")? + spares(&m.node1, "expired")?) };
    revoke(&m, "serials: [\"0badc0de\"]", "0badc0de", &[&m.d1])?;
    assert_eq!(curl(&m.a, &url)?, nginx.body);
    assert_eq!(spares(&m.node1, "used")?, 1);
    assert_eq!(dropped()?, 1);

    // A spare left unused is dropped once too old.
    let expired = spares(&m.node1, "expired")?;
    for _ in 0..2 {
        assert_eq!(curl(&m.a, &url)?, nginx.body);
    }
    wait_until(Duration::from_secs(15), "the spare to expire", || {
        spares(&m.node1, "expired").is_ok_and(|n| n > expired)
    })?;
    // The server sees an unused spare end before its preamble: no refusal, no error.
    m.d2.wait_for("the unused spare to end", Duration::from_secs(5), |log| {
        log.contains("tunnel closed before its preamble")
    })?;
    assert_eq!(
        m.d2.lines_with(&["connection refused"]),
        Vec::<String>::new()
    );

    // A revoked server: refused, whatever was made ahead (the spare ready then is stale,
    // and the server's serial would be checked on use too).
    for _ in 0..2 {
        assert_eq!(curl(&m.a, &url)?, nginx.body);
    }
    settled_handshakes(&m)?;
    let (dropped_before, used) = (dropped()?, spares(&m.node1, "used")?);
    revoke(&m, &format!("identities: [\"{B}\"]"), B, &[&m.d1])?;
    assert!(curl(&m.a, &url).is_err());
    assert_eq!(nginx.requests().len(), 8);
    assert_eq!(dropped()?, dropped_before + 1);
    assert_eq!(spares(&m.node1, "used")?, used);
    Ok(())
}

/// With `--tunnel-reuse`, a pod's connections to one destination follow one another on a
/// tunnel session: one handshake for all of them, each connection still admitted and
/// logged on both ends. The server admits every stream: a policy that denies the next one
/// refuses it on the kept session (and ends the session). A revoked server is not reached
/// through a kept session.
#[test]
fn a_serial_session_carries_a_pods_connections_one_after_another() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::with_node_args(&["--tunnel-reuse"])?;
    let nginx = Nginx::start(&m.bed, &m.b)?;
    let url = format!("http://{}/hello.txt", m.b.ip);
    for _ in 0..5 {
        assert_eq!(curl(&m.a, &url)?, nginx.body);
    }
    assert_eq!(
        settled_handshakes(&m)?,
        1,
        "one handshake for five connections"
    );
    assert_eq!(spares(&m.node1, "kept")?, 5);
    assert_eq!(spares(&m.node1, "used")?, 4);
    let logged = |d: &Service, what: &str, direction: &str| {
        d.lines_with(&[what, &format!("direction=\"{direction}\"")])
            .len()
    };
    wait_until(
        Duration::from_secs(5),
        "each connection's log lines",
        || {
            logged(&m.d1, "connection closed", "outbound") == 5
                && logged(&m.d2, "connection closed", "tunnel") == 5
        },
    )?;

    // A deny for a, applied at b's daemon only: the next connection takes the kept session
    // and is refused there.
    apply_policy(
        &m,
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-a, namespace: default}
spec:
  selector: {matchLabels: {app: b}}
  action: DENY
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/a"]}
"#,
    )?;
    assert!(curl(&m.a, &url).is_err());
    assert_eq!(spares(&m.node1, "used")?, 5, "it went on the kept session");
    assert_eq!(nginx.requests().len(), 5);
    assert_eq!(logged(&m.d2, "connection refused", "tunnel"), 1);
    assert_eq!(
        spares(&m.node1, "kept")?,
        5,
        "a refused stream's session is not kept"
    );

    // Allowed again: on a new session (and a spare beside it: the pair is busy).
    apply_policy(&m, "")?;
    assert_eq!(curl(&m.a, &url)?, nginx.body);
    assert!(settled_handshakes(&m)? > 1);

    // A revoked server: the kept session is stale, and the fresh handshake is refused.
    let used = spares(&m.node1, "used")?;
    revoke(&m, &format!("identities: [\"{B}\"]"), B, &[&m.d1])?;
    assert!(curl(&m.a, &url).is_err());
    assert_eq!(nginx.requests().len(), 6);
    assert_eq!(spares(&m.node1, "used")?, used);
    assert!(
        spares(&m.node1, "stale")? >= 1,
        "the idle sessions were dropped"
    );
    Ok(())
}

/// A kept session outlives its handshake's check of the server's chain: at each reuse the
/// client checks that the chain has not expired since, and takes a fresh session once it
/// has. b's daemon asks for 5-second SVIDs (renewed every 2 to 3 s, so its kept sessions'
/// chains expire while a's connections keep them busy); a's SVID and bundle do not change.
#[test]
fn a_kept_session_is_not_used_past_the_server_chains_expiry() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::with_args(
        &["--tunnel-reuse"],
        &["--tunnel-reuse", "--svid-ttl-secs", "5"],
    )?;
    let nginx = Nginx::start(&m.bed, &m.b)?;
    let url = format!("http://{}/hello.txt", m.b.ip);
    // A connection every half second for 12 s: no kept session idles near `MAX_AGE` (5 s),
    // none lives near `MAX_LIFE` (60 s).
    for _ in 0..24 {
        assert_eq!(curl(&m.a, &url)?, nginx.body);
        std::thread::sleep(Duration::from_millis(500));
    }
    let (used, expired) = (spares(&m.node1, "used")?, spares(&m.node1, "expired")?);
    assert!(used >= 12, "connections went on kept sessions ({used})");
    assert!(
        expired >= 2,
        "kept sessions dropped as the chain expired ({expired})"
    );
    assert_eq!(spares(&m.node1, "stale")?, 0, "a's credentials changed");
    assert!(
        settled_handshakes(&m)? >= 3,
        "a handshake per expired chain"
    );
    Ok(())
}
