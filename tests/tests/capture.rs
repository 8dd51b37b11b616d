//! End-to-end, as a hostile pod: no way around the mesh. Each test is one attack on the
//! capture (a socket mark, ports squatted across a restart, addresses other than the
//! declared one, a borrowed IP), proven to fail by what crosses the node link and what
//! the app receives, never by a connection failing.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use hawser_testbed::{
    Pod, Proc, Service, Testbed, can_run,
    mesh::Mesh,
    peers::{Capture, Nginx, curl, echo_once, echo_server, wait_listening, wait_until},
    write_atomically,
};

const A: &str = "spiffe://cluster.local/ns/default/sa/a";

/// Sends `text` to `dst` from `pod` with socat and returns what came back.
fn socat_echo(pod: &Pod, dst: &str, text: &str) -> Result<String> {
    let script = format!("printf %s '{text}' | socat -t 3 -T 5 - TCP:{dst}");
    let out = pod.run(&["sh", "-c", &script])?;
    ensure!(
        out.status.success(),
        "socat to {dst}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs as nobody with CAP_NET_RAW only, what a container runtime grants by default.
const NOBODY_WITH_NET_RAW: [&str; 8] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all,+net_raw",
    "--ambient-caps=-all,+net_raw",
    "--bounding-set=-all,+net_raw",
    "--",
];

#[test]
fn a_socket_mark_does_not_exempt_a_pod_from_capture() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;
    let _echo = echo_server(&m.b, 7000)?;
    let dst = format!("{}:7000", m.b.ip);
    // The marks the daemon's own sockets used to carry, and Istio's, as nobody with
    // CAP_NET_RAW (SO_MARK needs no more since Linux 5.17) and as root.
    let mut sent = 0;
    for mark in [0x4856u32, 0x4857, 1337] {
        for wrapper in [&NOBODY_WITH_NET_RAW[..], &[]] {
            let capture = Capture::start(&m.bed, &m.node1, &m.link)?;
            let marker = format!("MARKED-{mark:x}-{}-BYPASS", wrapper.len());
            let echo = echo_once(&m.a, (&m.b.ip, 7000), &marker, wrapper, Some(mark))?;
            assert_eq!(echo, marker, "the echo came back");
            let tunnel = format!("{}.15008 > {}", m.b.ip, m.a.ip);
            let wire = capture.stop_once("the tunnel on the wire", |wire| {
                wire.lines()
                    .any(|l| l.contains(&tunnel) && l.contains("[F"))
            })?;
            assert!(!wire.contains(&marker), "plaintext on the link:\n{wire}");
            assert!(
                !wire.contains(&format!("{}.7000", m.b.ip)),
                "a direct connection to port 7000 crossed the link:\n{wire}"
            );
            sent += 1;
            let outbound = [
                "connection closed",
                "direction=\"outbound\"",
                "pod=default/a",
                "security=\"mtls\"",
                &format!("dst={dst}"),
            ];
            wait_until(Duration::from_secs(5), "the outbound record", || {
                m.d1.lines_with(&outbound).len() == sent
            })?;
        }
    }
    Ok(())
}

/// A squatter in `pod` on `listen` (a socat address) writing what it receives to a file.
struct Squatter {
    _proc: hawser_testbed::Proc,
    file: std::path::PathBuf,
}

impl Squatter {
    fn start(bed: &Testbed, pod: &Pod, name: &str, listen: &str) -> Result<Self> {
        let file = bed.dir().join(format!("squat-{name}"));
        std::fs::write(&file, "")?;
        let sink = format!("OPEN:{},append", file.display());
        let proc = pod.spawn(&["socat", "-u", &format!("{listen},reuseaddr,fork"), &sink])?;
        let port = listen
            .split(['-', ':', ','])
            .find_map(|p| p.parse::<u16>().ok())
            .context("port")?;
        wait_until(Duration::from_secs(10), "the squatter to listen", || {
            let ss = pod
                .run(&["ss", "-ltn"])
                .map(|o| o.stdout)
                .unwrap_or_default();
            String::from_utf8_lossy(&ss).contains(&format!(":{port} "))
        })?;
        Ok(Self { _proc: proc, file })
    }

    fn received(&self) -> String {
        std::fs::read_to_string(&self.file).unwrap_or_default()
    }
}

