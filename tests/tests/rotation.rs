//! CA material rotates live: the sequence of the README's rotation guide (add a new root,
//! switch the CA to an intermediate of it, let SVIDs renew, drop the old root), run
//! against a CA and two node daemons that are not restarted, with a request every 50 ms
//! from a (node1) to b (node2) through the mTLS tunnel the whole time. Then the CA
//! restarts: the daemons, whose `--ca-root` names the old root only, reconnect to it by
//! the roots of the bundle.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use hawser_testbed::{
    Service, can_run,
    mesh::Mesh,
    peers::{Nginx, RequestLoop},
    write_atomically,
};

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

/// Waits until `service` has logged `line` with `field` `count` times in all.
fn wait_logged(service: &Service, line: &str, field: &str, count: usize) -> Result<()> {
    service.wait_for(line, Duration::from_secs(30), |log| {
        log.lines()
            .filter(|l| l.contains(line) && l.contains(field))
            .count()
            >= count
    })
}

#[test]
fn the_ca_moves_to_a_new_root_with_no_failed_request_and_nothing_restarted() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    // SVIDs renew at about half their lifetime: every few seconds here.
    let mut m = Mesh::with_node_args(&["--svid-ttl-secs", "10"])?;
    let _nginx = Nginx::start(&m.bed, &m.b)?;
    let pids = [m.ca_service.pid(), m.d1.pid(), m.d2.pid()];
    let state =
        m.ca.root
            .parent()
            .context("the CA's directory")?
            .to_path_buf();
    let requests = RequestLoop::start(&m.bed, &m.a, &m.b.ip)?;

    // A new root and an intermediate under it, made as an operator would.
    let pki = m.bed.dir().join("pki-root2");
    let pki_arg = pki.to_str().unwrap();
    m.node1.hawser(&["pki", "root-ca", "--dir", pki_arg])?;
    m.node1
        .hawser(&["pki", "intermediate", "--dir", pki_arg, "--name", "int2"])?;
    let (root1, root2) = (
        read(&state.join("root-cert.pem"))?,
        read(&pki.join("root-cert.pem"))?,
    );
    let int2 = pki.join("int2");
    let int2_subject = "Intermediate CA int2";

    // 1. Both roots trusted: every daemon's bundle has two roots.
    write_atomically(&state.join("root-cert.pem"), &format!("{root1}{root2}"))?;
    for d in [&m.d1, &m.d2] {
        wait_logged(d, "trust bundle updated", "roots=2", 1)?;
    }
    // 2. The CA signs with the intermediate of the new root. Its serving certificate stays
    //    (its root is still trusted: a daemon that missed step 1 can still reach the CA).
    for file in ["ca-key.pem", "ca-cert.pem", "cert-chain.pem"] {
        write_atomically(&state.join(file), &read(&int2.join(file))?)?;
    }
    wait_logged(&m.ca_service, "CA material loaded", int2_subject, 1)?;
    wait_logged(&m.ca_service, "CA serving certificate kept", "", 1)?;
    // 3. Every SVID renewed under it.
    for d in [&m.d1, &m.d2] {
        wait_logged(d, "SVID issued", int2_subject, 1)?;
    }
    // 4. The old root dropped: the CA's serving certificate is issued under int2, bundles
    //    have one root, and the daemons still reach the CA and renew again.
    write_atomically(&state.join("root-cert.pem"), &root2)?;
    wait_logged(
        &m.ca_service,
        "CA serving certificate issued again",
        int2_subject,
        1,
    )?;
    for d in [&m.d1, &m.d2] {
        wait_logged(d, "trust bundle updated", "roots=1", 1)?;
        let renewed = d.lines_with(&["SVID issued", int2_subject]).len();
        wait_logged(d, "SVID issued", int2_subject, renewed + 1)?;
    }

    let unreachable = m.d1.count("CA unreachable") + m.d2.count("CA unreachable");
    assert_eq!(
        [m.ca_service.pid(), m.d1.pid(), m.d2.pid()],
        pids,
        "no process was restarted"
    );

    // 5. A new connection to the CA is verified with the bundle's roots, not --ca-root.
    m.ca_service.stop()?;
    m.ca_service.restart()?;
    for d in [&m.d1, &m.d2] {
        let renewed = d.lines_with(&["SVID issued", int2_subject]).len();
        wait_logged(d, "SVID issued", int2_subject, renewed + 1)?;
    }

    requests.finish_all_ok("the rotation", 100)?;
    assert_eq!(
        unreachable, 0,
        "the daemons reached the CA throughout the rotation"
    );
    Ok(())
}
