use std::{collections::BTreeMap, net::SocketAddr, path::Path};

use super::*;
use crate::config::parse_registry;

/// The egress configuration of `yaml` (Istio documents).
fn egress(yaml: &str) -> Egress {
    parse_registry(Path::new("test.yaml"), yaml)
        .expect("valid YAML")
        .egress
}

fn client(name: &str) -> Workload {
    Workload {
        name: name.into(),
        namespace: "default".into(),
        service_account: name.into(),
        ips: vec!["10.0.0.9".parse().unwrap()],
        node_name: "n".into(),
        netns: Some("/proc/1/ns/net".into()),
        labels: BTreeMap::from([("app".to_string(), name.to_string())]),
        trust_domain: None,
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The "common CA" scenario of Istio's egress mTLS guide, unchanged.
const COMMON_CA: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: nginx-mtls-common-ca
spec:
  hosts:
  - nginx-mtls.common-ca.local
  location: MESH_EXTERNAL
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
    targetPort: 8443
  - number: 8443
    name: https
    protocol: TLS
  resolution: STATIC
  endpoints:
  - address: 10.1.1.4
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: nginx-mtls-common-ca
spec:
  host: nginx-mtls.common-ca.local
  trafficPolicy:
    portLevelSettings:
    - port:
        number: 80
      tls:
        mode: ISTIO_MUTUAL
";

#[test]
fn the_app_port_maps_to_the_target_port_with_the_port_level_tls() {
    let e = egress(COMMON_CA);
    let EgressRoute::Declared(o) = e.route(
        &client("a"),
        addr("10.1.1.4:80"),
        OutboundPolicy::RegistryOnly,
        &Resolved::new(),
    ) else {
        panic!("declared");
    };
    assert_eq!(o.upstream, addr("10.1.1.4:8443"));
    assert_eq!(o.host, "nginx-mtls.common-ca.local");
    let (rule, tls) = o.tls.expect("TLS");
    assert_eq!(
        (rule.as_str(), tls.mode),
        ("default/nginx-mtls-common-ca", TlsMode::IstioMutual)
    );
    // The TLS port itself has no TLS setting: the app speaks TLS there.
    let EgressRoute::Declared(o) = e.route(
        &client("a"),
        addr("10.1.1.4:8443"),
        OutboundPolicy::RegistryOnly,
        &Resolved::new(),
    ) else {
        panic!("declared");
    };
    assert!(o.tls.is_none());
}

#[test]
fn undeclared_destinations_follow_the_outbound_policy() {
    let e = egress(COMMON_CA);
    let undeclared = [addr("10.1.1.5:80"), addr("10.1.1.4:22")];
    for dst in undeclared {
        assert!(matches!(
            e.route(
                &client("a"),
                dst,
                OutboundPolicy::AllowAny,
                &Resolved::new()
            ),
            EgressRoute::PassThrough
        ));
        match e.route(
            &client("a"),
            dst,
            OutboundPolicy::RegistryOnly,
            &Resolved::new(),
        ) {
            EgressRoute::Refused(why) => assert!(why.contains("REGISTRY_ONLY"), "{why}"),
            _ => panic!("{dst} must be refused"),
        }
    }
}

#[test]
fn a_rule_selecting_the_client_wins_over_the_namespace_rule() {
    let yaml = format!(
        "{COMMON_CA}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{name: for-c, namespace: default}}\n\
         spec: {{host: nginx-mtls.common-ca.local, workloadSelector: {{matchLabels: {{app: c}}}},\n\
         trafficPolicy: {{tls: {{mode: MUTUAL, clientCertificate: /c.crt, privateKey: /c.key}}}}}}\n"
    );
    let e = egress(&yaml);
    let rule = |name| match e.route(
        &client(name),
        addr("10.1.1.4:80"),
        OutboundPolicy::AllowAny,
        &Resolved::new(),
    ) {
        EgressRoute::Declared(o) => o.tls.map(|(rule, _)| rule),
        _ => None,
    };
    assert_eq!(rule("c").as_deref(), Some("default/for-c"));
    assert_eq!(rule("a").as_deref(), Some("default/nginx-mtls-common-ca"));
}

#[test]
fn settings_hawser_cannot_honour_are_refused_with_a_reason() {
    let rule = |tls: &str| {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\n\
             spec: {{host: x.example, trafficPolicy: {{tls: {tls}}}}}\n"
        );
        match parse_registry(Path::new("dr.yaml"), &yaml) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    assert!(rule("{mode: MUTUAL}").contains("MUTUAL needs credentialName"));
    assert!(rule("{mode: SIMPLE, insecureSkipVerify: true}").contains("always verifies"));
    assert!(rule("{mode: ISTIO_MUTUAL, clientCertificate: /a}").contains("only used with MUTUAL"));
    assert_eq!(rule("{mode: MUTUAL, credentialName: company}"), "");
}

#[test]
fn a_dns_service_is_recognised_by_its_hosts_resolved_addresses() {
    let e = egress(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api}\n\
         spec:\n  hosts: [api.example.com]\n  resolution: DNS\n\
         \x20 ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db}\n\
         spec:\n  hosts: [db.example.com]\n  addresses: [192.0.2.10]\n  resolution: DNS\n\
         \x20 ports: [{number: 5432, name: pg, protocol: TCP}]\n  endpoints: [{address: db-1.example.net}]\n",
    );
    let resolved = Resolved::from([
        (
            "api.example.com".to_string(),
            vec!["198.51.100.7".parse().unwrap()],
        ),
        (
            "db-1.example.net".to_string(),
            vec!["203.0.113.5".parse().unwrap()],
        ),
    ]);
    let route = |dst: &str| match e.route(
        &client("a"),
        addr(dst),
        OutboundPolicy::RegistryOnly,
        &resolved,
    ) {
        EgressRoute::Declared(o) => Some(o.upstream),
        _ => None,
    };
    // The address the app got for the host: that address, on the target port.
    assert_eq!(route("198.51.100.7:80"), Some(addr("198.51.100.7:443")));
    // Not (or no longer) one of the host's addresses.
    assert_eq!(route("198.51.100.8:80"), None);
    // The service's address leads to its named endpoint, resolved.
    assert_eq!(route("192.0.2.10:5432"), Some(addr("203.0.113.5:5432")));
    // Unresolved names declare nothing.
    let unresolved = e.route(
        &client("a"),
        addr("198.51.100.7:80"),
        OutboundPolicy::RegistryOnly,
        &Resolved::new(),
    );
    assert!(matches!(unresolved, EgressRoute::Refused(_)));
    let wildcard = parse_registry(
        Path::new("se.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: w}\n\
         spec: {hosts: ['*.example.com'], resolution: DNS, ports: [{number: 80, name: h}]}\n",
    );
    assert!(wildcard.unwrap_err().to_string().contains("wildcard"));
}

/// A STATIC entry `name` at `address`, its endpoint a documentation address of its own.
fn static_entry(name: &str, address: &str, port: u16) -> String {
    let endpoint = format!("192.0.2.{}", name.len() * 10);
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\n\
         spec: {{hosts: [{name}.example.com], addresses: [{address}], resolution: STATIC, \
         endpoints: [{{address: {endpoint}}}], ports: [{{number: {port}, name: tcp, protocol: TCP}}]}}\n"
    )
}

