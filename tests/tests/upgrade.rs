//! Upgrading node daemons one node at a time, as a DaemonSet rollout does: a new `hawser
//! node` starts beside the running one and takes over (steering, admin and metrics
//! ports); the old one drains what it accepted, then exits (`--after-handover exit`, the
//! default) or waits, idle, for SIGTERM (`wait`, as the DaemonSet runs it). Node1, node2,
//! then node1 again, under a request every 50 ms from a (node1) to b (node2) and a stream
//! in flight at each upgrade: no request fails, no stream is cut (also with serial tunnel
//! sessions, where the requests follow one another on a session the old daemon holds).

use std::time::Duration;

use anyhow::Result;
use hawser_testbed::{
    CaInfo, Node, Service, Testbed, can_run,
    mesh::Mesh,
    peers::{Nginx, Reader, RequestLoop, wait_listening, wait_until},
};

const DRAIN: &[&str] = &["--drain-secs", "15"];
/// The new daemons stay, idle, once taken over in turn (as in the DaemonSet).
const WAIT: &[&str] = &["--after-handover", "wait"];

/// Starts generation `generation` of `node`'s daemon beside `old` with `args`, and waits
/// until `old` has handed over.
fn upgrade(
    bed: &Testbed,
    ca: &CaInfo,
    (old, node): (&Service, &Node),
    generation: u32,
    args: &[&str],
) -> Result<Service> {
    let new = bed.start_node_generation(node, Some(ca), args, generation)?;
    old.wait_for("the hand-over", Duration::from_secs(10), |log| {
        log.contains("a new daemon takes over")
    })?;
    Ok(new)
}

#[test]
fn upgrading_each_node_daemon_fails_no_request_and_cuts_no_stream() -> Result<()> {
    upgrades_fail_no_request(&[])
}

/// The same with `--tunnel-reuse`: the draining daemon tells each session it holds that
/// it takes no further stream, and serves the one that may have crossed that word.
#[test]
fn upgrades_fail_no_request_on_serial_tunnel_sessions() -> Result<()> {
    upgrades_fail_no_request(&["--tunnel-reuse"])
}

fn upgrades_fail_no_request(extra: &[&str]) -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let mut m = Mesh::with_node_args(&[DRAIN, extra].concat())?;
    let _nginx = Nginx::start(&m.bed, &m.b)?;
    let _slow = m.b.spawn(&[
        "socat",
        "TCP-LISTEN:7400,reuseaddr,fork",
        "SYSTEM:echo hello; sleep 4; echo bye",
    ])?;
    wait_listening(&m.b, 7400, "the slow server")?;
    let requests = RequestLoop::start(&m.bed, &m.a, &m.b.ip)?;

    // Node1, node2, then node1 again (its second upgrade replaces a daemon that waits).
    let mut upgraded: Vec<Service> = Vec::new();
    for (node, generation) in [(1, 2), (2, 2), (1, 3)] {
        // A stream opened through the daemons about to be replaced.
        let stream = Reader::start(&m.bed, &m.a, &m.b.ip, 7400)?;
        stream.wait_started("the stream's greeting")?;
        let (node_ref, old) = match (node, generation) {
            (1, 2) => (&m.node1, &mut m.d1),
            (2, _) => (&m.node2, &mut m.d2),
            _ => (&m.node1, &mut upgraded[0]),
        };
        let args = [DRAIN, WAIT, extra].concat();
        let new = upgrade(&m.bed, &m.ca, (old, node_ref), generation, &args)?;
        let said = stream.outcome()?;
        assert!(said.starts_with("EOF 10"), "the stream read {said:?}");

        if generation == 2 {
            // Started with the default, `--after-handover exit`: gone once drained.
            wait_until(Duration::from_secs(30), "the old daemon to exit", || {
                old.exited()
            })?;
        } else {
            old.wait_for("the idle wait", Duration::from_secs(30), |log| {
                log.contains("idle until stopped")
            })?;
            assert!(
                !old.exited(),
                "a daemon told to wait after the hand-over exited"
            );
            let stopping = std::time::Instant::now();
            old.stop()?;
            assert!(
                stopping.elapsed() < Duration::from_secs(5),
                "SIGTERM ends the idle daemon"
            );
        }
        // Everything the old daemon held ended before its drain window did: nothing was
        // left for it to cut (a session it kept taking new streams on would be).
        assert!(
            !old.log().contains("drain window ended"),
            "the old daemon had to cut connections:\n{}",
            old.log()
        );
        upgraded.push(new);
    }

    requests.finish_all_ok("the upgrades", 50)?;
    if extra.contains(&"--tunnel-reuse") {
        // The requests did follow one another on sessions (node1's latest daemon's count).
        let (_, metrics) = m.node1.http_get("http://127.0.0.1:15020/metrics")?;
        let kept = "hawser_tunnel_spares_total{outcome=\"kept\"} ";
        let kept = metrics.lines().find_map(|l| l.strip_prefix(kept));
        assert!(
            kept.is_some_and(|n| n != "0"),
            "no session kept:\n{metrics}"
        );
    }
    for new in &upgraded[1..] {
        assert!(
            new.count("connection closed") > 0,
            "the new daemon carried traffic:\n{}",
            new.log()
        );
    }
    Ok(())
}

