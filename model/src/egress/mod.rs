//! Egress: connections from pods to services outside the mesh, declared with Istio's
//! `ServiceEntry`, with TLS originated by the daemon as a `DestinationRule` says.
//!
//! `istio` reads the YAML; `route` decides, for one captured connection, whether and where
//! it may go and with which TLS settings. The daemon keeps DNS names resolved, loads the
//! certificate files and dials (its `egress` module).

pub mod istio;
pub mod route;

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// Everything the egress configuration declares.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    pub service_entries: Vec<ServiceEntry>,
    pub destination_rules: Vec<DestinationRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub name: String,
    pub namespace: String,
    pub hosts: Vec<String>,
    /// Virtual IPs (or CIDRs) the apps may dial instead of an endpoint.
    pub addresses: Vec<ipnet::IpNet>,
    pub ports: Vec<ServicePort>,
    pub location: Location,
    pub resolution: Resolution,
    /// Endpoint addresses given as IPs.
    pub endpoints: Vec<IpAddr>,
    /// Endpoint addresses given as names (resolution DNS), resolved by the daemon.
    pub endpoint_names: Vec<String>,
}

impl ServiceEntry {
    /// The names the daemon keeps resolved for this entry: with resolution DNS, its hosts
    /// (what apps dial) and its named endpoints (where the daemon connects).
    pub fn names_to_resolve(&self) -> impl Iterator<Item = &str> {
        let dns = self.resolution == Resolution::Dns;
        self.hosts
            .iter()
            .chain(&self.endpoint_names)
            .filter(move |_| dns)
            .map(String::as_str)
    }
}

impl ServiceEntry {
    /// An address and port that both `self` and `other` declare (addresses or endpoints
    /// given as IPs): a connection there could be either service, and nothing at L4 (no
    /// SNI, no Host) tells which.
    pub fn overlap(&self, other: &ServiceEntry) -> Option<(ipnet::IpNet, u16)> {
        let port = self
            .ports
            .iter()
            .map(|p| p.number)
            .find(|n| other.ports.iter().any(|p| p.number == *n))?;
        let nets = |se: &ServiceEntry| -> Vec<ipnet::IpNet> {
            let endpoints = se.endpoints.iter().map(|ip| ipnet::IpNet::from(*ip));
            se.addresses.iter().copied().chain(endpoints).collect()
        };
        let theirs = nets(other);
        nets(self).into_iter().find_map(|a| {
            theirs
                .iter()
                .any(|b| a.contains(&b.network()) || b.contains(&a.network()))
                .then_some((a, port))
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub number: u16,
    pub name: String,
    pub protocol: String,
    /// Where the daemon connects when an app dials `number` (e.g. 80 → 8443).
    pub target_port: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Endpoints are the addresses given.
    Static,
    /// The address the app dialed is used as is.
    None,
    /// The hosts (and named endpoints) are resolved by the daemon, and kept resolved: a
    /// connection to one of the hosts' addresses is this service.
    Dns,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationRule {
    pub name: String,
    pub namespace: String,
    pub host: String,
    /// Only for client workloads with these labels (in the rule's namespace).
    pub workload_selector: Option<BTreeMap<String, String>>,
    pub tls: Option<ClientTls>,
    /// By port number (the port the app dials, or the target port).
    pub port_tls: BTreeMap<u16, ClientTls>,
}

/// `trafficPolicy.tls`: how the daemon speaks TLS to the destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTls {
    pub mode: TlsMode,
    pub client_certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub ca_certificates: Option<PathBuf>,
    /// A credential directory (`tls.crt`, `tls.key`, `ca.crt`, as a mounted Secret looks)
    /// of the rule's own namespace: `<namespace>/<name>` under the daemon's credentials
    /// directory, so a tenant can name only its own.
    pub credential_name: Option<String>,
    pub sni: Option<String>,
    pub subject_alt_names: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

/// Addresses of each `resolution: DNS` name, as last resolved.
pub type Resolved = BTreeMap<String, Vec<IpAddr>>;

/// Istio's `outboundTrafficPolicy.mode`: what happens to destinations nobody declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundPolicy {
    /// Pass through as plain TCP.
    AllowAny,
    /// Refuse, and log it.
    RegistryOnly,
}

impl std::str::FromStr for OutboundPolicy {
    type Err = String;

    fn from_str(mode: &str) -> Result<Self, String> {
        match mode {
            "ALLOW_ANY" => Ok(Self::AllowAny),
            "REGISTRY_ONLY" => Ok(Self::RegistryOnly),
            other => Err(format!(
                "{other:?} is not an outbound traffic policy (ALLOW_ANY or REGISTRY_ONLY)"
            )),
        }
    }
}