#[test]
fn ports_squatted_while_the_daemon_is_down_receive_nothing_and_do_not_stop_enrollment() -> Result<()>
{
    if !can_run() {
        return Ok(());
    }
    let mut m = Mesh::new()?;
    let c = m.bed.pod(&m.node1, "c")?; // not enrolled: a client from the network
    let _echo = echo_server(&m.b, 7000)?;
    let to_b = format!("{}:7000", m.b.ip);
    assert_eq!(socat_echo(&m.a, &to_b, "before")?, "before");

    m.d1.stop()?;
    let squatters = [
        Squatter::start(&m.bed, &m.a, "outbound", "TCP4-LISTEN:15001,bind=127.0.0.1")?,
        Squatter::start(&m.bed, &m.a, "inbound", "TCP4-LISTEN:15006")?,
        Squatter::start(&m.bed, &m.a, "tunnel", "TCP6-LISTEN:15008,ipv6only=0")?,
        Squatter::start(&m.bed, &m.a, "app", "TCP4-LISTEN:8080")?,
    ];
    // While the daemon is down: a's connects and connections to a are refused, and the
    // squatters get none of them.
    assert!(socat_echo(&m.a, &to_b, "SQUAT-DOWN-OUT").is_err());
    for port in [15006, 15008, 8080] {
        let dst = format!("{}:{port}", m.a.ip);
        assert!(socat_echo(&c, &dst, "SQUAT-DOWN-IN").is_err());
    }
    for s in &squatters {
        assert_eq!(s.received(), "", "{}", s.file.display());
    }

    // The restarted daemon enrolls a although every well-known port is taken, and a's
    // traffic goes through it again, in mTLS on the link.
    m.d1.restart()?;
    m.d1.wait_for("a enrolled", Duration::from_secs(10), |log| {
        log.matches("pod enrolled").count() >= 2
    })?;
    assert!(!m.d1.log().contains("enrollment failed"), "{}", m.d1.log());
    let capture = Capture::start(&m.bed, &m.node1, &m.link)?;
    assert_eq!(socat_echo(&m.a, &to_b, "SQUAT-UP-OUT")?, "SQUAT-UP-OUT");
    let tunnel = format!("{}.15008 > {}", m.b.ip, m.a.ip);
    let wire = capture.stop_once("the tunnel on the wire", |wire| {
        wire.lines()
            .any(|l| l.contains(&tunnel) && l.contains("[F"))
    })?;
    assert!(!wire.contains("SQUAT-UP-OUT"), "plaintext on the link");
    // From the network, the squatted ports reach the daemon, which refuses (nothing is
    // delivered to the daemon's own ports) or delivers to the app port 8080.
    for port in [15006, 15008] {
        let dst = format!("{}:{port}", m.a.ip);
        let _ = socat_echo(&c, &dst, "SQUAT-UP-IN");
    }
    let _ = socat_echo(&c, &format!("{}:8080", m.a.ip), "SQUAT-UP-APP");
    wait_until(Duration::from_secs(5), "the inbound records", || {
        m.d1.lines_with(&["direction=\"inbound\"", "pod=default/a"])
            .len()
            >= 2
    })?;
    for s in &squatters[..3] {
        assert_eq!(s.received(), "", "{}", s.file.display());
    }
    wait_until(Duration::from_secs(5), "the app's bytes", || {
        squatters[3].received() == "SQUAT-UP-APP"
    })?;
    Ok(())
}

