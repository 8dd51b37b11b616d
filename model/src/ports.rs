//! What a workload's ports ask of the daemon on the inbound side, besides policy: TLS
//! terminated for clients outside the mesh, accepting client certificates of extra trust
//! anchors (a company CA whose key the mesh never sees) beside mesh SVIDs; and the
//! caller's identity told to the app in a PROXY protocol v2 header.
//!
//! Istio has no resource for either, so it is hawser's own kind, in the words of Istio's
//! `ServerTLSSettings` where they apply:
//!
//! ```yaml
//! apiVersion: hawser.dev/v1alpha1
//! kind: InboundPorts
//! metadata: {name: billing, namespace: shop}
//! spec:
//!   selector: {matchLabels: {app: billing}}   # none: every workload of the namespace
//!   ports:
//!   - port: 8443
//!     tls:                                     # the daemon terminates TLS on this port
//!       mode: MUTUAL
//!       caCertificates: /etc/company/root.pem  # extra trust anchors, beside the mesh roots
//!       serverCertificate: /etc/billing/tls.crt  # default: the workload's SVID
//!       privateKey: /etc/billing/tls.key
//!       # or credentialName: billing-tls        (<credentials-dir>/billing-tls/tls.crt ...)
//!     proxyProtocol: v2                        # the app reads who called
//! ```

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    policy::{
        Scope,
        istio::{Metadata, Selector, scoped_credential},
    },
    workload::Workload,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundPorts {
    pub name: String,
    pub scope: Scope,
    pub ports: BTreeMap<u16, PortSettings>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSettings {
    pub tls: Option<ServerTls>,
    /// Send a PROXY protocol v2 header to the app before the client's bytes.
    pub proxy_protocol: bool,
}

/// TLS the daemon terminates for clients that dial the port directly (not through the
/// mesh tunnel, which keeps working beside it). A client certificate is required; it
/// must chain to the mesh's roots or to `ca_certificates`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTls {
    pub server_certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub ca_certificates: Option<PathBuf>,
    /// `tls.crt`, `tls.key`, `ca.crt` in the resource's own namespace: `<namespace>/<name>`
    /// under the daemon's credentials directory.
    pub credential_name: Option<String>,
}

