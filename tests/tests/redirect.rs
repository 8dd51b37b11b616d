//! End-to-end: eBPF redirection of enrolled pods' TCP traffic through the node daemon,
//! with real curl, nginx and socat in real network namespaces.

use std::time::Duration;

use anyhow::Result;
use hawser_testbed::{
    Proc, Testbed, can_run,
    peers::{Nginx, curl, echo_server, wait_until},
};

/// Access-log lines of the daemon for one direction, pod and destination.
fn access(daemon: &hawser_testbed::Service, direction: &str, pod: &str, dst: &str) -> Vec<String> {
    daemon.lines_with(&[
        "connection closed",
        &format!("direction=\"{direction}\""),
        &format!("pod={pod}"),
        &format!("dst={dst}"),
    ])
}

#[test]
fn traffic_between_pods_flows_through_the_daemon_with_source_ips_kept() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let a = bed.pod(&node, "a")?;
    let b = bed.pod(&node, "b")?;
    let c = bed.pod(&node, "c")?; // not enrolled
    let nginx_b = Nginx::start(&bed, &b)?;
    let nginx_c = Nginx::start(&bed, &c)?;
    bed.enroll(&[&a, &b])?;
    let daemon = bed.start_daemon(&node)?;
    // The daemon runs at its hard open-files limit, not the soft 1024 it may start with.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid().unwrap()))?;
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or("");
    let soft_hard: Vec<&str> = files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(soft_hard.first(), soft_hard.get(1), "{files}");

    // a -> b: captured on the way out of a and on the way into b.
    assert_eq!(
        curl(&a, &format!("http://{}/hello.txt", b.ip))?,
        nginx_b.body
    );
    let b80 = format!("{}:80", b.ip);
    daemon.wait_for("access log", Duration::from_secs(5), |log| {
        log.matches("connection closed").count() >= 2
    })?;
    let out = access(&daemon, "outbound", "default/a", &b80);
    let inb = access(&daemon, "inbound", "default/b", &b80);
    assert_eq!(
        out.len(),
        1,
        "one outbound record, the daemon's own connection not recaptured:\n{}",
        daemon.log()
    );
    assert_eq!(inb.len(), 1, "one inbound record:\n{}", daemon.log());
    assert!(
        inb[0].contains(&format!("src={}:", a.ip)),
        "inbound source is pod a: {}",
        inb[0]
    );
    let body_len = nginx_b.body.len();
    assert!(out[0].contains("bytes_received="), "{}", out[0]);
    let received: usize = field(&out[0], "bytes_received").parse()?;
    assert!(
        received > body_len,
        "the daemon relayed the response ({received} bytes): {}",
        out[0]
    );
    assert_eq!(
        nginx_b.clients(),
        vec![a.ip.clone()],
        "nginx in b saw pod a's address"
    );

    // a -> c (not enrolled): captured outbound only; c sees a's own address on the wire.
    assert_eq!(
        curl(&a, &format!("http://{}/hello.txt", c.ip))?,
        nginx_c.body
    );
    let c80 = format!("{}:80", c.ip);
    daemon.wait_for("outbound record", Duration::from_secs(5), |_| {
        !access(&daemon, "outbound", "default/a", &c80).is_empty()
    })?;
    assert_eq!(nginx_c.clients(), vec![a.ip.clone()]);

    // c -> b: an outside client is captured inbound; nginx sees c's address.
    assert_eq!(
        curl(&c, &format!("http://{}/hello.txt", b.ip))?,
        nginx_b.body
    );
    daemon.wait_for("inbound record", Duration::from_secs(5), |_| {
        access(&daemon, "inbound", "default/b", &b80).len() == 2
    })?;
    assert_eq!(nginx_b.clients(), vec![a.ip.clone(), c.ip.clone()]);
    assert!(
        daemon
            .lines_with(&["direction=\"outbound\"", "pod=default/c"])
            .is_empty()
    );

    // A dual-stack client dialing a v4-mapped address goes through connect6.
    assert_eq!(
        curl(&a, &format!("http://[::ffff:{}]/hello.txt", c.ip))?,
        nginx_c.body
    );
    daemon.wait_for("connect6 record", Duration::from_secs(5), |_| {
        access(&daemon, "outbound", "default/a", &c80).len() == 2
    })?;

    // b calling its own pod IP: out through the daemon and back in exactly once, no loop.
    assert_eq!(
        curl(&b, &format!("http://{}/hello.txt", b.ip))?,
        nginx_b.body
    );
    daemon.wait_for("hairpin records", Duration::from_secs(5), |_| {
        !access(&daemon, "outbound", "default/b", &b80).is_empty()
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let hairpin_in = daemon.lines_with(&["direction=\"inbound\"", &format!("src={}:", b.ip)]);
    assert_eq!(hairpin_in.len(), 1, "{}", daemon.log());
    assert_eq!(nginx_b.clients().last(), Some(&b.ip));
    Ok(())
}

#[test]
fn unenrolled_pods_are_untouched_and_unenrolling_detaches() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let a = bed.pod(&node, "a")?;
    let c = bed.pod(&node, "c")?;
    let d = bed.pod(&node, "d")?;
    let nginx_d = Nginx::start(&bed, &d)?;
    bed.enroll(&[&a])?;
    let mut daemon = bed.start_daemon(&node)?;

    // Neither c nor d is enrolled: nothing of theirs reaches the daemon.
    assert_eq!(
        curl(&c, &format!("http://{}/hello.txt", d.ip))?,
        nginx_d.body
    );
    // a is enrolled: its request is relayed (the record proves the daemon carried it).
    assert_eq!(
        curl(&a, &format!("http://{}/hello.txt", d.ip))?,
        nginx_d.body
    );
    let d80 = format!("{}:80", d.ip);
    daemon.wait_for("a's record", Duration::from_secs(5), |_| {
        !access(&daemon, "outbound", "default/a", &d80).is_empty()
    })?;
    assert_eq!(
        daemon.count("connection closed"),
        1,
        "only a's connection:\n{}",
        daemon.log()
    );

    // Remove a from the configuration: the daemon un-enrolls it, its traffic goes direct.
    bed.enroll(&[])?;
    daemon.wait_for("un-enrollment", Duration::from_secs(10), |log| {
        log.contains("pod unenrolled")
    })?;
    assert_eq!(
        curl(&a, &format!("http://{}/hello.txt", d.ip))?,
        nginx_d.body
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        daemon.count("connection closed"),
        1,
        "a is no longer captured:\n{}",
        daemon.log()
    );
    assert_eq!(
        nginx_d.clients(),
        vec![c.ip.clone(), a.ip.clone(), a.ip.clone()]
    );

    // And back: enrolling again captures again, and a restart keeps it so.
    bed.enroll(&[&a])?;
    daemon.wait_for("re-enrollment", Duration::from_secs(10), |log| {
        log.matches("pod enrolled").count() == 2
    })?;
    assert_eq!(
        curl(&a, &format!("http://{}/hello.txt", d.ip))?,
        nginx_d.body
    );
    daemon.wait_for("the record", Duration::from_secs(5), |_| {
        access(&daemon, "outbound", "default/a", &d80).len() == 2
    })?;
    daemon.stop()?;
    daemon.restart()?;
    assert_eq!(
        curl(&a, &format!("http://{}/hello.txt", d.ip))?,
        nginx_d.body
    );
    daemon.wait_for("records", Duration::from_secs(5), |_| {
        access(&daemon, "outbound", "default/a", &d80).len() == 3
    })?;
    Ok(())
}

