//! Identity end to end: `hawser pki` checked with the real openssl, the CA's gRPC API over
//! real TLS, and the daemon's SVID manager against a live CA (outage, rotation,
//! revocation).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use hawser::{
    ca::{self, CaConfig},
    grpc::istio::{
        IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
    },
    identity::certs,
    svid::{CaClient, CaClientConfig, Svid, SvidConfig, SvidManager},
};
use hawser_model::SpiffeId;
use rcgen::{CertificateParams, IsCa, KeyPair, SanType};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Code,
    transport::{Certificate, ClientTlsConfig, Endpoint},
};

const TOKEN_NODE1: &str = "node1-token-0123456789";
const TOKEN_NODE2: &str = "node2-token-0123456789";

fn workload(name: &str, sa: &str, node: &str, ip: &str) -> String {
    format!(
        "apiVersion: hawser.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{serviceAccount: {sa}, podIP: {ip}, nodeName: {node}, netns: /run/netns/{name}}}\n---\n"
    )
}

/// A CA in this process on an ephemeral port, with workloads `cart` on node1 and
/// `payments` on node2.
struct TestCa {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    cacerts: Option<PathBuf>,
    max_ttl: Duration,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestCa {
    async fn start(cacerts: Option<PathBuf>, max_ttl: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        std::fs::write(
            dir.path().join("config/w.yaml"),
            workload("cart-1", "cart", "node1", "10.0.0.2")
                + &workload("pay-1", "payments", "node2", "10.0.0.3"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("tokens.yaml"),
            format!("node1: {TOKEN_NODE1}\nnode2: {TOKEN_NODE2}\n"),
        )
        .unwrap();
        let mut ca = TestCa {
            dir,
            addr: "127.0.0.1:0".parse().unwrap(),
            cacerts,
            max_ttl,
            stop: None,
            task: None,
        };
        ca.restart().await;
        ca
    }

    fn config(&self) -> CaConfig {
        CaConfig {
            listen: self.addr,
            metrics_addr: None,
            trust_domain: "cluster.local".into(),
            cacerts: self.cacerts.clone(),
            state_dir: self.dir.path().join("state"),
            nodes: ca::Nodes::Files {
                config_dir: self.dir.path().join("config"),
                node_tokens: self.dir.path().join("tokens.yaml"),
            },
            revocations: Some(self.revocations()),
            federated: Vec::new(),
            max_ttl: self.max_ttl,
            server_names: vec!["localhost".into()],
            reload_interval: Duration::from_millis(100),
        }
    }

    fn revocations(&self) -> PathBuf {
        self.dir.path().join("revoked.yaml")
    }

    /// (Re)starts on the same address.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let ca = ca::Ca::load(self.config()).await.unwrap();
        self.task = Some(tokio::spawn(ca.serve(listener, async {
            let _ = rx.await;
        })));
        self.stop = Some(tx);
    }

    async fn stop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }

    /// The roots a client trusts: the plug-in root, or the self-signed one.
    fn root_pem(&self) -> String {
        let dir = self
            .cacerts
            .clone()
            .unwrap_or_else(|| self.dir.path().join("state"));
        std::fs::read_to_string(dir.join("root-cert.pem")).unwrap()
    }

    /// Where `client(token)` keeps its token.
    fn token_file(&self, token: &str) -> PathBuf {
        self.dir.path().join(format!("{token}.token"))
    }

    fn client(&self, token: &str) -> CaClient {
        let token_file = self.token_file(token);
        std::fs::write(&token_file, token).unwrap();
        CaClient::new(&CaClientConfig {
            address: format!("https://{}", self.addr),
            root_pem: self.root_pem(),
            server_name: "localhost".into(),
            token_file,
        })
        .unwrap()
    }

    /// A raw Istio CA API call with any CSR and credential.
    async fn raw(
        &self,
        token: Option<&str>,
        csr: String,
        ttl_secs: i64,
    ) -> Result<Vec<String>, tonic::Status> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.root_pem()))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: ttl_secs,
            metadata: None,
        });
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        IstioCertificateServiceClient::new(channel)
            .create_certificate(request)
            .await
            .map(|r| r.into_inner().cert_chain)
    }
}

fn cart() -> SpiffeId {
    "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap()
}

