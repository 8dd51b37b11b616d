//! End-to-end: apps speak plain HTTP to an external nginx that requires client
//! certificates (`ssl_verify_client on`); the daemon originates the TLS, as in the two
//! scenarios of Istio's egress mTLS guide: nginx trusting the mesh's root (ISTIO_MUTUAL),
//! and nginx trusting a company CA (MUTUAL with the company's certificates).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;
use hawser_testbed::{
    Node, Pod, Service, Testbed, can_run,
    peers::{Nginx, TlsServer},
    pki::{self, Pair},
    write_atomically,
};

const COMMON: &str = "nginx-mtls.common-ca.local";
const DIFF: &str = "nginx-mtls.diff-ca.local";

/// Pods a and c enrolled on node1 with the CA; pod ext (outside the mesh) runs nginx with
/// a TLS server per scenario: 8443 for COMMON (trusts the mesh root), 9443 for DIFF
/// (trusts the company root).
struct Scene {
    daemon: Service,
    _ca: Service,
    nginx: Nginx,
    a: Pod,
    c: Pod,
    ext: Pod,
    node: Node,
    pki: PathBuf,
    company: Pair,
    credentials: PathBuf,
    bed: Testbed,
}

fn scene(node_args: &[&str]) -> Result<Scene> {
    let bed = Testbed::new()?;
    let node = bed.node("node1", 1)?;
    let (a, c, ext) = (
        bed.pod(&node, "a")?,
        bed.pod(&node, "c")?,
        bed.pod(&node, "ext")?,
    );
    bed.enroll(&[&a, &c])?;
    let (ca_service, ca) = bed.start_ca(&node, &[&node])?;
    let credentials = bed.dir().join("credentials");
    std::fs::create_dir_all(&credentials)?;
    let mut args = vec!["--credentials-dir", credentials.to_str().unwrap()];
    args.extend(node_args);
    let daemon = bed.start_node_with(&node, Some(&ca), &args)?;
    daemon.wait_for("the SVIDs", Duration::from_secs(15), |log| {
        log.matches("SVID issued").count() >= 2
    })?;

    let pki = bed.dir().join("pki");
    let mesh_ca = Pair::mesh_ca(ca.root.parent().unwrap());
    let common = pki::leaf(
        &pki,
        "common",
        "/CN=common",
        &format!("subjectAltName=DNS:{COMMON}"),
        &mesh_ca,
    )?;
    let company = pki::ca(&pki, "company-root")?;
    let diff = pki::leaf(
        &pki,
        "diff",
        "/CN=diff",
        &format!("subjectAltName=DNS:{DIFF}"),
        &company,
    )?;
    let nginx = Nginx::start_with_tls(
        &bed,
        &ext,
        &[
            TlsServer {
                port: 8443,
                server_name: COMMON,
                cert: &common.cert,
                key: &common.key,
                client_ca: &ca.root,
                tls12_only: false,
            },
            TlsServer {
                port: 8444,
                server_name: COMMON,
                cert: &common.cert,
                key: &common.key,
                client_ca: &ca.root,
                tls12_only: true,
            },
            TlsServer {
                port: 9443,
                server_name: DIFF,
                cert: &diff.cert,
                key: &diff.key,
                client_ca: &company.cert,
                tls12_only: false,
            },
        ],
    )?;
    Ok(Scene {
        daemon,
        _ca: ca_service,
        nginx,
        a,
        c,
        ext,
        node,
        pki,
        company,
        credentials,
        bed,
    })
}

impl Scene {
    /// Istio YAML in the configuration directory; returns once the daemon loaded it.
    fn apply(&self, yaml: &str) -> Result<()> {
        let before = self.daemon.count("workload configuration reloaded");
        write_atomically(&self.bed.config_dir().join("egress.yaml"), yaml)?;
        self.daemon
            .wait_for("the egress configuration", Duration::from_secs(10), |log| {
                log.matches("workload configuration reloaded").count() > before
            })
    }

    /// A client certificate for `cn` from the company CA.
    fn company_client(&self, cn: &str) -> Result<Pair> {
        pki::leaf(
            &self.pki,
            cn,
            &format!("/CN={cn}"),
            "subjectAltName=DNS:client.example",
            &self.company,
        )
    }

