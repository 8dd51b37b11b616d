use std::path::Path;

use super::*;

/// One workload per file: the directory's reading is under test here, the document's in
/// `hawser_model::config`.
const POD_A: &str = "apiVersion: hawser.dev/v1alpha1\nkind: Workload\n\
    metadata: {name: pod-a, namespace: shop, labels: {app: a}}\n\
    spec: {serviceAccount: sa-a, podIP: 10.0.1.2, nodeName: node1, netns: /run/netns/pod-a}\n";

#[test]
fn load_dir_reports_every_bad_file_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), POD_A).unwrap();
    std::fs::write(
        dir.path().join("b.yml"),
        POD_A.replace("10.0.1.2", "10.0.1.3"),
    )
    .unwrap();
    std::fs::write(dir.path().join("c.yaml"), POD_A.replace("pod-a", "pod-c")).unwrap();
    std::fs::write(dir.path().join("d.yaml"), "kind: [").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml, not read").unwrap();
    let errors = load_dir(dir.path(), None).unwrap_err().0;
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 3, "{text:#?}");
    assert!(text[0].contains("d.yaml:1:"), "{text:#?}");
    assert!(
        text[1].contains("b.yml:1: workload shop/pod-a already declared at"),
        "{text:#?}"
    );
    assert!(
        text[2].contains("c.yaml:1: pod IP 10.0.1.2 already declared at"),
        "{text:#?}"
    );
}

#[test]
fn load_dir_reads_a_good_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), POD_A).unwrap();
    let b = POD_A
        .replace("pod-a", "pod-b")
        .replace("10.0.1.2", "10.0.1.3")
        .replace("node1", "node2");
    std::fs::write(dir.path().join("b.yaml"), b).unwrap();
    let registry = load_dir(dir.path(), None).unwrap();
    assert_eq!(registry.workloads.len(), 2);
    assert_eq!(registry.on_node("node2").count(), 1);
    assert_eq!(
        registry.by_ip("10.0.1.2".parse().unwrap()).unwrap().name,
        "pod-a"
    );
}

#[test]
fn missing_directory_is_a_clear_error() {
    let message = load_dir(Path::new("/nonexistent/hawser"), None)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("/nonexistent/hawser: cannot read:"),
        "{message}"
    );
}

#[test]
fn certificate_files_outside_the_operators_roots_are_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("certs");
    std::fs::create_dir(&allowed).unwrap();
    let rule = |cert: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: api, namespace: shop}}\nspec:\n  host: api.example.com\n\
             \x20 trafficPolicy:\n    tls: {{mode: MUTUAL, clientCertificate: {cert}, \
             privateKey: {key}}}\n",
            key = allowed.join("client.key").display()
        )
    };
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("a.yaml"), POD_A).unwrap();
    let roots = CredentialRoots::new(vec![allowed.clone()]);
    let inside = allowed.join("client.pem");
    std::fs::write(
        config.join("rule.yaml"),
        rule(&inside.display().to_string()),
    )
    .unwrap();
    load_dir(&config, Some(&roots)).expect("paths under the root (not there yet) pass");

    // Another tenant's key, by a path outside the roots, or climbing out of one.
    for outside in [
        "/etc/hawser/other-tenant/tls.crt".to_string(),
        format!("{}/../../elsewhere.pem", allowed.display()),
    ] {
        std::fs::write(config.join("rule.yaml"), format!("---\n{}", rule(&outside))).unwrap();
        let errors = load_dir(&config, Some(&roots)).unwrap_err().to_string();
        assert!(
            errors.contains("rule.yaml:2: ") && errors.contains("--credential-roots"),
            "{errors}"
        );
    }
    // A link inside the root that leads out of it.
    let secret = dir.path().join("secret.pem");
    std::fs::write(&secret, "x").unwrap();
    std::os::unix::fs::symlink(&secret, allowed.join("link.pem")).unwrap();
    let linked = allowed.join("link.pem").display().to_string();
    std::fs::write(config.join("rule.yaml"), rule(&linked)).unwrap();
    assert!(load_dir(&config, Some(&roots)).is_err());
    // No roots: no file paths; the CA (which reads no credentials) does not judge them.
    let none = CredentialRoots::default();
    assert!(
        load_dir(&config, Some(&none))
            .unwrap_err()
            .to_string()
            .contains("is not set")
    );
    assert!(load_dir(&config, None).is_ok());
}
