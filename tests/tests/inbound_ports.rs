//! End-to-end: a mesh service reached by clients outside the mesh that hold company-CA
//! certificates (the daemon terminates their TLS on a port declared with that CA as an
//! extra trust anchor), beside mesh clients through the tunnel; and nginx behind hawser
//! told who called in a PROXY protocol v2 header.

use std::time::Duration;

use anyhow::Result;
use hawser_testbed::{
    Pod, can_run,
    mesh::Mesh,
    peers::{Capture, Nginx, curl},
    pki::{self, Pair},
    write_atomically,
};

const SERVER_NAME: &str = "b.shop.example";
const A: &str = "spiffe://cluster.local/ns/default/sa/a";

struct Scene {
    nginx: Nginx,
    proxied_log: std::path::PathBuf,
    ext: Pod,
    company: Pair,
    pki: std::path::PathBuf,
    m: Mesh,
}

/// The mesh (a on node1, b on node2), an outside pod on node2, a company CA, and nginx in
/// b: port 8443 expects PROXY headers, 9443 plain.
fn scene() -> Result<Scene> {
    let m = Mesh::new()?;
    let ext = m.bed.pod(&m.node2, "ext")?;
    let pki = m.bed.dir().join("pki");
    let company = pki::ca(&pki, "company-root")?;
    let server = pki::leaf(
        &pki,
        "b-server",
        &format!("/CN={SERVER_NAME}"),
        &format!("subjectAltName=DNS:{SERVER_NAME}"),
        &company,
    )?;
    let proxied_log = m.bed.dir().join("proxied.log");
    let nginx = Nginx::start_with_servers(&m.bed, &m.b, |html| {
        format!(
            "server {{ listen 8443 proxy_protocol; root {html}; access_log {log} proxied; }}\n\
             server {{ listen 9443; root {html}; }}\n",
            html = html.display(),
            log = proxied_log.display()
        )
    })?;
    let (crt, key, ca) = (
        server.cert.display(),
        server.key.display(),
        company.cert.display(),
    );
    let yaml = format!(
        "apiVersion: hawser.dev/v1alpha1\nkind: InboundPorts\nmetadata: {{name: b-ports}}\nspec:\n\
         \x20 selector: {{matchLabels: {{app: b}}}}\n  ports:\n\
         \x20 - port: 8443\n    proxyProtocol: v2\n\
         \x20   tls: {{mode: MUTUAL, caCertificates: {ca}, serverCertificate: {crt}, privateKey: {key}}}\n\
         \x20 - port: 9443\n    tls: {{serverCertificate: {crt}, privateKey: {key}}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: b}}\nspec:\n\
         \x20 selector: {{matchLabels: {{app: b}}}}\n  action: ALLOW\n  rules:\n\
         \x20 - from: [{{source: {{principals: [billing.corp.example, cluster.local/ns/default/sa/a]}}}}]\n"
    );
    let before = m.d2.count("workload configuration reloaded");
    write_atomically(&m.bed.config_dir().join("ports.yaml"), &yaml)?;
    m.d2.wait_for("the ports", Duration::from_secs(10), |log| {
        log.matches("workload configuration reloaded").count() > before
    })?;
    Ok(Scene {
        nginx,
        proxied_log,
        ext,
        company,
        pki,
        m,
    })
}

impl Scene {
    /// A client certificate from the company CA.
    fn company_client(&self, cn: &str) -> Result<Pair> {
        pki::leaf(
            &self.pki,
            cn,
            &format!("/O=Corp/CN={cn}"),
            &format!("subjectAltName=DNS:{cn}.corp.example"),
            &self.company,
        )
    }