    /// The last request nginx logged.
    fn last_request(&self) -> String {
        self.nginx.requests().pop().unwrap_or_default()
    }

    /// `curl http://<host>:<port>/hello.txt` from `pod`, the name resolving to the ext pod
    /// (as `--resolve` does in Istio's guide): plain HTTP, whatever the daemon originates.
    fn get(&self, pod: &Pod, host: &str, port: u16) -> Result<String> {
        let resolve = format!("{host}:{port}:{}", self.ext.ip);
        let url = format!("http://{host}:{port}/hello.txt");
        let out = pod.run(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            &resolve,
            &url,
        ])?;
        anyhow::ensure!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A ServiceEntry for `host` on the ext pod, each `(port, targetPort)` declared.
fn service_entry(name: &str, host: &str, ext: &Pod, ports: &[(u16, u16)]) -> String {
    let ports: String = ports
        .iter()
        .map(|(p, t)| format!("  - {{number: {p}, name: p{p}, protocol: HTTP, targetPort: {t}}}\n"))
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\n\
         spec:\n  hosts: [{host}]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n\
         \x20 endpoints: [{{address: {ip}}}]\n  ports:\n{ports}---\n",
        ip = ext.ip
    )
}

#[test]
fn istio_mutual_reaches_an_external_nginx_that_trusts_the_mesh_root() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let s = scene(&[])?;
    // The guide's "common CA" scenario: the app dials port 80 in plain HTTP.
    // Port 81 reaches a server that speaks TLS 1.2 only.
    s.apply(&format!(
        "{}apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\n\
         metadata: {{name: common}}\nspec:\n  host: {COMMON}\n  trafficPolicy:\n    portLevelSettings:\n\
         \x20   - port: {{number: 80}}\n      tls: {{mode: ISTIO_MUTUAL}}\n\
         \x20   - port: {{number: 81}}\n      tls: {{mode: ISTIO_MUTUAL}}\n",
        service_entry("common", COMMON, &s.ext, &[(80, 8443), (81, 8444)])
    ))?;
    // The daemon shows what it loaded.
    let dump: serde_json::Value = serde_json::from_str(&s.node.hawser(&["workloads", "--json"])?)?;
    assert_eq!(
        dump["egress"]["service_entries"][0]["ports"][0]["target_port"],
        8443
    );
    assert_eq!(
        dump["egress"]["destination_rules"][0]["port_tls"]["80"]["mode"],
        "ISTIO_MUTUAL"
    );
    assert_eq!(s.get(&s.a, COMMON, 80)?, s.nginx.body);
    let request = s.last_request();
    assert!(
        request.contains(&format!("8443 200 \"{COMMON}\"")) && request.ends_with("TLSv1.3 SUCCESS"),
        "nginx saw: {request}"
    );
    // TLS 1.2 stays in rustls (or goes to the kernel's TLS), where 1.3 leaves it for
    // the daemon's record layer: both carry the request.
    assert_eq!(s.get(&s.a, COMMON, 81)?, s.nginx.body);
    let request = s.last_request();
    assert!(
        request.contains(&format!("8444 200 \"{COMMON}\"")) && request.ends_with("TLSv1.2 SUCCESS"),
        "nginx saw: {request}"
    );
    let upstream = format!("upstream={}:8443", s.ext.ip);
    s.daemon
        .wait_for("the egress record", Duration::from_secs(5), |log| {
            log.lines().any(|l| {
                l.contains(&upstream)
                    && l.contains("security=\"mtls\"")
                    && l.contains("connection closed")
            })
        })?;
    Ok(())
}

