//! End-to-end: two trust domains, each with its own CA and node, federated by exchanging
//! their roots as SPIFFE bundles. A workload of td1 reaches one of td2 whose policy names
//! it, each side checking the other against that domain's bundle only; withdrawing td1's
//! bundle from td2 cuts what is open and refuses what comes next.

use std::{path::Path, time::Duration};

use anyhow::Result;
use hawser_testbed::{
    Node, Pod, Testbed, can_run,
    peers::{Nginx, Reader, curl, quiet_server, wait_until},
    write_atomically,
};

/// `pod`'s workload, in `trust_domain`.
fn in_domain(pod: &Pod, trust_domain: &str) -> String {
    let yaml = pod.workload_yaml();
    yaml.replace(
        "  nodeName:",
        &format!("  trustDomain: {trust_domain}\n  nodeName:"),
    )
}

/// Writes the roots of `root_pem` to `to` as a SPIFFE bundle, as an operator exports
/// them for the other domain.
fn export_bundle(node: &Node, root_pem: &Path, to: &Path) -> Result<()> {
    let roots = root_pem.to_str().unwrap();
    let bundle = node.hawser(&["pki", "spiffe-bundle", "--roots", roots])?;
    write_atomically(to, &bundle)
}

/// Opens a stream from `a` to `b`'s quiet server on 7200, deletes `bundle`, and checks
/// that the app saw the stream reset (cut), never ended as if complete.
fn withdraw_under_a_stream(bed: &Testbed, a: &Pod, b: &Pod, bundle: &Path) -> Result<()> {
    let open = Reader::start(bed, a, &b.ip, 7200)?;
    open.wait_started("the greeting")?;
    std::fs::remove_file(bundle)?;
    let said = open.outcome()?;
    assert!(
        said.starts_with("ERROR ECONNRESET"),
        "the app read {said:?}"
    );
    Ok(())
}

#[test]
fn a_federated_trust_domain_is_trusted_through_its_own_bundle_until_withdrawn() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let bed = Testbed::new()?;
    let node1 = bed.node("node1", 1)?;
    let node2 = bed.node("node2", 2)?;
    bed.connect_nodes(&node1, &node2)?;
    let a = bed.pod(&node1, "a")?;
    let b = bed.pod(&node2, "b")?;
    write_atomically(
        &bed.config_dir().join("workloads.yaml"),
        &[in_domain(&a, "td1"), in_domain(&b, "td2")].join("---\n"),
    )?;
    // b admits a of td1, and no one else.
    let allow = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
        metadata: {name: from-td1, namespace: default}\nspec:\n  selector: {matchLabels: {app: b}}\n\
        \x20 action: ALLOW\n  rules: [{from: [{source: {principals: [td1/ns/default/sa/a]}}]}]\n";
    write_atomically(&bed.config_dir().join("policies.yaml"), allow)?;

    let (td1_bundle, td2_bundle) = (bed.dir().join("td1.json"), bed.dir().join("td2.json"));
    let federate = |td: &str, file: &Path| format!("{td}={}", file.display());
    let (f1, f2) = (federate("td2", &td2_bundle), federate("td1", &td1_bundle));
    let args1 = ["--trust-domain", "td1", "--federated-bundle", &f1];
    let args2 = ["--trust-domain", "td2", "--federated-bundle", &f2];
    let (_ca1_service, ca1) = bed.start_ca_named(&node1, &[&node1], "ca1", &args1)?;
    let (_ca2_service, ca2) = bed.start_ca_named(&node2, &[&node2], "ca2", &args2)?;
    export_bundle(&node1, &ca1.root, &td1_bundle)?;
    export_bundle(&node2, &ca2.root, &td2_bundle)?;
    let d1 = bed.start_node_with(&node1, Some(&ca1), &["--trust-domain", "td1"])?;
    let d2 = bed.start_node_with(&node2, Some(&ca2), &["--trust-domain", "td2"])?;
    for (d, other) in [(&d1, "td2"), (&d2, "td1")] {
        d.wait_for(
            "the SVID and the federated bundle",
            Duration::from_secs(15),
            |log| {
                log.contains("SVID issued")
                    && log.lines().any(|l| {
                        l.contains("trust bundle updated") && l.contains(&format!("[\"{other}\"]"))
                    })
            },
        )?;
    }

    // a (td1) → b (td2): each daemon checked the other against that domain's roots.
    let nginx = Nginx::start(&bed, &b)?;
    let url = format!("http://{}/hello.txt", b.ip);
    assert_eq!(curl(&a, &url)?, nginx.body);
    let soon = Duration::from_secs(5);
    d2.wait_for_line(
        soon,
        &[
            "direction=\"tunnel\"",
            "src_identity=\"spiffe://td1/ns/default/sa/a\"",
            "security=\"mtls\"",
        ],
    )?;
    let b_id = "dst_identity=\"spiffe://td2/ns/default/sa/b\"";
    d1.wait_for_line(soon, &["direction=\"outbound\"", b_id])?;

    // td2 withdraws td1's bundle: a's open connection is cut, a new one refused.
    let _quiet = quiet_server(&b, 7200)?;
    withdraw_under_a_stream(&bed, &a, &b, &td1_bundle)?;
    let untrusted = "no trust bundle for trust domain td1";
    d2.wait_for_line(soon, &["connection cut", untrusted])?;
    let refused = curl(&a, &url);
    assert!(refused.is_err(), "a got through: {refused:?}");
    d2.wait_for_line(soon, &["connection refused", untrusted])?;

    // td1 trusted again; then td1 withdraws td2's bundle: a's own daemon cuts the tunnel
    // a opened to b (the server's domain is no longer trusted).
    export_bundle(&node1, &ca1.root, &td1_bundle)?;
    wait_until(Duration::from_secs(10), "a reaching b again", || {
        curl(&a, &url).is_ok_and(|body| body == nginx.body)
    })?;
    withdraw_under_a_stream(&bed, &a, &b, &td2_bundle)?;
    let untrusted = "no trust bundle for trust domain td2";
    d1.wait_for_line(
        soon,
        &["connection cut", "direction=\"outbound\"", untrusted],
    )?;
    Ok(())
}