/// The settings for `port` of `workload`: a policy selecting the workload wins over one
/// for its namespace, which wins over a mesh-wide one (in the root namespace).
pub fn settings<'a>(
    all: &'a [InboundPorts],
    workload: &Workload,
    port: u16,
) -> Option<&'a PortSettings> {
    all.iter()
        .filter(|p| p.ports.contains_key(&port))
        .filter_map(|p| Some((p.scope.reach(workload)?, p)))
        .min_by_key(|(reach, _)| *reach)
        .and_then(|(_, p)| p.ports.get(&port))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundPortsDoc {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    metadata: Metadata,
    spec: InboundPortsSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InboundPortsSpec {
    selector: Option<Selector>,
    ports: Vec<PortDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortDoc {
    port: u16,
    tls: Option<TlsDoc>,
    proxy_protocol: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TlsDoc {
    mode: Option<String>,
    server_certificate: Option<PathBuf>,
    private_key: Option<PathBuf>,
    ca_certificates: Option<PathBuf>,
    credential_name: Option<String>,
}

impl InboundPortsDoc {
    pub fn into_inbound_ports(self) -> Result<InboundPorts, String> {
        let mut ports = BTreeMap::new();
        for p in self.spec.ports {
            let settings = PortSettings {
                tls: p
                    .tls
                    .map(|tls| tls.into_server_tls(&self.metadata.namespace))
                    .transpose()?,
                proxy_protocol: match p.proxy_protocol.as_deref() {
                    None => false,
                    Some("v2") => true,
                    Some(other) => {
                        return Err(format!(
                            "port {}: proxyProtocol {other:?} is not supported (only v2)",
                            p.port
                        ));
                    }
                },
            };
            if ports.insert(p.port, settings).is_some() {
                return Err(format!("port {} is listed twice", p.port));
            }
        }
        Ok(InboundPorts {
            name: self.metadata.name,
            scope: Scope {
                namespace: self.metadata.namespace,
                selector: self.spec.selector.map(|s| s.match_labels),
            },
            ports,
        })
    }
}

impl TlsDoc {
    fn into_server_tls(self, namespace: &str) -> Result<ServerTls, String> {
        match self.mode.as_deref().unwrap_or("MUTUAL") {
            "MUTUAL" => {}
            other => {
                return Err(format!(
                    "tls.mode {other} is not supported: MUTUAL (a client certificate is required)"
                ));
            }
        }
        if self.server_certificate.is_some() != self.private_key.is_some() {
            return Err("tls: serverCertificate and privateKey go together".into());
        }
        if self.credential_name.is_some() && self.server_certificate.is_some() {
            return Err("tls: credentialName or serverCertificate, not both".into());
        }
        // The SVID names a SPIFFE ID only: curl, browsers and other clients outside the mesh
        // check a server by DNS name or IP, so it cannot be the default.
        if self.credential_name.is_none() && self.server_certificate.is_none() {
            return Err(
                "tls: needs serverCertificate and privateKey, or credentialName: \
                        clients outside the mesh verify the server by a DNS name or IP, which \
                        the SVID does not carry"
                    .into(),
            );
        }
        Ok(ServerTls {
            server_certificate: self.server_certificate,
            private_key: self.private_key,
            ca_certificates: self.ca_certificates,
            credential_name: self
                .credential_name
                .map(|name| scoped_credential(namespace, &name))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{config::parse_registry, workload::test_workload as workload};

    const DOCS: &str = "apiVersion: hawser.dev/v1alpha1\nkind: InboundPorts\n\
        metadata: {name: mesh, namespace: istio-system}\n\
        spec: {ports: [{port: 80, proxyProtocol: v2}]}\n---\n\
        apiVersion: hawser.dev/v1alpha1\nkind: InboundPorts\nmetadata: {name: billing, namespace: shop}\n\
        spec:\n  selector: {matchLabels: {app: billing}}\n  ports:\n\
        \x20 - port: 8443\n    tls: {caCertificates: /company/root.pem, credentialName: billing-tls}\n    proxyProtocol: v2\n\
        \x20 - port: 80\n";

    #[test]
    fn the_most_specific_declaration_of_a_port_wins() {
        let all = parse_registry(Path::new("p.yaml"), DOCS).unwrap().ports;
        let billing = workload("shop", "billing");
        let tls = settings(&all, &billing, 8443).unwrap();
        assert_eq!(
            tls.tls.as_ref().unwrap().ca_certificates,
            Some(PathBuf::from("/company/root.pem"))
        );
        assert!(tls.proxy_protocol);
        // billing's own entry for 80 (no PROXY header) beats the mesh-wide one.
        assert!(!settings(&all, &billing, 80).unwrap().proxy_protocol);
        assert!(
            settings(&all, &workload("shop", "cart"), 80)
                .unwrap()
                .proxy_protocol
        );
        assert!(settings(&all, &workload("shop", "cart"), 8443).is_none());
    }

    #[test]
    fn unsupported_settings_are_refused_with_the_line() {
        for (bad, says) in [
            ("{port: 1, proxyProtocol: v1}", "only v2"),
            ("{port: 1, tls: {mode: SIMPLE}}", "MUTUAL"),
            ("{port: 1, tls: {serverCertificate: /a}}", "go together"),
            (
                "{port: 1, tls: {caCertificates: /a}}",
                "the SVID does not carry",
            ),
            (
                "{port: 1, tls: {minProtocolVersion: TLSV1_2}}",
                "unknown field",
            ),
        ] {
            let yaml = format!(
                "# x\napiVersion: hawser.dev/v1alpha1\nkind: InboundPorts\nmetadata: {{name: x}}\nspec: {{ports: [{bad}]}}\n"
            );
            let err = parse_registry(Path::new("p.yaml"), &yaml)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("p.yaml:"), "{err}");
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