    /// `https://b.shop.example:<port>/hello.txt` from the outside pod, trusting the
    /// company root, with `client` as the client certificate.
    fn https(&self, port: u16, client: Option<&Pair>) -> Result<String> {
        let resolve = format!("{SERVER_NAME}:{port}:{}", self.m.b.ip);
        let url = format!("https://{SERVER_NAME}:{port}/hello.txt");
        let ca = self.company.cert.display().to_string();
        let mut args = vec![
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
        ];
        let (cert, key);
        if let Some(pair) = client {
            (cert, key) = (
                pair.cert.display().to_string(),
                pair.key.display().to_string(),
            );
            args.extend(["--cert", &cert, "--key", &key]);
        }
        args.push(&url);
        let out = self.ext.run(&args)?;
        anyhow::ensure!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Lines of the PROXY-reading server's log: `$proxy_protocol_addr $remote_addr port status`.
    fn proxied(&self) -> Vec<String> {
        // nginx logs just after answering.
        std::thread::sleep(Duration::from_millis(300));
        std::fs::read_to_string(&self.proxied_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `attempt` fails for the client, and the node2 daemon logs one more refusal of a
    /// connection to `port` naming `why`.
    fn refused(
        &self,
        port: u16,
        why: &str,
        attempt: impl FnOnce() -> Result<String>,
    ) -> Result<()> {
        let dst = format!("dst={}:{port}", self.m.b.ip);
        let refusals = |log: &str| {
            log.lines()
                .filter(|l| l.contains("connection refused") && l.contains(&dst) && l.contains(why))
                .count()
        };
        let before = refusals(&self.m.d2.log());
        let result = attempt();
        assert!(result.is_err(), "port {port} ({why}): {result:?}");
        self.m.d2.wait_for(
            &format!("the refusal ({why})"),
            Duration::from_secs(5),
            |log| refusals(log) > before,
        )
    }
}

#[test]
fn company_ca_clients_reach_the_port_with_the_extra_anchor_beside_mesh_clients() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let s = scene()?;
    let capture = Capture::in_pod(&s.m.bed, &s.m.b, "lo")?;

    // A company client outside the mesh: the daemon verifies it against the company root
    // and delivers to nginx with a PROXY header naming it.
    let billing = s.company_client("billing")?;
    assert_eq!(s.https(8443, Some(&billing))?, s.nginx.body);
    let ext = &s.ext.ip;
    assert_eq!(s.proxied(), vec![format!("{ext} {ext} 8443 200")]);
    // Kernel TLS carries the session where the kernel has it, as for the tunnel.
    let path = format!("tls=\"{}\"", hawser_testbed::expected_tls_path());
    s.m.d2
        .wait_for("the access record", Duration::from_secs(5), |log| {
            log.lines().any(|l| {
                l.contains("connection closed")
                    && l.contains("src_identity=\"billing.corp.example\"")
                    && l.contains("security=\"mtls\"")
                    && l.contains(&path)
            })
        })?;

    // A mesh client keeps working on the same port, through the tunnel.
    let url = format!("http://{}:8443/hello.txt", s.m.b.ip);
    assert_eq!(curl(&s.m.a, &url)?, s.nginx.body);
    let a = &s.m.a.ip;
    assert_eq!(s.proxied().last(), Some(&format!("{a} {a} 8443 200")));

    // What the headers said, as Wireshark's PROXY dissector reads them on b's loopback:
    // the company client's CN in PP2_TYPE_SSL, the mesh client's SPIFFE ID in 0xE0.
    let fields = [
        "proxy.src.ipv4",
        "proxy.v2.tlv.ssl.cn",
        "proxy.v2.tlv.value",
    ];
    let mut decoded = Vec::new();
    hawser_testbed::peers::wait_until(Duration::from_secs(10), "both PROXY headers", || {
        decoded = capture
            .fields("proxy.v2.magic", &fields)
            .unwrap_or_default();
        decoded.len() >= 2
    })?;
    // Tab-terminated, so that a field can be matched whole.
    let decoded: Vec<String> = decoded.iter().map(|l| format!("{l}\t")).collect();
    assert!(
        decoded
            .iter()
            .any(|l| l.starts_with(&format!("{ext}\t")) && l.contains("\tbilling\t")),
        "{decoded:?}"
    );
    let spiffe_hex: String = A.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(
        decoded
            .iter()
            .any(|l| l.starts_with(&format!("{a}\t")) && l.contains(&spiffe_hex)),
        "{decoded:?}"
    );
    Ok(())
}

#[test]
fn the_wrong_certificate_or_port_or_principal_is_refused() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let s = scene()?;
    let billing = s.company_client("billing")?;
    // A port whose TLS trusts only the mesh: the company certificate is refused.
    s.refused(9443, "TLS handshake", || s.https(9443, Some(&billing)))?;
    // No client certificate, or one from a CA nobody configured.
    s.refused(8443, "TLS handshake", || s.https(8443, None))?;
    let rogue_ca = pki::ca(&s.pki, "rogue-root")?;
    let rogue = pki::leaf(
        &s.pki,
        "rogue",
        "/CN=billing",
        "subjectAltName=DNS:billing.corp.example",
        &rogue_ca,
    )?;
    s.refused(8443, "TLS handshake", || s.https(8443, Some(&rogue)))?;
    // The mesh's own CA vouches for the mesh's trust domain only: a certificate it signed
    // that claims another domain's identity is refused, whatever policy says of it.
    let state = s.m.ca.root.parent().expect("the CA's state directory");
    let mesh_ca = pki::Pair {
        cert: state.join("ca-cert.pem"),
        key: state.join("ca-key.pem"),
    };
    let foreign = pki::leaf(
        &s.pki,
        "foreign",
        "/CN=foreign",
        "subjectAltName=URI:spiffe://other.td/ns/default/sa/a",
        &mesh_ca,
    )?;
    s.refused(8443, "outside its trust domain", || {
        s.https(8443, Some(&foreign))
    })?;
    // A good company certificate that policy does not name.
    let intruder = s.company_client("intruder")?;
    s.refused(8443, "no rule of ALLOW policies default/b matches", || {
        s.https(8443, Some(&intruder))
    })?;
    assert!(s.proxied().is_empty(), "nothing reached the app");
    Ok(())
}