#[test]
fn a_pod_that_makes_its_enrollment_fail_stays_closed_until_it_succeeds() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let mut m = Mesh::new()?;
    let c = m.bed.pod(&m.node1, "c")?; // not enrolled: a client from the network
    let b_app = Squatter::start(&m.bed, &m.b, "b-app", "TCP4-LISTEN:7001")?;
    let a_app = Squatter::start(&m.bed, &m.a, "a-app", "TCP4-LISTEN:8080")?;
    let to_b = format!("{}:7001", m.b.ip);

    // While its daemon is down, a leaves no free port for the daemon's listeners: a
    // one-port-pair ephemeral range, both ports taken.
    m.d1.stop()?;
    m.a.port_range("40000 40001")?;
    let hogs = [
        Squatter::start(&m.bed, &m.a, "hog0", "TCP6-LISTEN:40000,ipv6only=0")?,
        Squatter::start(&m.bed, &m.a, "hog1", "TCP6-LISTEN:40001,ipv6only=0")?,
    ];
    m.d1.restart()?;
    m.d1.wait_for("the failed enrollment", Duration::from_secs(10), |log| {
        log.contains("pod=default/a") && log.contains("enrollment failed (held closed)")
    })?;
    // Closed, not bypassed: nothing a sends leaves, nothing reaches a's app.
    let capture = Capture::start(&m.bed, &m.node1, &m.link)?;
    assert!(socat_echo(&m.a, &to_b, "CLOSED-OUT").is_err());
    assert!(socat_echo(&c, &format!("{}:8080", m.a.ip), "CLOSED-IN").is_err());
    let wire = capture.read();
    assert!(
        !wire.contains("CLOSED-OUT"),
        "a's bytes crossed the link: {wire}"
    );
    drop(capture);
    for app in [&b_app, &a_app] {
        assert_eq!(app.received(), "", "{}", app.file.display());
    }

    // a gives up: the daemon's retry enrolls it and its traffic is mTLS again.
    drop(hogs);
    m.a.port_range("32768 60999")?;
    m.d1.wait_for("a enrolled", Duration::from_secs(15), |log| {
        log.matches("pod enrolled").count() >= 2
    })?;
    let capture = Capture::start(&m.bed, &m.node1, &m.link)?;
    let _ = socat_echo(&m.a, &to_b, "OPEN-OUT");
    wait_until(Duration::from_secs(5), "b's app to receive", || {
        b_app.received() == "OPEN-OUT"
    })?;
    let tunnel = format!("{}.15008 > {}", m.b.ip, m.a.ip);
    let wire = capture.stop_once("the tunnel on the wire", |wire| {
        wire.lines().any(|l| l.contains(&tunnel))
    })?;
    assert!(!wire.contains("OPEN-OUT"), "plaintext on the link");
    Ok(())
}

/// Waits until `pod`'s IPv6 addresses are usable (duplicate address detection is done).
fn ipv6_ready(pod: &Pod) -> Result<()> {
    wait_until(Duration::from_secs(10), "IPv6 DAD", || {
        let out = pod.run(&["ip", "-6", "addr"]).map(|o| o.stdout);
        out.is_ok_and(|o| !String::from_utf8_lossy(&o).contains("tentative"))
    })
}

fn link_local(pod: &Pod) -> Result<String> {
    let out = pod.run(&[
        "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
    ])?;
    let text = String::from_utf8(out.stdout)?;
    let addr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .context("no link-local address")?;
    Ok(addr.split('/').next().unwrap_or(addr).to_string())
}

