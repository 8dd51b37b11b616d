//! What the admin API answers, as JSON: the same types serve the daemon and the CLI.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;

use crate::identity::certs;
use hawser_model::{
    Workload,
    egress::{Egress, Resolved},
    policy::Policies,
    ports::InboundPorts,
};

/// `/status`: is the daemon ready, and what it serves.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub version: String,
    pub uptime_secs: u64,
    pub ready: bool,
    /// Why the daemon is not ready (empty when it is).
    pub not_ready: Vec<String>,
    /// Where tunnel TLS runs: `ktls` or `userspace`.
    pub tls: String,
    /// Whether the daemon gets identities from a CA.
    pub ca: bool,
    pub pods: Vec<PodStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodStatus {
    /// `namespace/name`.
    pub pod: String,
    pub ip: String,
    pub identity: String,
    /// Serial of the SVID held for the pod's identity, if any.
    pub svid_serial: Option<String>,
    pub svid_not_after: Option<String>,
}

/// `/certs`: what `istioctl proxy-config secret` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Certs {
    pub trust_domain: String,
    pub identities: Vec<IdentityCerts>,
    pub trust_roots: Vec<Cert>,
    pub revoked_serials: Vec<String>,
    #[serde(default)]
    pub revoked_identities: Vec<String>,
}

/// `hawser certs --peer`: what a peer's tunnel port presents, and this node's verdict.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerCerts {
    pub peer: String,
    /// Leaf first.
    pub chain: Vec<Cert>,
    /// The peer's SPIFFE ID, when the chain passes.
    pub identity: Option<String>,
    /// Why the chain does not pass.
    pub refused: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdentityCerts {
    pub identity: String,
    /// `valid`, or `pending` while the SVID is requested (or after it expired).
    pub state: String,
    /// Leaf first.
    pub chain: Vec<Cert>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cert {
    /// Lowercase hex.
    pub serial: String,
    pub subject: String,
    pub issuer: String,
    pub uri_sans: Vec<String>,
    /// RFC 3339.
    pub not_before: String,
    pub not_after: String,
    pub pem: String,
}

/// `/config_dump`: the workloads, policies, inbound port settings and egress rules as the
/// daemon sees them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigDump {
    pub node: String,
    pub trust_domain: String,
    /// `namespace/name` of the pods enrolled on this node.
    pub enrolled: Vec<String>,
    pub workloads: Vec<Workload>,
    pub policies: Policies,
    pub egress: Egress,
    pub inbound_ports: Vec<InboundPorts>,
    /// Addresses of the `resolution: DNS` ServiceEntry names, as last resolved.
    pub resolved_names: Resolved,
    /// Resources refused, each `where: why` (e.g. a ServiceEntry for an address and port
    /// another one declares).
    #[serde(default)]
    pub refused: Vec<String>,
}

/// `/policy/check`: would a connection be admitted, and which rule decides.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyCheck {
    /// The caller's SPIFFE ID; None for a caller without a mesh identity.
    pub from: Option<String>,
    /// `namespace/name` of the destination workload.
    pub to: String,
    pub port: u16,
    /// PeerAuthentication mode for the port: STRICT, PERMISSIVE or DISABLE.
    pub mtls_mode: String,
    pub allowed: bool,
    /// `PeerAuthentication` or `AuthorizationPolicy`.
    pub decided_by: String,
    pub reason: String,
}

/// A time as the views show it.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

impl Cert {
    /// The view of one PEM certificate; None when it does not parse.
    pub fn from_pem(pem: &str) -> Option<Self> {
        let info = certs::info(pem).ok()?;
        Some(Cert {
            serial: info.serial,
            subject: info.subject,
            issuer: info.issuer,
            uri_sans: info.uri_sans,
            not_before: rfc3339(info.not_before),
            not_after: rfc3339(info.not_after),
            pem: pem.to_string(),
        })
    }
}
