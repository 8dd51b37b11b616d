use std::path::Path;

use super::*;
use crate::{config::parse_registry, workload::test_workload as workload};

fn policies(yaml: &str) -> Policies {
    parse_registry(Path::new("p.yaml"), yaml).unwrap().policies
}

fn id(ns: &str, sa: &str) -> Principal {
    crate::spiffe::SpiffeId::new("cluster.local", ns, sa).into()
}

#[test]
fn mtls_mode_prefers_workload_then_namespace_then_mesh() {
    let p = policies(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: mesh, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\n\
         apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: ns, namespace: legacy}\nspec: {mtls: {mode: PERMISSIVE}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: web, namespace: legacy}\n\
         spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}\n",
    );
    assert_eq!(
        mtls_mode(&p, &workload("shop", "cart"), 80),
        MtlsMode::Strict
    );
    assert_eq!(
        mtls_mode(&p, &workload("legacy", "db"), 80),
        MtlsMode::Permissive
    );
    assert_eq!(
        mtls_mode(&p, &workload("legacy", "web"), 80),
        MtlsMode::Strict
    );
    assert_eq!(
        mtls_mode(&p, &workload("legacy", "web"), 8080),
        MtlsMode::Disable
    );
    assert_eq!(
        mtls_mode(&Policies::default(), &workload("x", "y"), 1),
        MtlsMode::Permissive
    );
}

const ALLOW_FRONTEND: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]
    to: [{operation: {ports: ["8080"]}}]
"#;

#[test]
fn allow_policies_admit_only_matching_principals_and_ports() {
    let p = policies(ALLOW_FRONTEND);
    let cart = workload("shop", "cart");
    assert!(matches!(
        authorize(&p, &cart, 8080, Some(&id("shop", "frontend"))),
        Verdict::Allow(_)
    ));
    assert!(matches!(
        authorize(&p, &cart, 9090, Some(&id("shop", "frontend"))),
        Verdict::Deny(_)
    ));
    let denied = authorize(&p, &cart, 8080, Some(&id("shop", "other")));
    assert_eq!(
        denied,
        Verdict::Deny("no rule of ALLOW policies shop/allow-frontend matches".into())
    );
    assert!(
        matches!(authorize(&p, &cart, 8080, None), Verdict::Deny(_)),
        "plaintext has no principal"
    );
    // Another workload in the namespace is not selected.
    assert!(matches!(
        authorize(&p, &workload("shop", "web"), 8080, None),
        Verdict::Allow(_)
    ));
}

#[test]
fn deny_wins_and_wildcards_match() {
    let p = policies(&format!(
        "{ALLOW_FRONTEND}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: deny-test-ns, namespace: istio-system}}\n\
         spec: {{action: DENY, rules: [{{from: [{{source: {{namespaces: [\"test-*\"]}}}}]}}]}}\n"
    ));
    let cart = workload("shop", "cart");
    let verdict = authorize(&p, &cart, 8080, Some(&id("test-1", "frontend")));
    assert_eq!(
        verdict,
        Verdict::Deny("DENY policy istio-system/deny-test-ns rules[0] matches".into())
    );
    assert!(matches!(
        authorize(&p, &cart, 8080, Some(&id("shop", "frontend"))),
        Verdict::Allow(_)
    ));
}

#[test]
fn l7_attributes_never_open_access() {
    let p = policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: get-only, namespace: shop}\n\
         spec: {rules: [{to: [{operation: {methods: [GET]}}]}]}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-post, namespace: other}\n\
         spec: {action: DENY, rules: [{to: [{operation: {methods: [POST], ports: [\"80\"]}}]}]}\n",
    );
    // The ALLOW rule needs L7: it matches nothing, so everything is denied.
    assert!(matches!(
        authorize(&p, &workload("shop", "cart"), 80, Some(&id("shop", "a"))),
        Verdict::Deny(_)
    ));
    // The DENY rule's L4 part (port 80) denies all of port 80.
    assert!(matches!(
        authorize(&p, &workload("other", "x"), 80, Some(&id("shop", "a"))),
        Verdict::Deny(_)
    ));
    assert!(matches!(
        authorize(&p, &workload("other", "x"), 81, Some(&id("shop", "a"))),
        Verdict::Allow(_)
    ));
}

#[test]
fn allow_without_rules_allows_nothing_and_empty_rule_allows_all() {
    let nothing = policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: shop}\nspec: {}\n",
    );
    assert!(matches!(
        authorize(
            &nothing,
            &workload("shop", "cart"),
            80,
            Some(&id("shop", "a"))
        ),
        Verdict::Deny(_)
    ));
    let all = policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all, namespace: shop}\nspec: {rules: [{}]}\n",
    );
    assert!(matches!(
        authorize(&all, &workload("shop", "cart"), 80, None),
        Verdict::Allow(_)
    ));
}

#[test]
fn unsupported_istio_fields_are_named_as_the_reason_a_policy_cannot_be_enforced() {
    let parse = |spec: &str| {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec: {spec}\n"
        );
        let mut p = policies(&yaml).authorization_policies;
        p.remove(0).unenforceable.expect("unenforceable")
    };
    assert!(parse("{action: CUSTOM}").contains("only ALLOW and DENY"));
    assert!(parse("{targetRefs: [{kind: Gateway, name: w}]}").contains("waypoints"));
    assert!(parse("{rules: [{to: [{operation: {ports: [\"http\"]}}]}]}").contains("not a number"));
    assert!(parse("{rules: [{form: []}]}").contains("unknown field `form`"));
}

#[test]
fn a_policy_hawser_cannot_enforce_denies_everything_it_selects() {
    let allow_broken = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
        metadata: {name: cart, namespace: shop}\n\
        spec: {selector: {matchLabels: {app: cart}}, action: ALLOW, frobnicate: true, rules: [{}]}\n";
    let deny_bad_port = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
        metadata: {name: web, namespace: shop}\n\
        spec: {selector: {matchLabels: {app: web}}, action: DENY, rules: [{to: [{operation: {ports: [http]}}]}]}\n";
    let waypoint = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
        metadata: {name: via-waypoint, namespace: legacy}\n\
        spec: {targetRefs: [{kind: Gateway, name: waypoint}], selector: {matchLabels: {app: db}}, action: DENY}\n";
    let p = policies(&[allow_broken, deny_bad_port, waypoint].join("---\n"));
    let names: Vec<_> = p
        .authorization_policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["cart", "web", "via-waypoint"], "none is dropped");
    let anyone = id("shop", "frontend");
    for (w, port) in [
        (workload("shop", "cart"), 80),
        (workload("shop", "web"), 443),
        // A targetRef names no workload hawser can see: its whole namespace.
        (workload("legacy", "batch"), 80),
    ] {
        let verdict = authorize(&p, &w, port, Some(&anyone));
        assert!(
            matches!(&verdict, Verdict::Deny(why) if why.contains("cannot be enforced")),
            "{}: {verdict}",
            w.name
        );
    }
    assert!(
        p.authorization_policies[1]
            .unenforceable
            .as_deref()
            .is_some_and(|why| why.contains("\"http\"")),
        "the reason is kept for the operator"
    );
    // Workloads it does not select are untouched.
    assert!(matches!(
        authorize(&p, &workload("shop", "db"), 80, Some(&anyone)),
        Verdict::Allow(_)
    ));
}