#[test]
fn enrolled_pods_fail_closed_while_the_daemon_is_down() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let a = bed.pod(&node, "a")?;
    let b = bed.pod(&node, "b")?;
    let c = bed.pod(&node, "c")?;
    let d = bed.pod(&node, "d")?;
    let nginx_b = Nginx::start(&bed, &b)?;
    let nginx_d = Nginx::start(&bed, &d)?;
    bed.enroll(&[&a, &b])?;
    let mut daemon = bed.start_daemon(&node)?;
    assert_eq!(
        curl(&a, &format!("http://{}/hello.txt", d.ip))?,
        nginx_d.body
    );

    daemon.stop()?;
    // Outbound from enrolled a: refused, nothing reaches d.
    let err =
        curl(&a, &format!("http://{}/hello.txt", d.ip)).expect_err("a must not bypass the daemon");
    assert!(
        err.to_string().contains("refused") || err.to_string().contains("Couldn't connect"),
        "{err}"
    );
    // Inbound to enrolled b: refused before the app, nothing reaches nginx in b.
    assert!(
        curl(&c, &format!("http://{}/hello.txt", b.ip)).is_err(),
        "c must not reach b around the daemon"
    );
    assert_eq!(
        nginx_d.clients(),
        vec![a.ip.clone()],
        "d saw only the request made while the daemon ran"
    );
    assert!(nginx_b.clients().is_empty(), "b's app saw nothing");
    // Pods that are not enrolled are unaffected.
    assert_eq!(
        curl(&c, &format!("http://{}/hello.txt", d.ip))?,
        nginx_d.body
    );

    // The restarted daemon picks the pinned state back up and serves again.
    daemon.restart()?;
    assert_eq!(
        curl(&a, &format!("http://{}/hello.txt", d.ip))?,
        nginx_d.body
    );
    assert_eq!(
        curl(&c, &format!("http://{}/hello.txt", b.ip))?,
        nginx_b.body
    );
    assert_eq!(nginx_b.clients(), vec![c.ip.clone()]);
    Ok(())
}

