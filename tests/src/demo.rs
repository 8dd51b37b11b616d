//! The demo's scenario: what hawser promises, shown with real parts. Two nodes joined by a
//! link, the built-in CA, pod a and pod c on node1, pod b (nginx) on node2. a → b crosses
//! the link inside the daemons' mTLS tunnel (the capture shows TLS records and never the
//! marker a sent); c → b is refused by b's policy; a → c stays on node1 (no wire to
//! protect, c's daemon still knows a's identity). `cargo xtask demo` narrates it;
//! `tests/tests/demo.rs` checks every claim.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::{
    Service,
    mesh::Mesh,
    peers::{Capture, Nginx, curl},
    write_atomically,
};

/// What the narration is told: a step, or a detail of it.
pub enum Say<'a> {
    Step(&'a str),
    Detail(&'a str),
}

/// What the scenario found, for a test to check.
pub struct Findings {
    /// What curl in a got from nginx in b.
    pub body: String,
    /// The marker a sent, and whether it appeared in the bytes on the node link.
    pub marker: String,
    pub marker_on_wire: bool,
    /// tshark's summary of the TLS records on the link.
    pub tls_records: Vec<String>,
    /// a → b: node1's outbound record, node2's tunnel record.
    pub across: Vec<String>,
    /// Which TLS path the daemons took, and why.
    pub tls_path: String,
    /// c → b: node2's refusal.
    pub refused: Vec<String>,
    /// a → c on node1: the outbound and inbound records.
    pub same_node: Vec<String>,
}

const POLICY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
    metadata: {name: b-from-a, namespace: default}\n\
    spec:\n  selector: {matchLabels: {app: b}}\n  action: ALLOW\n\
    \x20 rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/a]}}]}]\n";

