//! End-to-end: the node daemon gets its pods' identities from the built-in CA (real
//! `hawser ca` and `hawser node` processes in a test-bed node).

use std::time::Duration;

use anyhow::Result;
use hawser_testbed::{Testbed, can_run};

#[test]
fn the_daemon_holds_one_svid_per_identity_on_its_node() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let a = bed.pod(&node, "a")?;
    let b = bed.pod(&node, "b")?;
    bed.enroll(&[&a, &b])?;
    let (ca, daemon, info) = bed.start_daemon_with_ca(&node)?;

    let id_a = "spiffe://cluster.local/ns/default/sa/a";
    let id_b = "spiffe://cluster.local/ns/default/sa/b";
    daemon.wait_for("both SVIDs", Duration::from_secs(10), |log| {
        log.lines()
            .any(|l| l.contains("SVID issued") && l.contains(id_a))
            && log
                .lines()
                .any(|l| l.contains("SVID issued") && l.contains(id_b))
    })?;
    // The CA audited both, for node1.
    assert_eq!(
        ca.lines_with(&["decision=\"issued\"", "node=\"node1\""])
            .len(),
        2,
        "{}",
        ca.log()
    );
    daemon.wait_for("the trust bundle", Duration::from_secs(10), |log| {
        log.contains("trust bundle updated roots=1")
    })?;

    // b leaves the node: its SVID is dropped, a's stays.
    bed.enroll(&[&a])?;
    daemon.wait_for("b's SVID dropped", Duration::from_secs(10), |log| {
        log.lines()
            .any(|l| l.contains("SVID dropped") && l.contains(id_b))
    })?;
    assert!(daemon.lines_with(&["SVID dropped", id_a]).is_empty());

    // Revoking a's identity reaches the daemon through the bundle.
    std::fs::write(&info.revocations, format!("identities: [\"{id_a}\"]\n"))?;
    daemon.wait_for("the revocation", Duration::from_secs(10), |log| {
        log.lines()
            .any(|l| l.contains("trust bundle updated") && l.contains(id_a))
    })?;
    Ok(())
}