fn csr(sans: Vec<SanType>, is_ca: IsCa) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.is_ca = is_ca;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// A CSR for `id` made by openssl with key options `key` (kinds rcgen does not make).
fn openssl_csr(key: &[&str], id: &str) -> String {
    let san = format!("subjectAltName=URI:{id}");
    let mut args = vec![
        "req",
        "-new",
        "-nodes",
        "-keyout",
        "/dev/null",
        "-subj",
        "/",
    ];
    args.extend(key);
    args.extend(["-addext", &san]);
    let out = Command::new("openssl")
        .args(&args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed by cargo xtask bootstrap");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn hawser(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_hawser"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hawser {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Root and intermediate "cluster1" made with `hawser pki`, as Istio's plug-in task does.
fn pki_dir(key_type: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    hawser(&["pki", "root-ca", "--dir", d, "--key-type", key_type]);
    hawser(&[
        "pki",
        "intermediate",
        "--dir",
        d,
        "--name",
        "cluster1",
        "--key-type",
        key_type,
    ]);
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

async fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn pki_outputs_verify_with_openssl() {
    for key_type in ["ecdsa-p256", "rsa-2048"] {
        let dir = pki_dir(key_type);
        let d = dir.path();
        let c = d.join("cluster1");
        let (ok, out) = openssl(&[
            "verify",
            "-CAfile",
            d.join("root-cert.pem").to_str().unwrap(),
            c.join("ca-cert.pem").to_str().unwrap(),
        ]);
        assert!(ok, "{key_type}: {out}");
        let (_, text) = openssl(&[
            "x509",
            "-noout",
            "-text",
            "-in",
            c.join("ca-cert.pem").to_str().unwrap(),
        ]);
        assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
        let (_, root) = openssl(&[
            "x509",
            "-noout",
            "-text",
            "-in",
            d.join("root-cert.pem").to_str().unwrap(),
        ]);
        assert!(
            root.contains("CA:TRUE") && !root.contains("pathlen"),
            "{root}"
        );
        use std::os::unix::fs::PermissionsExt;
        for key in [d.join("root-key.pem"), c.join("ca-key.pem")] {
            assert_eq!(
                std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                key.display()
            );
        }
        let chain = std::fs::read_to_string(c.join("cert-chain.pem")).unwrap();
        let root_pem = std::fs::read_to_string(d.join("root-cert.pem")).unwrap();
        assert!(
            chain.ends_with(&root_pem),
            "cert-chain.pem is intermediate then root"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plugged_in_ca_issues_svids_that_chain_to_the_plugged_in_files() {
    let pki = pki_dir("ecdsa-p256");
    let cacerts = pki.path().join("cluster1");
    let ca = TestCa::start(Some(cacerts.clone()), Duration::from_secs(3600)).await;
    let svid = ca
        .client(TOKEN_NODE1)
        .fetch_svid(&cart(), Duration::from_secs(600))
        .await
        .unwrap();

    // Istio's plug-in checks: the served intermediate and root are the plugged-in files.
    let file = |n: &str| std::fs::read_to_string(cacerts.join(n)).unwrap();
    assert_eq!(svid.chain.len(), 3);
    assert_eq!(svid.chain[1].trim(), file("ca-cert.pem").trim());
    assert_eq!(svid.chain[2].trim(), file("root-cert.pem").trim());
    let leaf = certs::info(&svid.chain[0]).unwrap();
    assert_eq!(leaf.uri_sans, vec![cart().to_string()]);
    assert!(!leaf.is_ca);

    // The real openssl agrees: the leaf verifies against intermediate + root, for both uses.
    let tmp = tempfile::tempdir().unwrap();
    let leaf_file = write(tmp.path(), "leaf.pem", &svid.chain[0]);
    let cafile = write(
        tmp.path(),
        "ca.pem",
        &(file("ca-cert.pem") + &file("root-cert.pem")),
    );
    for purpose in ["sslclient", "sslserver"] {
        let (ok, out) = openssl(&[
            "verify", "-purpose", purpose, "-CAfile", &cafile, &leaf_file,
        ]);
        assert!(ok && out.contains("OK"), "{purpose}: {out}");
    }
    let (_, text) = openssl(&["x509", "-noout", "-text", "-in", &leaf_file]);
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains(&format!("URI:{}", cart())), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn self_signed_root_is_created_once_and_reused() {
    let mut ca = TestCa::start(None, Duration::from_secs(3600)).await;
    let state = ca.dir.path().join("state");
    let root = std::fs::read_to_string(state.join("root-cert.pem")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(state.join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let root_info = certs::info(&root).unwrap();
    let years = (root_info.not_after - root_info.not_before).whole_days() / 365;
    assert_eq!(years, 10);
    ca.stop().await;
    ca.restart().await;
    assert_eq!(
        std::fs::read_to_string(state.join("root-cert.pem")).unwrap(),
        root
    );
    let svid = ca
        .client(TOKEN_NODE1)
        .fetch_svid(&cart(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(svid.chain.last().unwrap().trim(), root.trim());
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_foreign_identities_and_unknown_nodes() {
    let ca = TestCa::start(None, Duration::from_secs(3600)).await;
    let payments = csr(
        vec![uri("spiffe://cluster.local/ns/shop/sa/payments")],
        IsCa::NoCa,
    );
    // node1 hosts no payments workload; node2 does.
    let err = ca
        .raw(Some(TOKEN_NODE1), payments.clone(), 60)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .contains("node node1 runs no workload as spiffe://cluster.local/ns/shop/sa/payments")
    );
    assert!(
        ca.raw(Some(TOKEN_NODE2), payments.clone(), 60)
            .await
            .is_ok()
    );
    // No credential, or a wrong one.
    assert_eq!(
        ca.raw(None, payments.clone(), 60).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        ca.raw(Some("not-a-node-token-at-all"), payments, 60)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_bad_csrs_with_invalid_argument() {
    let ca = TestCa::start(None, Duration::from_secs(3600)).await;
    let id = cart().to_string();
    let cases = [
        (
            "garbage",
            "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n"
                .to_string(),
            "malformed",
        ),
        ("oversized", "A".repeat(20 * 1024), "larger than"),
        (
            "extra DNS SAN",
            csr(
                vec![uri(&id), SanType::DnsName("cart.shop".try_into().unwrap())],
                IsCa::NoCa,
            ),
            "exactly one URI SAN",
        ),
        (
            "two URIs",
            csr(
                vec![uri(&id), uri("spiffe://cluster.local/ns/shop/sa/other")],
                IsCa::NoCa,
            ),
            "exactly one URI SAN",
        ),
        ("no SAN", csr(vec![], IsCa::NoCa), "exactly one URI SAN"),
        (
            "a CA",
            csr(
                vec![uri(&id)],
                IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
            ),
            "CA certificate",
        ),
        (
            "other trust domain",
            csr(
                vec![uri("spiffe://evil.example/ns/shop/sa/cart")],
                IsCa::NoCa,
            ),
            "trust domain",
        ),
        (
            "not SPIFFE",
            csr(vec![uri("https://cart.shop")], IsCa::NoCa),
            "not a SPIFFE ID",
        ),
        (
            "RSA-1024",
            openssl_csr(&["-newkey", "rsa:1024"], &id),
            "RSA key of 1024 bits",
        ),
        (
            "secp256k1",
            openssl_csr(
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
                &id,
            ),
            "only ECDSA P-256/P-384",
        ),
    ];
    for (what, csr, message) in cases {
        let err = ca.raw(Some(TOKEN_NODE1), csr, 60).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(message), "{what}: {}", err.message());
    }
    // Strong keys of the other accepted kinds are signed.
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![uri(&id)];
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        assert!(ca.raw(Some(TOKEN_NODE1), pem, 60).await.is_ok(), "{alg:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_is_capped_by_the_ca() {
    let ca = TestCa::start(None, Duration::from_secs(3600)).await;
    let lifetime = |chain: Vec<String>| {
        let leaf = certs::info(&chain[0]).unwrap();
        (leaf.not_after - leaf.not_before).whole_seconds()
    };
    let id = cart().to_string();
    // not_before is back-dated one minute for clock skew.
    assert_eq!(
        lifetime(
            ca.raw(Some(TOKEN_NODE1), csr(vec![uri(&id)], IsCa::NoCa), 600)
                .await
                .unwrap()
        ),
        660
    );
    assert_eq!(
        lifetime(
            ca.raw(
                Some(TOKEN_NODE1),
                csr(vec![uri(&id)], IsCa::NoCa),
                48 * 3600
            )
            .await
            .unwrap()
        ),
        3660
    );
    assert_eq!(
        lifetime(
            ca.raw(Some(TOKEN_NODE1), csr(vec![uri(&id)], IsCa::NoCa), 0)
                .await
                .unwrap()
        ),
        3660
    );
}

fn fast(ttl: Duration) -> SvidConfig {
    SvidConfig {
        ttl,
        retry_min: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
        bundle_interval: Duration::from_millis(100),
    }
}

fn serial(rx: &tokio::sync::watch::Receiver<Option<Arc<Svid>>>) -> Option<String> {
    rx.borrow().as_ref().map(|s| s.serial.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn svids_refresh_before_expiry_and_are_dropped_with_the_last_pod() {
    // The CA grants 2 s; the manager renews half-way, about 1 s after each issue.
    let ca = TestCa::start(None, Duration::from_secs(2)).await;
    let manager = SvidManager::new(ca.client(TOKEN_NODE1), fast(Duration::from_secs(2)));
    let rx = manager.acquire(&cart());
    let first = wait_until("first SVID", Duration::from_secs(10), || serial(&rx)).await;
    let second = wait_until("a refreshed SVID", Duration::from_secs(10), || {
        serial(&rx).filter(|s| *s != first)
    })
    .await;
    assert_ne!(first, second);
    let svid = manager.svid(&cart()).unwrap();
    assert!(!svid.expired());
    assert!(svid.key_pem.contains("PRIVATE KEY"));

    // Two pods share the identity; the SVID goes with the second release.
    let _again = manager.acquire(&cart());
    manager.release(&cart());
    assert!(manager.svid(&cart()).is_some());
    manager.release(&cart());
    assert!(manager.svid(&cart()).is_none());
    assert!(manager.held().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_outage_is_ridden_out_with_the_cached_svid() {
    let mut ca = TestCa::start(None, Duration::from_secs(3600)).await;
    let manager = SvidManager::new(ca.client(TOKEN_NODE1), fast(Duration::from_secs(3600)));
    let rx = manager.acquire(&cart());
    let first = wait_until("first SVID", Duration::from_secs(10), || serial(&rx)).await;

    ca.stop().await;
    // A second identity cannot be had while the CA is down; the first is still served.
    let other: SpiffeId = "spiffe://cluster.local/ns/shop/sa/cart2".parse().unwrap();
    let rx_other = manager.acquire(&other);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(serial(&rx_other).is_none());
    assert_eq!(
        serial(&rx),
        Some(first.clone()),
        "cached SVID served through the outage"
    );

    // The CA comes back: the pending request goes through (cart2 is not on node1, so the
    // CA refuses it explicitly now, which also proves the retry reached it).
    std::fs::write(
        ca.dir.path().join("config/x.yaml"),
        workload("cart2-1", "cart2", "node1", "10.0.0.9"),
    )
    .unwrap();
    ca.restart().await;
    wait_until(
        "cart2's SVID after recovery",
        Duration::from_secs(10),
        || serial(&rx_other),
    )
    .await;
    assert_eq!(serial(&rx), Some(first));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_svid_is_not_served_while_the_ca_is_down() {
    let mut ca = TestCa::start(None, Duration::from_secs(1)).await;
    let manager = SvidManager::new(ca.client(TOKEN_NODE1), fast(Duration::from_secs(1)));
    let rx = manager.acquire(&cart());
    wait_until("first SVID", Duration::from_secs(10), || serial(&rx)).await;
    ca.stop().await;
    // The CA grants 1 s: the SVID expires about 1 s after issue.
    wait_until(
        "the expired SVID to be withdrawn",
        Duration::from_secs(10),
        || rx.borrow().is_none().then_some(()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn root_rotation_trusts_both_roots_and_moves_to_the_new_one() {
    // Old and new roots, each with an intermediate; root-cert.pem lists both during rotation.
    let old = pki_dir("ecdsa-p256");
    let new = pki_dir("ecdsa-p256");
    let combined = std::fs::read_to_string(old.path().join("root-cert.pem")).unwrap()
        + &std::fs::read_to_string(new.path().join("root-cert.pem")).unwrap();
    for dir in [old.path(), new.path()] {
        std::fs::write(dir.join("cluster1/root-cert.pem"), &combined).unwrap();
    }
    let mut ca = TestCa::start(Some(old.path().join("cluster1")), Duration::from_secs(3600)).await;
    let manager = SvidManager::new(ca.client(TOKEN_NODE1), fast(Duration::from_secs(3600)));
    let rx = manager.acquire(&cart());
    let bundle = manager.trust_bundle();
    wait_until("a bundle with both roots", Duration::from_secs(10), || {
        (bundle.borrow().roots.len() == 2).then_some(())
    })
    .await;
    wait_until("first SVID", Duration::from_secs(10), || serial(&rx)).await;
    let old_root = std::fs::read_to_string(old.path().join("root-cert.pem")).unwrap();
    assert_eq!(
        manager.svid(&cart()).unwrap().chain.last().unwrap().trim(),
        old_root.trim()
    );

    // Switch the CA to the intermediate under the new root; a new SVID chains to it, and
    // the bundle still trusts both, so peers holding old-root SVIDs keep working.
    ca.stop().await;
    ca.cacerts = Some(new.path().join("cluster1"));
    ca.restart().await;
    // (What the manager does at its next refresh, done now instead of in half a lifetime.)
    let fresh = ca
        .client(TOKEN_NODE1)
        .fetch_svid(&cart(), Duration::from_secs(600))
        .await
        .unwrap();
    let new_root = std::fs::read_to_string(new.path().join("root-cert.pem")).unwrap();
    assert_eq!(fresh.chain.last().unwrap().trim(), new_root.trim());
    assert_eq!(bundle.borrow().roots.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn revocations_reach_the_daemon() {
    let ca = TestCa::start(None, Duration::from_secs(3600)).await;
    let manager = SvidManager::new(ca.client(TOKEN_NODE1), fast(Duration::from_secs(3600)));
    let rx = manager.acquire(&cart());
    let bundle = manager.trust_bundle();
    let first = wait_until("first SVID", Duration::from_secs(10), || serial(&rx)).await;

    // Revoking the serial: the daemon sees it in the bundle and replaces its SVID.
    std::fs::write(ca.revocations(), format!("serials: [\"{first}\"]\n")).unwrap();
    wait_until(
        "the revoked serial in the bundle",
        Duration::from_secs(10),
        || {
            bundle
                .borrow()
                .revoked_serials
                .contains(&first)
                .then_some(())
        },
    )
    .await;
    wait_until("a replacement SVID", Duration::from_secs(10), || {
        serial(&rx).filter(|s| *s != first)
    })
    .await;

    // Revoking the identity: listed in the bundle, and the CA issues no more for it.
    std::fs::write(ca.revocations(), format!("identities: [\"{}\"]\n", cart())).unwrap();
    wait_until(
        "the revoked identity in the bundle",
        Duration::from_secs(10),
        || {
            bundle
                .borrow()
                .revoked_identities
                .contains(&cart().to_string())
                .then_some(())
        },
    )
    .await;
    let err = ca
        .raw(
            Some(TOKEN_NODE1),
            csr(vec![uri(&cart().to_string())], IsCa::NoCa),
            60,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("revoked"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_token_file_is_read_again_for_every_request() {
    let ca = TestCa::start(None, Duration::from_secs(3600)).await;
    // As the kubelet replaces a projected ServiceAccount token under a running daemon.
    let client = ca.client("expired-token-0123456789");
    let Err(refused) = client.fetch_svid(&cart(), Duration::from_secs(600)).await else {
        panic!("a wrong token must be refused");
    };
    assert!(
        refused.to_string().contains("Unauthenticated"),
        "{refused:#}"
    );
    std::fs::write(ca.token_file("expired-token-0123456789"), TOKEN_NODE1).unwrap();
    client
        .fetch_svid(&cart(), Duration::from_secs(600))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_never_completes_its_handshake_is_closed() {
    use tokio::io::AsyncReadExt;
    let ca = TestCa::start(None, Duration::from_secs(3600)).await;
    // Connected, silent: no ClientHello ever comes.
    let mut silent = tokio::net::TcpStream::connect(ca.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let waited = hawser::ca::HANDSHAKE_TIMEOUT + Duration::from_secs(5);
    let read = tokio::time::timeout(waited, silent.read(&mut buf))
        .await
        .expect("the CA closed the silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_cannot_keep_a_daemon_out_of_the_ca() {
    use tokio::io::AsyncReadExt;
    let ca = TestCa::start(None, Duration::from_secs(3600)).await;
    // 40 connections that never send a ClientHello, from the daemon's own address.
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(tokio::net::TcpStream::connect(ca.addr).await.unwrap());
    }
    // Over the source's share the oldest are closed at once, not held for the handshake
    // timeout...
    let mut oldest = flood.remove(0);
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), oldest.read(&mut buf))
        .await
        .expect("the CA closed the oldest silent connection at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // ...and a daemon from that address still gets its SVID.
    let svid = ca
        .client(TOKEN_NODE1)
        .fetch_svid(&cart(), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!svid.chain.is_empty());
    drop(flood);
}