/// Runs the scenario, telling `say` what happens; the daemons' logs are printed at the end
/// when `echo_logs` (for a test that fails).
pub fn run(say: &mut dyn FnMut(Say<'_>), echo_logs: bool) -> Result<Findings> {
    say(Say::Step(
        "two nodes joined by a link; the CA and pod a on node1, pod b on node2; a daemon on each",
    ));
    let mut m = Mesh::new()?;
    for service in [&mut m.ca_service, &mut m.d1, &mut m.d2] {
        service.echo_log_on_drop(echo_logs);
    }
    let c = m.bed.pod(&m.node1, "c")?;
    m.bed.enroll(&[&m.a, &m.b, &c])?;
    m.d1.wait_for("c enrolled with its SVID", Duration::from_secs(15), |log| {
        log.contains("pod=default/c") && log.matches("SVID issued").count() >= 2
    })?;
    for pod in [&m.a, &c, &m.b] {
        say(Say::Detail(&format!(
            "pod {} {} on {}",
            pod.name, pod.ip, pod.node
        )));
    }
    let _nginx_b = Nginx::start(&m.bed, &m.b)?;
    let _nginx_c = Nginx::start(&m.bed, &c)?;
    for (name, d) in [("node1", &m.d1), ("node2", &m.d2)] {
        for line in d.lines_with(&["SVID issued"]) {
            say(Say::Detail(&format!(
                "{name}: {}",
                fields(&line, &["identity", "serial"])
            )));
        }
    }
    say(Say::Step(
        "b's AuthorizationPolicy allows only a's identity",
    ));
    write_atomically(&m.bed.config_dir().join("policies.yaml"), POLICY)?;
    for d in [&m.d1, &m.d2] {
        d.wait_for("the policy", Duration::from_secs(10), |log| {
            log.contains("workload configuration reloaded")
        })?;
    }

    let marker = format!("hawser-demo-marker-{}", std::process::id());
    let url = format!("http://{}/hello.txt", m.b.ip);
    say(Say::Step(&format!(
        "a → b across the link: curl -H 'X-Marker: {marker}' {url}"
    )));
    let capture = Capture::start(&m.bed, &m.node1, &m.link)?;
    let header = format!("X-Marker: {marker}");
    let sent =
        m.a.run(&["curl", "-sS", "--max-time", "10", "-H", &header, &url])?;
    anyhow::ensure!(sent.status.success(), "curl in a: {sent:?}");
    let body = String::from_utf8_lossy(&sent.stdout).into_owned();
    say(Say::Detail(&format!("b answered: {}", body.trim())));
    let tunnel = format!("{}.15008 > {}", m.b.ip, m.a.ip);
    let wire = capture.stop_once("the tunnel on the wire", |w| {
        w.lines().any(|l| l.contains(&tunnel) && l.contains("[F"))
    })?;
    let marker_on_wire = wire.contains(&marker);
    let tls_records = tls_summary(&m)?;
    say(Say::Detail(&format!(
        "on the link (tshark): {} TLS records, the marker {}",
        tls_records.len(),
        if marker_on_wire { "FOUND" } else { "nowhere" }
    )));
    for line in tls_records.iter().take(6) {
        say(Say::Detail(&format!("  {line}")));
    }
    let across = records(&m.d1, "outbound", &m.b.ip)?
        .into_iter()
        .chain(records(&m.d2, "tunnel", &m.b.ip)?)
        .collect::<Vec<_>>();
    for line in &across {
        say(Say::Detail(line));
    }
    let tls_path = tls_path(&m.d1);
    say(Say::Detail(&format!("TLS path: {tls_path}")));

    say(Say::Step(&format!(
        "c → b: {url}, which b's policy does not allow"
    )));
    let refused_curl = curl(&c, &url);
    say(Say::Detail(&format!(
        "curl in c: {}",
        match &refused_curl {
            Ok(_) => "answered (unexpected)".to_string(),
            Err(_) => "no answer: the connection was reset".to_string(),
        }
    )));
    m.d2.wait_for("the refusal", Duration::from_secs(10), |log| {
        log.contains("connection refused") && log.contains(&format!("src={}:", c.ip))
    })?;
    let refused =
        m.d2.lines_with(&["connection refused", &format!("src={}:", c.ip)]);
    for line in &refused {
        say(Say::Detail(&fields(
            line,
            &[
                "direction",
                "src_identity",
                "dst_identity",
                "refusal",
                "reason",
            ],
        )));
    }

    let url_c = format!("http://{}/hello.txt", c.ip);
    say(Say::Step(&format!("a → c on the same node: {url_c}")));
    let body_c = curl(&m.a, &url_c)?;
    say(Say::Detail(&format!("c answered: {}", body_c.trim())));
    let same_node = records(&m.d1, "outbound", &c.ip)?
        .into_iter()
        .chain(records(&m.d1, "inbound", &c.ip)?)
        .collect::<Vec<_>>();
    for line in &same_node {
        say(Say::Detail(line));
    }

    for (node, args) in [
        (&m.node1, &["status"][..]),
        (&m.node2, &["certs"]),
        (
            &m.node2,
            &["policy", "check", "--from", "default/c", "--to", "b:80"],
        ),
    ] {
        say(Say::Step(&format!(
            "on {}: hawser {}",
            node.name,
            args.join(" ")
        )));
        for line in node.hawser(args)?.lines() {
            say(Say::Detail(line));
        }
    }
    Ok(Findings {
        body,
        marker,
        marker_on_wire,
        tls_records,
        across,
        tls_path,
        refused,
        same_node,
    })
}

/// The access records of `d` for connections of `direction` to `ip`, shortened to what
/// a reader checks.
fn records(d: &Service, direction: &str, ip: &str) -> Result<Vec<String>> {
    let (direction, dst) = (format!("direction=\"{direction}\""), format!("dst={ip}:"));
    d.wait_for("the access record", Duration::from_secs(10), |log| {
        log.lines()
            .any(|l| l.contains("connection closed") && l.contains(&direction) && l.contains(&dst))
    })?;
    Ok(d.lines_with(&["connection closed", &direction, &dst])
        .iter()
        .map(|l| {
            fields(
                l,
                &[
                    "direction",
                    "src",
                    "src_identity",
                    "dst",
                    "dst_identity",
                    "security",
                    "tls",
                ],
            )
        })
        .collect())
}

/// The named `key=value` fields of a log line, in that order.
fn fields(line: &str, keys: &[&str]) -> String {
    keys.iter()
        .filter_map(|k| {
            let at = line.find(&format!(" {k}="))? + 1;
            let rest = &line[at..];
            let end = match rest[k.len() + 1..].starts_with('"') {
                true => rest[k.len() + 2..].find('"').map(|e| e + k.len() + 3),
                false => rest.find(' '),
            };
            Some(&rest[..end.unwrap_or(rest.len())])
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// tshark's one-line summaries of the TLS records in the capture of the node link.
fn tls_summary(m: &Mesh) -> Result<Vec<String>> {
    let pcap = m
        .bed
        .dir()
        .join(format!("{}-{}.pcap", m.node1.name, m.link));
    let out = std::process::Command::new("tshark")
        .args(["-r"])
        .arg(&pcap)
        .args([
            "-Y",
            "tls",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "_ws.col.Info",
        ])
        .output()
        .context("tshark")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.replace('\t', "  "))
        .collect())
}

/// What node1's daemon said about kernel TLS.
fn tls_path(d: &Service) -> String {
    d.log()
        .lines()
        .find(|l| l.contains("hawser::tls::offload"))
        .and_then(|l| l.split("hawser::tls::offload: ").nth(1))
        .unwrap_or("the daemon said nothing about kernel TLS")
        .to_string()
}
