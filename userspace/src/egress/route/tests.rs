use std::{collections::BTreeMap, net::SocketAddr, path::Path};

use super::*;
use crate::workload::local::parse_registry;

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
        pod_ip: "10.0.0.9".parse().unwrap(),
        node_name: "n".into(),
        netns: "/proc/1/ns/net".into(),
        labels: BTreeMap::from([("app".to_string(), name.to_string())]),
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
            e.route(&client("a"), dst, OutboundPolicy::AllowAny),
            EgressRoute::PassThrough
        ));
        match e.route(&client("a"), dst, OutboundPolicy::RegistryOnly) {
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
    let rule = |name| match e.route(&client(name), addr("10.1.1.4:80"), OutboundPolicy::AllowAny) {
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