#[test]
fn two_entries_for_one_address_and_port_are_refused_at_load_with_the_later_ones_line() {
    let first = static_entry("billing", "203.0.113.0/24", 443);
    // Another service on an address inside the first one's range, same port.
    let second = static_entry("ledger", "203.0.113.7", 443);
    let both = format!("{first}---\n{second}");
    let refused = parse_registry(Path::new("se.yaml"), &both)
        .unwrap_err()
        .to_string();
    assert!(
        refused.starts_with("se.yaml:6: ServiceEntry default/ledger declares")
            && refused.contains("as ServiceEntry default/billing at se.yaml:1"),
        "{refused}"
    );
    // Another port, or a separate address: no ambiguity.
    let other_port = format!(
        "{first}---\n{}",
        static_entry("ledger", "203.0.113.7", 8443)
    );
    assert!(parse_registry(Path::new("se.yaml"), &other_port).is_ok());
    let apart = format!(
        "{first}---\n{}",
        static_entry("ledger", "198.51.100.7", 443)
    );
    assert!(parse_registry(Path::new("se.yaml"), &apart).is_ok());
}

#[test]
fn names_resolving_to_one_address_make_it_ambiguous_and_refused_at_connect() {
    let entry = |name: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\n\
             spec: {{hosts: [{name}.example.com], resolution: DNS, \
             ports: [{{number: 443, name: tls, protocol: TLS}}]}}\n"
        )
    };
    let e = egress(&format!("{}---\n{}", entry("one"), entry("two")));
    let shared_ip = vec!["198.51.100.7".parse().unwrap()];
    let resolved = Resolved::from([
        ("one.example.com".to_string(), shared_ip.clone()),
        ("two.example.com".to_string(), shared_ip),
    ]);
    let routed = e.route(
        &client("a"),
        addr("198.51.100.7:443"),
        OutboundPolicy::AllowAny,
        &resolved,
    );
    assert!(
        matches!(&routed, EgressRoute::Refused(why) if why.contains("both declare")),
        "{routed:?}"
    );
}