#[test]
fn two_hundred_concurrent_connections_keep_every_byte() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let a = bed.pod(&node, "a")?;
    let b = bed.pod(&node, "b")?;
    let _echo = echo_server(&b, 7000)?;
    bed.enroll(&[&a, &b])?;
    let daemon = bed.start_daemon(&node)?;

    let load = env!("CARGO_BIN_EXE_hawser-echo-load");
    let out = a.run(&[load, &format!("{}:7000", b.ip), "200", "262144"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("echo ok: 200/200"), "{stdout}");
    // Every connection went through both sides of the daemon.
    let b7000 = format!("{}:7000", b.ip);
    daemon.wait_for("400 records", Duration::from_secs(10), |_| {
        access(&daemon, "outbound", "default/a", &b7000).len() == 200
            && access(&daemon, "inbound", "default/b", &b7000).len() == 200
    })?;
    let full = daemon.lines_with(&[
        "direction=\"outbound\"",
        "bytes_sent=262144 bytes_received=262144",
    ]);
    assert_eq!(full.len(), 200, "each outbound record counts every byte");
    Ok(())
}

#[test]
fn a_broken_config_edit_keeps_the_last_good_one() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let a = bed.pod(&node, "a")?;
    let d = bed.pod(&node, "d")?;
    let nginx_d = Nginx::start(&bed, &d)?;
    bed.enroll(&[&a])?;
    let daemon = bed.start_daemon(&node)?;

    // A semantic error pins the line exactly; syntax errors are reported where the
    // YAML parser gives up, which can be a later line.
    let broken = a.workload_yaml().replace("podIP: ", "podIP: 999.");
    hawser_testbed::write_atomically(&bed.config_dir().join("workloads.yaml"), &broken)?;
    daemon.wait_for("the rejection", Duration::from_secs(10), |log| {
        log.contains("configuration rejected")
    })?;
    let rejection = daemon.lines_with(&["configuration rejected"]).remove(0);
    assert!(
        rejection.contains("workloads.yaml:9:"),
        "names file and line: {rejection}"
    );
    assert!(!daemon.log().contains("pod unenrolled"));
    assert_eq!(
        curl(&a, &format!("http://{}/hello.txt", d.ip))?,
        nginx_d.body
    );
    let d80 = format!("{}:80", d.ip);
    wait_until(Duration::from_secs(5), "a still captured", || {
        !access(&daemon, "outbound", "default/a", &d80).is_empty()
    })?;
    Ok(())
}

/// The value of `name=value` in a log line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line
        .find(&format!("{name}="))
        .map(|i| i + name.len() + 1)
        .unwrap_or(line.len());
    line[start..].split_whitespace().next().unwrap_or("")
}

