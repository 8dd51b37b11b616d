//! A whole node daemon in this test's process, through the composition root's handle:
//! started on its two runtimes, serving real pods (real eBPF, namespaces, nginx, curl),
//! read through the addresses the handle reports, and stopped by it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};
use hawser::{
    app,
    credentials::CredentialRoots,
    logging::{self, LogFormat},
    node::NodeConfig,
    proxy::sockets::Keepalive,
    workload,
};
use hawser_model::egress::OutboundPolicy;
use hawser_testbed::{
    Testbed, can_run,
    peers::{Nginx, curl, wait_until},
};

/// A GET over plain HTTP/1.0: the status line and the body.
fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    Ok(response)
}

fn config(bed: &Testbed, node: &hawser_testbed::Node, log_level: logging::LogLevel) -> NodeConfig {
    let roots = CredentialRoots::new(vec![bed.dir().to_path_buf()]);
    NodeConfig {
        node_name: node.name.clone(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        series_grace: Duration::from_secs(60),
        log_level,
        source: workload::Source::Directory {
            dir: bed.config_dir(),
            interval: Duration::from_millis(200),
            credential_roots: Some(roots.clone()),
        },
        pin_dir: bed.pin_dir().join(&node.name),
        cgroup: node.cgroup.clone(),
        credentials_dir: bed.dir().join("credentials"),
        credential_roots: roots,
        outbound_policy: OutboundPolicy::AllowAny,
        cni_socket: None,
        dns_server: None,
        kernel_tls: false,
        tls_records_per_key: u64::MAX,
        tunnel_reuse: false,
        keepalive: Keepalive {
            idle: Duration::from_secs(120),
        },
        drain: Duration::from_secs(2),
        after_handover: hawser::node::AfterHandover::Exit,
        ca: None,
    }
}

#[test]
fn a_node_daemon_runs_in_process_and_stops_from_its_handle() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let log_level = logging::init(LogFormat::Text);
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let (a, b) = (bed.pod(&node, "a")?, bed.pod(&node, "b")?);
    let nginx_b = Nginx::start(&bed, &b)?;
    bed.enroll(&[&a, &b])?;

    let running = app::start(config(&bed, &node, log_level))?;
    let (admin, metrics) = (running.admin(), running.metrics());
    assert_ne!(admin.port(), 0, "the handle reports the bound port");
    wait_until(Duration::from_secs(10), "both pods enrolled", || {
        get(admin, "/healthz/ready").is_ok_and(|r| r.starts_with("HTTP/1.0 200"))
    })?;

    assert_eq!(
        curl(&a, &format!("http://{}/hello.txt", b.ip))?,
        nginx_b.body
    );
    // Both ends of a → b were relayed by this daemon: its metrics say so.
    let opened = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .filter(|l| {
                l.contains("source_workload=\"a\"") && l.contains("destination_workload=\"b\"")
            })
            .count()
    };
    wait_until(Duration::from_secs(5), "a → b in the metrics", || {
        get(metrics, "/metrics").is_ok_and(|text| opened(&text) >= 2)
    })
    .with_context(|| get(metrics, "/metrics").unwrap_or_default())?;

    running.stop()?;
    assert!(
        TcpStream::connect_timeout(&admin, Duration::from_secs(2)).is_err(),
        "nothing of the daemon is left serving once stopped"
    );
    Ok(())
}