fn ip(pod: &Pod, args: &[&str]) -> Result<()> {
    let mut argv = vec!["ip"];
    argv.extend(args);
    let out = pod.run(&argv)?;
    ensure!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn every_address_of_an_enrolled_pod_is_steered() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let b = bed.pod(&node, "b")?;
    let c = bed.pod(&node, "c")?; // not enrolled
    ip(&b, &["addr", "add", "fd00:1::3/64", "dev", "eth0", "nodad"])?;
    ip(&b, &["addr", "add", "10.1.0.203/24", "dev", "eth0"])?;
    ip(&c, &["addr", "add", "fd00:1::4/64", "dev", "eth0", "nodad"])?;
    ipv6_ready(&b)?;
    ipv6_ready(&c)?;
    let nginx = Nginx::start(&bed, &b)?;
    bed.enroll(&[&b])?;
    let daemon = bed.start_daemon(&node)?;
    let b_link_local = link_local(&b)?;
    let c_link_local = link_local(&c)?;
    let urls = [
        ("http://[fd00:1::3]/hello.txt".to_string(), "fd00:1::4"),
        ("http://10.1.0.203/hello.txt".to_string(), c.ip.as_str()),
        (
            format!("http://[{b_link_local}%25eth0]/hello.txt"),
            c_link_local.as_str(),
        ),
    ];
    // PERMISSIVE: every address reaches the app through the daemon, with the client's own
    // address (IPv6 delivered as IPv6).
    for (i, (url, client)) in urls.iter().enumerate() {
        assert_eq!(curl(&c, url)?, nginx.body, "{url}");
        wait_until(Duration::from_secs(5), "the inbound record", || {
            daemon
                .lines_with(&[
                    "connection closed",
                    "direction=\"inbound\"",
                    "pod=default/b",
                ])
                .len()
                > i
        })?;
        assert_eq!(nginx.clients().last().map(String::as_str), Some(*client));
    }
    // STRICT: none of them reaches the app.
    write_atomically(
        &bed.config_dir().join("policy.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {name: strict, namespace: default}\nspec: {mtls: {mode: STRICT}}\n",
    )?;
    daemon.wait_for("the policy", Duration::from_secs(10), |log| {
        log.contains("workload configuration reloaded")
    })?;
    let served = nginx.requests().len();
    for (url, _) in &urls {
        assert!(curl(&c, url).is_err(), "{url} admitted under STRICT");
    }
    wait_until(Duration::from_secs(5), "the refusals", || {
        daemon
            .lines_with(&["connection refused", "PeerAuthentication STRICT"])
            .len()
            >= urls.len()
    })?;
    assert_eq!(nginx.requests().len(), served, "the app saw nothing more");
    Ok(())
}

#[test]
fn a_borrowed_pod_ip_carries_no_identity_and_revocation_reaches_same_node_callers() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let a = bed.pod(&node, "a")?;
    let c = bed.pod(&node, "c")?;
    let evil = bed.pod(&node, "evil")?; // not enrolled
    let nginx = Nginx::start(&bed, &c)?;
    bed.enroll(&[&a, &c])?;
    write_atomically(
        &bed.config_dir().join("policy.yaml"),
        &format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {{name: strict, namespace: default}}\nspec: {{mtls: {{mode: STRICT}}}}\n---\n\
             apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: c, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: c}}}}\n\
             \x20 rules:\n  - from: [{{source: {{principals: [\"{}\"]}}}}]\n",
            A.trim_start_matches("spiffe://")
        ),
    )?;
    let (_ca, daemon, ca) = bed.start_daemon_with_ca(&node)?;
    daemon.wait_for("the SVIDs", Duration::from_secs(15), |log| {
        log.matches("SVID issued").count() >= 2
    })?;
    let url = format!("http://{}/hello.txt", c.ip);
    // a itself: its connection is the daemon's own, so it carries a's identity.
    assert_eq!(curl(&a, &url)?, nginx.body);
    daemon.wait_for("a's record", Duration::from_secs(5), |log| {
        log.lines().any(|l| {
            l.contains("connection closed")
                && l.contains("direction=\"inbound\"")
                && l.contains(&format!("src_identity=\"{A}\""))
        })
    })?;

    // evil takes a's address while a is off the bridge.
    ip(&a, &["link", "set", "eth0", "down"])?;
    ip(&evil, &["addr", "flush", "dev", "eth0"])?;
    ip(
        &evil,
        &["addr", "add", &format!("{}/24", a.ip), "dev", "eth0"],
    )?;
    ip(&c, &["neigh", "flush", "all"])?;
    let served = nginx.requests().len();
    assert!(
        curl(&evil, &url).is_err(),
        "the borrowed address was admitted"
    );
    daemon.wait_for("the refusal", Duration::from_secs(5), |log| {
        log.lines().any(|l| {
            l.contains("connection refused")
                && l.contains(&format!("src={}:", a.ip))
                && l.contains("src_identity=\"unknown\"")
                && l.contains("policy:")
        })
    })?;
    assert_eq!(nginx.requests().len(), served, "the app saw nothing");

    // a back on the bridge, then revoked: its same-node calls are refused too.
    ip(&evil, &["link", "set", "eth0", "down"])?;
    ip(&a, &["link", "set", "eth0", "up"])?;
    ip(&c, &["neigh", "flush", "all"])?;
    assert_eq!(curl(&a, &url)?, nginx.body);
    std::fs::write(&ca.revocations, format!("identities: [\"{A}\"]\n"))?;
    // Once the daemon holds the revocation, a new call is refused (one in flight at that
    // moment is cut, which is another test's matter).
    daemon.wait_for("the revocation", Duration::from_secs(10), |log| {
        log.lines()
            .any(|l| l.contains("trust bundle updated") && l.contains(A))
    })?;
    assert!(curl(&a, &url).is_err(), "a revoked caller was admitted");
    daemon.wait_for("the revocation refusal", Duration::from_secs(5), |log| {
        log.lines().any(|l| {
            l.contains("connection refused")
                && l.contains(&format!("the peer identity {A} is revoked"))
        })
    })?;
    Ok(())
}

/// An app that listens with room for one connection in its accept queue and accepts
/// nothing until the file `go` exists; then it logs each connection's peer and first bytes
/// to `log`.
const GATED_APP: &str = "
import os, socket, sys, time
port, go, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.socket()
s.bind(('0.0.0.0', port))
s.listen(0)
while not os.path.exists(go):
    time.sleep(0.05)
while True:
    c, peer = s.accept()
    c.settimeout(2)
    try:
        data = c.recv(4096)
    except OSError:
        data = b''
    with open(log, 'a') as f:
        f.write(f'{peer[0]}:{peer[1]} {data!r}\\n')
    c.close()
";

/// Connects from `ip`:`port` to `host`:`dport`, sends `text`, prints what comes back.
const BOUND_CLIENT: &str = "
import socket, sys
ip, port, host, dport, text = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port))
s.settimeout(5)
s.connect((host, dport))
s.sendall(text.encode())
sys.stdout.write(s.recv(4096).decode(errors='replace'))
";

/// A delivery node2's daemon hangs on, connecting to a gated app in b under STRICT mTLS.
struct HungDelivery {
    /// The delivery socket's port (the client's address is a's).
    port: u16,
    /// When the delivery was seen connecting: its pass was announced before.
    seen: Instant,
    go: PathBuf,
    received: PathBuf,
    _app: Proc,
    _client: Proc,
}

/// Sets b's mesh to STRICT and has a connect to the gated app in b: the probe's
/// connection, never accepted, fills the app's accept queue, so the daemon's delivery of
/// the client's connection hangs connecting (its SYNs dropped), its pass in the map.
fn hang_a_delivery(m: &Mesh) -> Result<HungDelivery> {
    write_atomically(
        &m.bed.config_dir().join("policy.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {name: strict, namespace: default}\nspec: {mtls: {mode: STRICT}}\n",
    )?;
    m.d2.wait_for("the policy", Duration::from_secs(10), |log| {
        log.contains("workload configuration reloaded")
    })?;
    let go = m.bed.dir().join("go");
    let received = m.bed.dir().join("received");
    let (go_path, received_path) = (go.display().to_string(), received.display().to_string());
    let app =
        m.b.spawn(&["python3", "-c", GATED_APP, "7500", &go_path, &received_path])?;
    wait_listening(&m.b, 7500, "the gated app")?;
    let dst = format!("TCP:{}:7500", m.b.ip);
    let client =
        m.a.spawn(&["sh", "-c", &format!("sleep 60 | socat - {dst}")])?;
    let mut port = None;
    wait_until(Duration::from_secs(10), "the delivery connecting", || {
        port = syn_sent_port(&m.b, &m.a.ip, 7500);
        port.is_some()
    })?;
    Ok(HungDelivery {
        port: port.expect("waited for"),
        seen: Instant::now(),
        go,
        received,
        _app: app,
        _client: client,
    })
}

/// The number of delivery passes in the map, as node2's daemon reports it.
fn delivery_passes(m: &Mesh) -> Result<String> {
    let (_, metrics) = m.node2.http_get("http://127.0.0.1:15020/metrics")?;
    let gauge = "hawser_ebpf_map_entries{map=\"DELIVERY_PASSES\"} ";
    let line = metrics.lines().find_map(|l| l.strip_prefix(gauge));
    Ok(line
        .with_context(|| format!("{gauge} in\n{metrics}"))?
        .to_string())
}

/// A pod on node1 takes a's address (a off the bridge) and the hung delivery's port and
/// sends to b's app: the app must receive nothing, and `daemon` refuses the connection.
fn borrow_the_delivery(m: &Mesh, hung: &HungDelivery, daemon: &Service) -> Result<()> {
    let evil = m.bed.pod(&m.node1, "evil")?; // not enrolled
    ip(&m.a, &["link", "set", "eth0", "down"])?;
    ip(&evil, &["addr", "flush", "dev", "eth0"])?;
    ip(
        &evil,
        &["addr", "add", &format!("{}/24", m.a.ip), "dev", "eth0"],
    )?;
    ip(
        &evil,
        &["route", "replace", "default", "via", &m.node1.gateway()],
    )?;
    let flushed = m.node1.run(&["ip", "neigh", "flush", "all"])?;
    ensure!(flushed.status.success(), "ip neigh flush on node1");
    std::fs::write(&hung.go, "")?;
    // The app writes what it received before it closes, and the client waits for the close.
    evil.run(&[
        "python3",
        "-c",
        BOUND_CLIENT,
        &m.a.ip,
        &hung.port.to_string(),
        &m.b.ip,
        "7500",
        "around the mesh",
    ])?;
    let got = std::fs::read_to_string(&hung.received).unwrap_or_default();
    assert!(
        !got.contains("around the mesh"),
        "the app received the borrowed connection's bytes:\n{got}"
    );
    daemon.wait_for_line(
        Duration::from_secs(5),
        &[
            "connection refused",
            &format!("src={}:{}", m.a.ip, hung.port),
            "PeerAuthentication STRICT",
        ],
    )
}

/// A daemon killed while it connects to an app leaves that connection's sk_lookup pass
/// behind (its cleanup never runs). The next daemon, on a cold start, forgets it at once:
/// a pod that borrows the client's address and the delivery's port reaches the daemon, not
/// the app.
#[test]
fn a_delivery_pass_left_by_a_killed_daemon_lets_no_borrowed_address_around_the_mesh() -> Result<()>
{
    if !can_run() {
        return Ok(());
    }
    let mut m = Mesh::new()?;
    let hung = hang_a_delivery(&m)?;
    m.d2.kill();
    m.d2.restart()?;
    m.d2.wait_for_line(
        Duration::from_secs(5),
        &["forgetting delivery passes of an earlier run", "passes=1"],
    )?;
    assert_eq!(delivery_passes(&m)?, "0");
    borrow_the_delivery(&m, &hung, &m.d2)
}

/// The same pass left by a daemon killed while it drained after a hand-over: its successor
/// cannot tell that pass from a live delivery's and keeps it, but the pass expires shortly
/// after the connect would have timed out, and then a borrowed 4-tuple reaches the
/// successor, not the app.
#[test]
fn a_delivery_pass_left_by_a_daemon_killed_while_draining_expires() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    const DRAIN: &[&str] = &["--drain-secs", "60"];
    let mut m = Mesh::with_args(&[], DRAIN)?;
    let hung = hang_a_delivery(&m)?;
    let successor = m
        .bed
        .start_node_generation(&m.node2, Some(&m.ca), DRAIN, 2)?;
    m.d2.wait_for("the hand-over", Duration::from_secs(10), |log| {
        log.contains("a new daemon takes over")
    })?;
    m.d2.kill();
    // Within the delivery's connect timeout (10 s): the pass is the dead daemon's.
    assert_eq!(delivery_passes(&m)?, "1", "the killed daemon's pass");
    // The pass's lifetime is the connect timeout and a second.
    let expired = hung.seen + Duration::from_secs(12);
    std::thread::sleep(expired.saturating_duration_since(Instant::now()));
    borrow_the_delivery(&m, &hung, &successor)
}

/// The local port of a connection from `client_ip` to `port` that `pod` is opening.
fn syn_sent_port(pod: &Pod, client_ip: &str, port: u16) -> Option<u16> {
    let filter = format!("dport = :{port}");
    let out = pod
        .run(&["ss", "-Htn", "state", "syn-sent", &filter])
        .ok()?;
    let prefix = format!("{client_ip}:");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|field| field.strip_prefix(&prefix)?.parse().ok())
}

