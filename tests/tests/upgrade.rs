//! Upgrading node daemons one node at a time, as a DaemonSet rollout does: a new `hawser
//! node` starts beside the running one and takes over (steering, admin and metrics
//! ports); the old one drains what it accepted and exits. Across both upgrades, a request
//! every 50 ms from a (node1) to b (node2) and a stream in flight at each upgrade: no
//! request fails, no stream is cut.

use std::time::Duration;

use anyhow::Result;
use hawser_testbed::{
    CaInfo, Node, Service, Testbed, can_run,
    mesh::Mesh,
    peers::{Nginx, Reader, RequestLoop, wait_listening, wait_until},
};

const DRAIN: &[&str] = &["--drain-secs", "15"];

/// Starts a new daemon beside `old` and waits until `old` has handed over and exited.
fn upgrade(bed: &Testbed, ca: &CaInfo, old: &mut Service, node: &Node) -> Result<Service> {
    let new = bed.start_node_generation(node, Some(ca), DRAIN, 2)?;
    old.wait_for("the hand-over", Duration::from_secs(10), |log| {
        log.contains("a new daemon takes over")
    })?;
    wait_until(Duration::from_secs(30), "the old daemon to exit", || {
        old.exited()
    })?;
    Ok(new)
}

#[test]
fn upgrading_each_node_daemon_fails_no_request_and_cuts_no_stream() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let mut m = Mesh::with_node_args(DRAIN)?;
    let _nginx = Nginx::start(&m.bed, &m.b)?;
    let _slow = m.b.spawn(&[
        "socat",
        "TCP-LISTEN:7400,reuseaddr,fork",
        "SYSTEM:echo hello; sleep 4; echo bye",
    ])?;
    wait_listening(&m.b, 7400, "the slow server")?;
    let requests = RequestLoop::start(&m.bed, &m.a, &m.b.ip)?;

    let mut upgraded = Vec::new();
    for node in [1, 2] {
        // A stream opened through the daemons about to be replaced.
        let stream = Reader::start(&m.bed, &m.a, &m.b.ip, 7400)?;
        stream.wait_started("the stream's greeting")?;
        let (old, node) = match node {
            1 => (&mut m.d1, &m.node1),
            _ => (&mut m.d2, &m.node2),
        };
        upgraded.push(upgrade(&m.bed, &m.ca, old, node)?);
        let said = stream.outcome()?;
        assert!(said.starts_with("EOF 10"), "the stream read {said:?}");
    }

    let (ok, failed) = requests.finish()?;
    assert!(
        failed.is_empty(),
        "requests failed during the upgrades: {failed:#?}"
    );
    assert!(
        ok >= 50,
        "the loop ran through the upgrades ({ok} requests)"
    );
    for new in &upgraded {
        assert!(
            new.count("connection closed") > 0,
            "the new daemon carried traffic:\n{}",
            new.log()
        );
    }
    Ok(())
}
