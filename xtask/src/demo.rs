//! The demo: a node with two pods on network namespaces, the built-in CA, real nginx in
//! pod b, real curl in pod a; the SVIDs the daemon holds and its own record of the
//! connection it carried; then the operator's view: the CLI and the metrics.

use std::time::Duration;

use anyhow::{Result, bail};
use hawser_testbed::{
    Testbed,
    peers::{Nginx, curl},
};

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}

pub fn run() -> Result<()> {
    if !hawser_testbed::can_run() {
        bail!("the demo needs root");
    }
    crate::cmd::step("starting a node with pods a and b (network namespaces, veth, a bridge)");
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let a = bed.pod(&node, "a")?;
    let b = bed.pod(&node, "b")?;
    println!(
        "    pod a: {} (netns {})\n    pod b: {} (netns {}), running nginx",
        a.ip, a.netns, b.ip, b.netns
    );
    let nginx = Nginx::start(&bed, &b)?;
    bed.enroll(&[&a, &b])?;

    crate::cmd::step(
        "starting `hawser ca` (self-signed root) and `hawser node`; it enrolls both pods",
    );
    let (mut ca, mut daemon, info) = bed.start_daemon_with_ca(&node)?;
    ca.echo_log_on_drop(false);
    daemon.echo_log_on_drop(false);
    for line in daemon.lines_with(&["pod enrolled"]) {
        println!("    {line}");
    }
    daemon.wait_for("the SVIDs", Duration::from_secs(10), |log| {
        log.matches("SVID issued").count() >= 2
    })?;
    crate::cmd::step(&format!(
        "the daemon holds one SVID per identity, signed by the CA at {}",
        info.address
    ));
    for line in daemon.lines_with(&["SVID issued"]) {
        println!("    {line}");
    }

    let url = format!("http://{}/hello.txt", b.ip);
    crate::cmd::step(&format!("pod a: curl {url}"));
    let body = curl(&a, &url)?;
    print!("    {body}");
    daemon.wait_for("the access log", Duration::from_secs(5), |log| {
        log.matches("connection closed").count() >= 2
    })?;

    crate::cmd::step("the daemon carried it: captured leaving a, captured entering b");
    for line in daemon.lines_with(&["connection closed"]) {
        println!("    {line}");
    }
    println!(
        "    nginx in pod b saw the client address: {}",
        nginx.clients().join(", ")
    );
    for args in [
        &["status"][..],
        &["certs"],
        &["workloads"],
        &["policy", "check", "--from", "default/a", "--to", "b:80"],
    ] {
        crate::cmd::step(&format!("hawser {}", args.join(" ")));
        print_indented(&node.hawser(args)?);
    }
    crate::cmd::step("curl http://127.0.0.1:15020/metrics | grep istio_tcp_sent");
    let (_, metrics) = node.http_get("http://127.0.0.1:15020/metrics")?;
    for line in metrics.lines().filter(|l| l.starts_with("istio_tcp_sent")) {
        println!("    {line}");
    }
    crate::cmd::step("cleaning up");
    Ok(())
}
