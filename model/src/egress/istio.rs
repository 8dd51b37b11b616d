//! Istio's `ServiceEntry` and `DestinationRule` YAML (`networking.istio.io`) into hawser's
//! egress model. Fields that do not change where bytes go or how they are protected
//! (labels, load balancing, connection pools) are accepted and ignored; settings hawser
//! cannot honour are refused with a reason, never silently dropped.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use serde::Deserialize;

use super::{ClientTls, DestinationRule, Location, Resolution, ServiceEntry, ServicePort, TlsMode};
use crate::policy::istio::{Metadata, Selector, scoped_credential};

pub const API_VERSIONS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

#[derive(Deserialize)]
pub struct ServiceEntryDoc {
    metadata: Metadata,
    spec: ServiceEntrySpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceEntrySpec {
    hosts: Vec<String>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    ports: Vec<PortDoc>,
    location: Option<Location>,
    #[serde(default)]
    resolution: Option<String>,
    #[serde(default)]
    endpoints: Vec<EndpointDoc>,
    workload_selector: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortDoc {
    number: u16,
    #[serde(default)]
    name: String,
    #[serde(default)]
    protocol: String,
    target_port: Option<u16>,
}

#[derive(Deserialize)]
struct EndpointDoc {
    address: String,
}

impl ServiceEntryDoc {
    pub fn into_service_entry(self) -> Result<ServiceEntry, String> {
        let spec = self.spec;
        if spec.hosts.is_empty() {
            return Err("ServiceEntry needs at least one host".into());
        }
        if spec.workload_selector.is_some() {
            return Err(
                "ServiceEntry workloadSelector (mesh workloads on VMs) is not supported".into(),
            );
        }
        let resolution = match spec.resolution.as_deref().unwrap_or("NONE") {
            "STATIC" => Resolution::Static,
            "NONE" => Resolution::None,
            "DNS" => Resolution::Dns,
            other => {
                return Err(format!(
                    "resolution {other} is not supported: use STATIC, DNS or NONE"
                ));
            }
        };
        if resolution == Resolution::Dns
            && let Some(wild) = spec.hosts.iter().find(|h| h.starts_with('*'))
        {
            return Err(format!(
                "resolution DNS cannot resolve the wildcard host {wild}"
            ));
        }
        let addresses = spec
            .addresses
            .iter()
            .map(|a| parse_net(a))
            .collect::<Result<Vec<_>, _>>()?;
        let (mut endpoints, mut endpoint_names) = (Vec::new(), Vec::new());
        for e in &spec.endpoints {
            match e.address.parse::<IpAddr>() {
                Ok(ip) => endpoints.push(ip),
                Err(_) if resolution == Resolution::Dns => endpoint_names.push(e.address.clone()),
                Err(_) => {
                    return Err(format!(
                        "endpoint address {:?} is not an IP address (names need resolution DNS)",
                        e.address
                    ));
                }
            }
        }
        if resolution == Resolution::Static && endpoints.is_empty() {
            return Err("resolution STATIC needs endpoints".into());
        }
        if resolution == Resolution::None && addresses.is_empty() {
            return Err("resolution NONE needs addresses (the IPs or CIDRs apps dial)".into());
        }
        Ok(ServiceEntry {
            name: self.metadata.name,
            namespace: self.metadata.namespace,
            hosts: spec.hosts,
            addresses,
            ports: spec
                .ports
                .into_iter()
                .map(|p| ServicePort {
                    number: p.number,
                    name: p.name,
                    protocol: p.protocol,
                    target_port: p.target_port,
                })
                .collect(),
            location: spec.location.unwrap_or(Location::MeshExternal),
            resolution,
            endpoints,
            endpoint_names,
        })
    }
}

fn parse_net(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("address {text:?} is neither an IP nor a CIDR"))
}

#[derive(Deserialize)]
pub struct DestinationRuleDoc {
    metadata: Metadata,
    spec: DestinationRuleSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DestinationRuleSpec {
    host: String,
    traffic_policy: Option<TrafficPolicyDoc>,
    #[serde(default)]
    subsets: Vec<serde_yaml::Value>,
    workload_selector: Option<Selector>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrafficPolicyDoc {
    tls: Option<TlsDoc>,
    #[serde(default)]
    port_level_settings: Vec<PortLevelDoc>,
}

#[derive(Deserialize)]
struct PortLevelDoc {
    port: PortSelectorDoc,
    tls: Option<TlsDoc>,
}

#[derive(Deserialize)]
struct PortSelectorDoc {
    number: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TlsDoc {
    #[serde(default = "disable")]
    mode: TlsMode,
    client_certificate: Option<PathBuf>,
    private_key: Option<PathBuf>,
    ca_certificates: Option<PathBuf>,
    credential_name: Option<String>,
    sni: Option<String>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
    ca_crl: Option<PathBuf>,
}

fn disable() -> TlsMode {
    TlsMode::Disable
}

impl TlsDoc {
    fn into_tls(self, namespace: &str) -> Result<ClientTls, String> {
        if self.insecure_skip_verify {
            return Err(
                "insecureSkipVerify is not supported: hawser always verifies the server".into(),
            );
        }
        if self.ca_crl.is_some() {
            return Err("caCrl is not supported yet".into());
        }
        let files = self.client_certificate.is_some() || self.private_key.is_some();
        if self.mode == TlsMode::Mutual {
            let pair = self.client_certificate.is_some() && self.private_key.is_some();
            if self.credential_name.is_none() && !pair {
                return Err(
                    "MUTUAL needs credentialName, or clientCertificate and privateKey".into(),
                );
            }
        } else if files || (self.credential_name.is_some() && self.mode != TlsMode::Simple) {
            return Err(format!(
                "client certificates are only used with MUTUAL, not {:?}",
                self.mode
            ));
        }
        Ok(ClientTls {
            mode: self.mode,
            client_certificate: self.client_certificate,
            private_key: self.private_key,
            ca_certificates: self.ca_certificates,
            credential_name: self
                .credential_name
                .map(|name| scoped_credential(namespace, &name))
                .transpose()?,
            sni: self.sni,
            subject_alt_names: self.subject_alt_names,
        })
    }
}

impl DestinationRuleDoc {
    pub fn into_destination_rule(self) -> Result<DestinationRule, String> {
        let spec = self.spec;
        if !spec.subsets.is_empty() {
            return Err(
                "subsets are not supported (they need a VirtualService to route to them)".into(),
            );
        }
        let namespace = self.metadata.namespace.clone();
        let policy = spec.traffic_policy;
        let (tls, levels) = match policy {
            Some(p) => (p.tls, p.port_level_settings),
            None => (None, Vec::new()),
        };
        let mut port_tls = BTreeMap::new();
        for level in levels {
            if let Some(tls) = level.tls {
                port_tls.insert(level.port.number, tls.into_tls(&namespace)?);
            }
        }
        Ok(DestinationRule {
            name: self.metadata.name,
            namespace: self.metadata.namespace,
            host: spec.host,
            workload_selector: spec.workload_selector.map(|s| s.match_labels),
            tls: tls.map(|tls| tls.into_tls(&namespace)).transpose()?,
            port_tls,
        })
    }
}