/// Opens `count` TCP connections to `host:port` and holds them idle, as fast as the
/// kernel takes them; writes how many it opened to `report`.
const IDLE_FLOOD: &str = "
import resource, socket, sys, time
host, port, count, report = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, count + 64))
held = []
for _ in range(count):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect((host, port))
    except BlockingIOError:
        pass
    held.append(s)
time.sleep(2)
open(report, 'w').write(str(len(held)))
time.sleep(600)
";

#[test]
fn an_idle_flood_twice_the_daemons_fd_limit_leaves_the_tunnel_working() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let m = Mesh::new()?;
    let c = m.bed.pod(&m.node2, "c")?; // b's neighbour, outside the mesh
    let _echo = echo_server(&m.b, 7000)?;
    let to_b = format!("{}:7000", m.b.ip);
    // b's daemon at the common limit of 1024 descriptors, and no more to raise it to.
    let pid = m.d2.pid().context("d2 runs")?.to_string();
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=1024:1024"])
        .status()?;
    ensure!(limited.success(), "prlimit");
    let report = m.bed.dir().join("flood-report");
    let _flood = c.spawn(&[
        "/usr/bin/python3",
        "-c",
        IDLE_FLOOD,
        &m.b.ip,
        "15008",
        "2048",
        &report.display().to_string(),
    ])?;
    wait_until(Duration::from_secs(30), "the flood", || report.exists())?;
    // While the flood holds its connections: real traffic crosses the tunnel.
    for i in 0..5 {
        let text = format!("REAL-{i}");
        assert_eq!(socat_echo(&m.a, &to_b, &text)?, text);
    }
    // The flood was turned away at the per-source cap, and logged at a bounded rate.
    let capped = m.d2.count("already has 32 unauthenticated connections");
    assert!(capped > 0, "{}", m.d2.log());
    assert!(capped < 200, "{capped} refusal lines for one flood");
    Ok(())
}