#[test]
fn mutual_uses_each_workloads_company_certificate_and_follows_a_secret_update() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let s = scene(&[])?;
    // a's certificate: files mounted as a Kubernetes Secret is (an atomic `..data` swap).
    let secret = s.bed.dir().join("a-secret");
    mount_secret(&secret, "v1", &s.company_client("app-a")?, &s.company.cert)?;
    // c's: a credential directory named in the rule.
    let c_cert = s.company_client("app-c")?;
    // The rule is in namespace default: its credentials are under default/.
    let c_dir = s.credentials.join("default/c-cred");
    std::fs::create_dir_all(&c_dir)?;
    std::fs::copy(&c_cert.cert, c_dir.join("tls.crt"))?;
    std::fs::copy(&c_cert.key, c_dir.join("tls.key"))?;
    std::fs::copy(&s.company.cert, c_dir.join("ca.crt"))?;

    let rule = |name: &str, app: &str, tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}}}\n\
             spec:\n  host: {DIFF}\n  workloadSelector: {{matchLabels: {{app: {app}}}}}\n\
             \x20 trafficPolicy:\n    tls: {tls}\n---\n"
        )
    };
    let f = |file: &str| secret.join(file).display().to_string();
    s.apply(&format!(
        "{}{}{}",
        service_entry("diff", DIFF, &s.ext, &[(80, 9443)]),
        rule(
            "for-a",
            "a",
            &format!(
                "{{mode: MUTUAL, clientCertificate: {}, privateKey: {}, caCertificates: {}, sni: {DIFF}}}",
                f("tls.crt"),
                f("tls.key"),
                f("ca.crt")
            )
        ),
        rule("for-c", "c", "{mode: MUTUAL, credentialName: c-cred}"),
    ))?;

    let subject = |pod: &Pod| -> Result<String> {
        assert_eq!(s.get(pod, DIFF, 80)?, s.nginx.body);
        Ok(s.last_request())
    };
    let from_a = subject(&s.a)?;
    assert!(
        from_a.contains(&format!("9443 200 \"{DIFF}\" \"CN=app-a\" TLSv1.3 SUCCESS")),
        "{from_a}"
    );
    let from_c = subject(&s.c)?;
    assert!(from_c.contains("\"CN=app-c\" TLSv1.3 SUCCESS"), "{from_c}");

    // The Secret is updated under the running daemon: the next connection uses it.
    mount_secret(
        &secret,
        "v2",
        &s.company_client("app-a-rotated")?,
        &s.company.cert,
    )?;
    let rotated = subject(&s.a)?;
    assert!(
        rotated.contains("\"CN=app-a-rotated\" TLSv1.3 SUCCESS"),
        "{rotated}"
    );
    Ok(())
}

#[test]
fn missing_wrong_or_misnamed_credentials_are_refused() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let s = scene(&[])?;
    let rogue_ca = pki::ca(&s.pki, "rogue-root")?;
    let rogue = pki::leaf(
        &s.pki,
        "rogue",
        "/CN=app-a",
        "subjectAltName=DNS:x",
        &rogue_ca,
    )?;
    let good = s.company_client("app-a")?;
    let company = s.company.cert.display().to_string();
    let mutual = |pair: &Pair, extra: &str| {
        format!(
            "{{mode: MUTUAL, clientCertificate: {}, privateKey: {}, caCertificates: {company}{extra}}}",
            pair.cert.display(),
            pair.key.display()
        )
    };
    let levels = [
        (81, format!("{{mode: SIMPLE, caCertificates: {company}}}")),
        (82, mutual(&rogue, "")),
        (
            83,
            mutual(
                &good,
                &format!(", sni: wrong.example, subjectAltNames: [{DIFF}]"),
            ),
        ),
        // The daemon checks the server: the company's server does not chain to the mesh root.
        (84, "{mode: ISTIO_MUTUAL}".to_string()),
    ];
    let settings: String = levels
        .iter()
        .map(|(port, tls)| format!("    - port: {{number: {port}}}\n      tls: {tls}\n"))
        .collect();
    s.apply(&format!(
        "{}apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: diff}}\n\
         spec:\n  host: {DIFF}\n  trafficPolicy:\n    portLevelSettings:\n{settings}",
        service_entry(
            "diff",
            DIFF,
            &s.ext,
            &[(81, 9443), (82, 9443), (83, 9443), (84, 9443)]
        )
    ))?;

    // No client certificate, or one from another CA: nginx refuses the request.
    assert!(
        s.get(&s.a, DIFF, 81)?
            .contains("No required SSL certificate was sent")
    );
    assert!(s.get(&s.a, DIFF, 82)?.contains("The SSL certificate error"));
    // An SNI nginx does not serve: it rejects the handshake; the app's connection fails.
    for (port, why) in [(83, "DestinationRule default/diff"), (84, "server chain")] {
        let err = s
            .get(&s.a, DIFF, port)
            .expect_err("the connection must fail");
        assert!(err.to_string().contains("curl"), "{err}");
        let dst = format!("dst={}:{port}", s.ext.ip);
        s.daemon
            .wait_for("the refusal", Duration::from_secs(5), |log| {
                log.lines().any(|l| {
                    l.contains("connection refused") && l.contains(&dst) && l.contains(why)
                })
            })?;
    }
    Ok(())
}

