//! The demo's claims, checked: `cargo xtask demo` shows what this test asserts.

use anyhow::Result;
use hawser_testbed::{can_run, demo};

const A: &str = "spiffe://cluster.local/ns/default/sa/a";
const B: &str = "spiffe://cluster.local/ns/default/sa/b";
const C: &str = "spiffe://cluster.local/ns/default/sa/c";

#[test]
fn the_demo_shows_mtls_on_the_link_identities_a_refusal_and_the_same_node_path() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let found = demo::run(&mut |_| {}, true)?;
    assert_eq!(found.body, "hello from b\n");
    assert!(
        !found.marker_on_wire,
        "{} crossed the link in the clear",
        found.marker
    );
    assert!(
        found
            .tls_records
            .iter()
            .any(|r| r.contains("Application Data")),
        "{:#?}",
        found.tls_records
    );
    let [outbound, tunnel] = &found.across[..] else {
        panic!("a → b: {:#?}", found.across);
    };
    for record in [outbound, tunnel] {
        assert!(
            record.contains(&format!("src_identity=\"{A}\""))
                && record.contains(&format!("dst_identity=\"{B}\""))
                && record.contains("security=\"mtls\""),
            "{record}"
        );
    }
    assert!(!found.tls_path.is_empty());
    assert!(
        found
            .refused
            .iter()
            .any(|r| r.contains(&format!("src_identity=\"{C}\""))
                && r.contains("refusal=\"policy\"")),
        "{:#?}",
        found.refused
    );
    assert!(
        found
            .same_node
            .iter()
            .any(|r| r.contains("direction=\"inbound\"")
                && r.contains(&format!("src_identity=\"{A}\""))),
        "{:#?}",
        found.same_node
    );
    Ok(())
}
