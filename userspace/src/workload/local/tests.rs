use std::path::Path;

use super::*;

const POD_A: &str = "apiVersion: hawser.dev/v1alpha1
kind: Workload
metadata:
  name: pod-a
  namespace: shop
  labels: {app: a}
spec:
  serviceAccount: sa-a
  podIP: 10.0.1.2
  nodeName: node1
  netns: /run/netns/pod-a
";

fn parse(text: &str) -> Result<Vec<(Workload, usize)>, ConfigErrors> {
    let docs = parse_file(Path::new("w.yaml"), text)?;
    Ok(docs
        .into_iter()
        .filter_map(|(d, line)| match d {
            Document::Workload(w) => Some((w, line)),
            _ => None,
        })
        .collect())
}

fn only_error(text: &str) -> String {
    let errors = parse(text).expect_err("should be refused").0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors[0].to_string()
}

#[test]
fn parses_a_workload_with_all_fields() {
    let (w, line) = parse(POD_A).unwrap().remove(0);
    assert_eq!(line, 1);
    assert_eq!(w.key(), "shop/pod-a");
    assert_eq!(
        w.spiffe_id("cluster.local"),
        "spiffe://cluster.local/ns/shop/sa/sa-a"
    );
    assert_eq!(w.ips_text(), "10.0.1.2");
    assert_eq!(w.netns.as_deref(), Some(Path::new("/run/netns/pod-a")));
    assert_eq!(w.labels["app"], "a");
}

#[test]
fn defaults_namespace_and_service_account() {
    let text = "apiVersion: hawser.dev/v1alpha1\nkind: Workload\nmetadata: {name: p}\n\
                spec: {podIP: 10.0.0.9, nodeName: n, netns: /x}\n";
    let (w, _) = parse(text).unwrap().remove(0);
    assert_eq!(
        (w.namespace.as_str(), w.service_account.as_str()),
        ("default", "default")
    );
}

#[test]
fn several_documents_keep_their_own_line_numbers() {
    let text = format!(
        "# comment only\n---\n{POD_A}---\n{}",
        POD_A.replace("10.0.1.2", "bad-ip")
    );
    let errors = parse(&text).unwrap_err().0;
    assert_eq!(errors.len(), 1);
    // The second workload starts at line 15; podIP is its 9th line.
    assert_eq!(errors[0].line, Some(23), "{}", errors[0]);
    assert!(
        errors[0].message.contains("invalid IP address"),
        "{}",
        errors[0]
    );
}

#[test]
fn reports_yaml_syntax_errors_with_line() {
    let text = POD_A.replace("  nodeName: node1", "  nodeName: [node1");
    let message = only_error(&text);
    assert!(message.starts_with("w.yaml:1"), "{message}");
}

#[test]
fn refuses_unknown_fields_with_their_line() {
    let text = POD_A.replace("  nodeName: node1", "  nodeName: node1\n  nodename: typo");
    let message = only_error(&text);
    assert!(message.starts_with("w.yaml:11:"), "{message}");
    assert!(message.contains("unknown field `nodename`"), "{message}");
}

#[test]
fn refuses_missing_required_fields() {
    let text = POD_A.replace("  podIP: 10.0.1.2\n", "");
    assert!(only_error(&text).contains("missing field `podIP`"));
}

#[test]
fn refuses_unknown_kinds_and_versions() {
    assert!(
        only_error(&POD_A.replace("kind: Workload", "kind: Pod"))
            .contains("unsupported kind \"Pod\"")
    );
    assert!(only_error(&POD_A.replace("v1alpha1", "v9")).contains("needs apiVersion"));
    assert!(only_error("metadata: {name: x}\n").contains("no `kind`"));
}

#[test]
fn refuses_bad_names_and_relative_netns() {
    assert!(
        only_error(&POD_A.replace("name: pod-a", "name: Pod_A"))
            .contains("metadata.name \"Pod_A\"")
    );
    assert!(only_error(&POD_A.replace("/run/netns/pod-a", "pod-a")).contains("absolute path"));
}

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
