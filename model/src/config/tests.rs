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
        w.identity("cluster.local").to_string(),
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
fn a_workload_of_a_federated_mesh_names_its_trust_domain() {
    let text = POD_A.replace(
        "nodeName: node1",
        "nodeName: node1\n  trustDomain: td1.example",
    );
    let (w, _) = parse(&text).unwrap().remove(0);
    assert_eq!(
        w.identity("cluster.local").to_string(),
        "spiffe://td1.example/ns/shop/sa/sa-a"
    );
    let bad = POD_A.replace("nodeName: node1", "nodeName: node1\n  trustDomain: TD1");
    assert!(
        only_error(&bad).contains("spec.trustDomain"),
        "{}",
        only_error(&bad)
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
fn an_error_at_the_end_of_a_document_names_its_last_line() {
    let text =
        "apiVersion: hawser.dev/v1alpha1\nkind: Workload\nmetadata: {name: a, labels: {app:\n";
    assert_eq!(only_error(text).split(':').nth(1), Some("3"));
}