#[test]
fn same_node_pods_are_identified_and_policed_without_a_tunnel() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let a = bed.pod(&node, "a")?;
    let b = bed.pod(&node, "b")?;
    let nginx_b = Nginx::start(&bed, &b)?;
    bed.enroll(&[&a, &b])?;
    let daemon = bed.start_daemon(&node)?;
    let url = format!("http://{}/hello.txt", b.ip);
    let policy = |principal: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: b, namespace: default}}\n\
             spec:\n  selector: {{matchLabels: {{app: b}}}}\n  rules:\n  - from: [{{source: {{principals: [\"{principal}\"]}}}}]\n"
        )
    };
    let apply = |yaml: String, reloads: usize| -> Result<()> {
        hawser_testbed::write_atomically(&bed.config_dir().join("policy.yaml"), &yaml)?;
        daemon.wait_for("the policy", Duration::from_secs(10), |log| {
            log.matches("workload configuration reloaded").count() >= reloads
        })
    };
    // a's identity is known from its address on this node: an ALLOW naming it admits it.
    apply(policy("cluster.local/ns/default/sa/a"), 1)?;
    assert_eq!(curl(&a, &url)?, nginx_b.body);
    // Naming someone else refuses a, before the app.
    apply(policy("cluster.local/ns/default/sa/c"), 2)?;
    assert!(curl(&a, &url).is_err());
    daemon.wait_for("the refusal", Duration::from_secs(5), |log| {
        log.lines().any(|l| {
            l.contains("connection refused")
                && l.contains("policy: no rule of ALLOW policies default/b")
        })
    })?;
    assert_eq!(nginx_b.clients(), vec![a.ip.clone()]);
    Ok(())
}

/// A server that binds its port as servers do (SO_REUSEADDR), says whether it could, and
/// greets every connection (which it holds) with its argument.
const GREETER: &str = "
import socket, sys
port, greeting = int(sys.argv[1]), sys.argv[2]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(('0.0.0.0', port))
except OSError as e:
    print(f'bind: {e}', flush=True)
    sys.exit(1)
s.listen(16)
print('listening', flush=True)
held = []
while True:
    c, _ = s.accept()
    c.sendall(greeting.encode() + b'\\n')
    held.append(c)
    print('accepted', flush=True)
";

/// An app that restarts in its pod (a crash, a container restart) binds its port again at
/// once, while the connections the daemon delivered to it wind down: the daemon's side of
/// a connection steered to its inbound listener keeps the address the client dialled, so
/// it sits on the app's port too, and must not hold it against the app's bind.
#[test]
fn an_app_restarting_in_its_pod_binds_its_port_while_its_mesh_connections_end() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let a = bed.pod(&node, "a")?;
    let b = bed.pod(&node, "b")?;
    bed.enroll(&[&a, &b])?;
    let _daemon = bed.start_daemon(&node)?;
    let start = |greeting: &str| -> Result<(Proc, std::path::PathBuf)> {
        let log = bed.dir().join(format!("greeter-{greeting}.log"));
        let argv = ["python3", "-c", GREETER, "7600", greeting];
        let app = Proc::spawn_logged(&argv, &b.netns_path, &b.cgroup, &log)?;
        wait_until(Duration::from_secs(10), "the greeter's bind", || {
            std::fs::read_to_string(&log).is_ok_and(|l| !l.is_empty())
        })?;
        Ok((app, log))
    };
    let read = |log: &std::path::Path| std::fs::read_to_string(log).unwrap_or_default();

    let (first, first_log) = start("one")?;
    assert_eq!(read(&first_log).trim(), "listening");
    let dst = format!("TCP:{}:7600", b.ip);
    let _held = a.spawn(&["sh", "-c", &format!("sleep 30 | socat - {dst}")])?;
    wait_until(Duration::from_secs(10), "the held connection", || {
        read(&first_log).contains("accepted")
    })?;

    drop(first); // killed: its connection ends, the daemon closes its side
    let (_second, second_log) = start("two")?;
    assert_eq!(
        read(&second_log).trim(),
        "listening",
        "the restarted app could not bind its port"
    );
    let greeting = a.run(&["socat", "-T", "2", "-", &dst])?;
    assert_eq!(String::from_utf8_lossy(&greeting.stdout).trim(), "two");
    Ok(())
}