#[test]
fn registry_only_refuses_what_no_service_entry_declares() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let s = scene(&["--outbound-traffic-policy", "REGISTRY_ONLY"])?;
    let err = s
        .get(&s.a, "plain.example", 80)
        .expect_err("undeclared: refused");
    assert!(err.to_string().contains("curl"));
    s.daemon
        .wait_for("the refusal", Duration::from_secs(5), |log| {
            log.contains("REGISTRY_ONLY: no ServiceEntry declares")
        })?;
    assert!(s.nginx.requests().is_empty(), "nothing reached nginx");

    // Declared (no DestinationRule: plain TCP), it passes.
    s.apply(&service_entry(
        "plain",
        "plain.example",
        &s.ext,
        &[(80, 80)],
    ))?;
    assert_eq!(s.get(&s.a, "plain.example", 80)?, s.nginx.body);
    Ok(())
}

#[test]
fn a_dns_service_entry_follows_what_its_name_resolves_to() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    // The host nginx serves (its `server_name`), now found through DNS.
    const NAME: &str = COMMON;
    let s = scene(&[
        "--dns-server",
        "127.0.0.1:5353",
        "--outbound-traffic-policy",
        "REGISTRY_ONLY",
    ])?;
    // dnsmasq, in the namespace the daemon runs in, answers for the name (TTL 0).
    let dnsmasq = |ip: &str| {
        s.node.spawn(&[
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--port=5353",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            &format!("--address=/{NAME}/{ip}"),
        ])
    };
    let resolved_to = |ip: &str| {
        let seen = format!("\"{NAME}\": [{ip}]");
        s.daemon.wait_for(
            &format!("{NAME} resolved to {ip}"),
            Duration::from_secs(15),
            |log| {
                log.lines()
                    .any(|l| l.contains("ServiceEntry names resolved") && l.contains(&seen))
            },
        )
    };
    let mut server = dnsmasq(&s.ext.ip)?;
    s.apply(&format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: dns}}\n\
         spec:\n  hosts: [{NAME}]\n  location: MESH_EXTERNAL\n  resolution: DNS\n\
         \x20 ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8443}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: dns}}\n\
         spec: {{host: {NAME}, trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}}}\n"
    ))?;
    resolved_to(&s.ext.ip)?;
    // The app resolved the name to the same address: the daemon originates mTLS to it.
    assert_eq!(s.get(&s.a, NAME, 80)?, s.nginx.body);
    let request = s.last_request();
    assert!(
        request.contains(&format!("8443 200 \"{COMMON}\"")) && request.ends_with("SUCCESS"),
        "nginx saw: {request}"
    );
    // The name moves elsewhere: its old address is no longer the service.
    server.terminate()?;
    server = dnsmasq("10.1.0.250")?;
    resolved_to("10.1.0.250")?;
    assert!(s.get(&s.a, NAME, 80).is_err());
    s.daemon
        .wait_for("the refusal", Duration::from_secs(5), |log| {
            log.contains(&format!(
                "REGISTRY_ONLY: no ServiceEntry declares {}:80",
                s.ext.ip
            ))
        })?;
    server.terminate()?;
    Ok(())
}

/// Writes `pair` and `ca` as a Kubernetes Secret volume does: `dir/<version>/` holds the
/// files, `dir/..data` links to it (replaced atomically), `dir/tls.crt` etc. link through
/// `..data`.
fn mount_secret(dir: &Path, version: &str, pair: &Pair, ca: &Path) -> Result<()> {
    let files = dir.join(version);
    std::fs::create_dir_all(&files)?;
    std::fs::copy(&pair.cert, files.join("tls.crt"))?;
    std::fs::copy(&pair.key, files.join("tls.key"))?;
    std::fs::copy(ca, files.join("ca.crt"))?;
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    for file in ["tls.crt", "tls.key", "ca.crt"] {
        let link = dir.join(file);
        if !link.exists() {
            std::os::unix::fs::symlink(Path::new("..data").join(file), link)?;
        }
    }
    Ok(())
}