#[test]
fn kernel_tls_streams_move_to_the_new_daemons_and_keep_splicing() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    if hawser_testbed::expected_tls_path() != "ktls" {
        eprintln!(
            "SKIPPED: this kernel has no kernel TLS, so no connection to hand over; \
             `cargo xtask vm-test` runs this test on one that has"
        );
        return Ok(());
    }
    // A drain window far shorter than the stream: only a hand-off can keep it.
    const SHORT: &[&str] = &["--drain-secs", "1"];
    let mut m = Mesh::with_node_args(SHORT)?;
    let _nginx = Nginx::start(&m.bed, &m.b)?;
    let requests = RequestLoop::start(&m.bed, &m.a, &m.b.ip)?;
    let go = m.bed.dir().join("say-bye");
    let server = format!(
        "SYSTEM:echo hello; while [ ! -e {} ]; do sleep 0.2; done; echo bye",
        go.display()
    );
    let _server =
        m.b.spawn(&["socat", "TCP-LISTEN:7400,reuseaddr,fork", &server])?;
    wait_listening(&m.b, 7400, "the server")?;
    let stream = Reader::start(&m.bed, &m.a, &m.b.ip, 7400)?;
    stream.wait_started("the greeting")?;

    // The client's daemon (an outbound connection), then the server's (a tunnel one).
    let mut upgraded = Vec::new();
    for (node, old) in [(&m.node1, &mut m.d1), (&m.node2, &mut m.d2)] {
        let new = m.bed.start_node_generation(node, Some(&m.ca), SHORT, 2)?;
        wait_until(Duration::from_secs(60), "the old daemon to exit", || {
            old.exited()
        })?;
        // (A request of the loop in flight may go along.)
        let handed_over = old.lines_with(&["connection handed over", ":7400"]);
        assert!(!handed_over.is_empty(), "{}", old.log());
        let adopted = "connection adopted from the previous daemon";
        new.wait_for_line(Duration::from_secs(10), &[adopted, ":7400"])?;
        // Everything the old daemon held ended before its drain window did: nothing was
        // left for it to cut (a session it kept taking new streams on would be).
        assert!(
            !old.log().contains("drain window ended"),
            "the old daemon had to cut connections:\n{}",
            old.log()
        );
        upgraded.push(new);
    }

    // Both old daemons are gone: the rest of the stream, and its end, go through the new.
    std::fs::write(&go, "")?;
    let said = stream.outcome()?;
    assert!(said.starts_with("EOF 10"), "the stream read {said:?}");
    requests.finish_all_ok("the upgrades", 1)?;
    for new in &upgraded {
        let closed = ["connection closed", ":7400", "tls=\"ktls\""];
        new.wait_for_line(Duration::from_secs(10), &closed)?;
    }
    Ok(())
}

#[test]
fn a_killed_daemon_fails_closed_until_it_is_back_and_the_window_is_reported() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let mut m = Mesh::new()?;
    let _nginx = Nginx::start(&m.bed, &m.b)?;
    let requests = RequestLoop::start(&m.bed, &m.a, &m.b.ip)?;
    std::thread::sleep(Duration::from_millis(500));
    let killed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    m.d1.kill(); // SIGKILL: nothing is closed cleanly, the pins stay
    m.d1.restart()?;
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed) = requests.finish()?;
    // Each failure's start time leads its line: the window runs from the kill to the
    // last one that failed (the loop asks every 50 ms).
    let last = failed
        .iter()
        .filter_map(|f| f.split_whitespace().next()?.parse::<f64>().ok())
        .fold(killed, f64::max);
    eprintln!(
        "kill -9 recovery: {} requests failed; connects failed for about {:.0} ms",
        failed.len(),
        (last - killed) * 1000.0 + 50.0
    );
    assert!(ok > 0, "requests went through before and after");
    // Never open: while a's daemon was gone nothing of a's reached b outside the tunnel
    // (b's daemon would have taken it in as plaintext on its inbound listener).
    let around =
        m.d2.lines_with(&["direction=\"inbound\"", &format!("src={}:", m.a.ip)]);
    assert!(
        around.is_empty(),
        "a's traffic went around its daemon: {around:#?}"
    );
    Ok(())
}