/// The "different CA" scenario of Istio's egress mTLS guide (sidecar variant) and the
/// plug-in CA guide's PeerAuthentication, as written there.
#[test]
fn the_guides_istio_yaml_loads_unchanged() {
    let yaml = "\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: nginx-mtls-diff-ca
spec:
  hosts:
  - nginx-mtls.diff-ca.local
  location: MESH_EXTERNAL
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
    targetPort: 9443
  - number: 9443
    name: https
    protocol: TLS
  resolution: STATIC
  endpoints:
  - address: 10.1.1.4
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: originate-tls-for-nginx-mtls
  namespace: istio-system
spec:
  host: nginx-mtls.diff-ca.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    portLevelSettings:
    - port:
        number: 80
      tls:
        mode: MUTUAL
        credentialName: nginx-mtls-external
        sni: nginx-mtls.diff-ca.local
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  mtls:
    mode: STRICT
";
    let registry = parse_registry(Path::new("guide.yaml"), yaml).expect("loads");
    let EgressRoute::Declared(o) = registry.egress.route(
        &client("curl"),
        addr("10.1.1.4:80"),
        OutboundPolicy::RegistryOnly,
        &Resolved::new(),
    ) else {
        panic!("declared");
    };
    assert_eq!(o.upstream, addr("10.1.1.4:9443"));
    let (rule, tls) = o.tls.expect("MUTUAL");
    assert_eq!(rule, "istio-system/originate-tls-for-nginx-mtls");
    assert_eq!(
        tls.credential_name.as_deref(),
        Some("istio-system/nginx-mtls-external"),
        "scoped to the rule's namespace"
    );
    assert_eq!(tls.sni.as_deref(), Some("nginx-mtls.diff-ca.local"));
    let pa = &registry.policies.peer_authentications[0];
    assert_eq!(
        (pa.scope.namespace.as_str(), pa.mode),
        ("foo", crate::policy::MtlsMode::Strict)
    );
    // The guide's egress-gateway variant needs subsets and a Gateway: refused, with why.
    let gateway = "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\n\
        metadata: {name: egressgateway-for-nginx-mtls}\n\
        spec: {host: istio-egressgateway.istio-system.svc.cluster.local, subsets: [{name: nginx-mtls}]}\n";
    let refused = parse_registry(Path::new("gw.yaml"), gateway).unwrap_err();
    assert!(
        refused.to_string().contains("subsets are not supported"),
        "{refused}"
    );
}

#[test]
fn without_a_closer_rule_the_root_namespace_then_an_exported_rule_applies() {
    let rule_in = |namespace: &str, name: &str, selector: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: {name}, namespace: {namespace}}}\n\
             spec: {{host: nginx-mtls.common-ca.local,{selector}\n\
             trafficPolicy: {{tls: {{mode: SIMPLE}}}}}}\n"
        )
    };
    let se = &COMMON_CA[..COMMON_CA.find("---").unwrap()];
    let chosen = |rules: &[String]| {
        let e = egress(&format!("{se}{}", rules.concat()));
        match e.route(
            &client("a"),
            addr("10.1.1.4:8443"),
            OutboundPolicy::AllowAny,
            &Resolved::new(),
        ) {
            EgressRoute::Declared(o) => o.tls.map(|(rule, _)| rule),
            _ => None,
        }
    };
    let exported = rule_in("other", "exported", "");
    // A selector in the root namespace does not reach another namespace's clients.
    let root_selecting = rule_in(
        "istio-system",
        "root-a",
        " workloadSelector: {matchLabels: {app: a}},",
    );
    let root = rule_in("istio-system", "root", "");
    assert_eq!(
        chosen(&[exported.clone(), root_selecting.clone(), root]).as_deref(),
        Some("istio-system/root")
    );
    assert_eq!(
        chosen(&[exported, root_selecting]).as_deref(),
        Some("other/exported")
    );
}
