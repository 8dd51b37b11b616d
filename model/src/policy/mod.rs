//! Istio's L4 security policy: `PeerAuthentication` (may a workload be reached without
//! mTLS?) and `AuthorizationPolicy` (who may reach it, on which ports).
//!
//! `istio` reads the resources from the same YAML directory as the workloads, unchanged
//! from what an Istio user already has; `evaluate` decides one inbound connection.

pub mod evaluate;
pub mod istio;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spiffe::SpiffeId;

pub use crate::scope::{ROOT_NAMESPACE, Scope};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inherit from the enclosing scope.
    Unset,
    /// Only mTLS (tunnel, or a same-node enrolled pod).
    Strict,
    /// mTLS and plaintext.
    Permissive,
    /// Plaintext accepted; hawser still terminates the tunnel when a peer uses it.
    Disable,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAuthentication {
    pub name: String,
    pub scope: Scope,
    pub mode: MtlsMode,
    pub port_level: BTreeMap<u16, MtlsMode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationPolicy {
    pub name: String,
    pub scope: Scope,
    pub action: Action,
    /// Empty with ALLOW: allows nothing. (An ALLOW policy with no `rules` field at all
    /// allows nothing either, as in Istio; `rules: [{}]` allows everything.)
    pub rules: Vec<Rule>,
    /// Why hawser cannot enforce this policy (a field it does not know, a `targetRef`, a
    /// bad port, an action it does not run): the workloads it selects then deny every
    /// connection, as Istio does with what a proxy cannot evaluate. Never dropped, never
    /// read as "no policy".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unenforceable: Option<String>,
}

/// A rule matches when every listed `from` (any of them) and `to` (any of them) does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    /// The rule has attributes this L4 dataplane does not evaluate (L7 ones such as
    /// methods, paths, request principals, `when`; and IP blocks for now): such an ALLOW
    /// rule never matches and such a DENY rule matches on the rest alone, so that an
    /// attribute left unseen never opens access.
    pub l7: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
}

/// Who a connection proved to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A mesh workload, by its SVID (or, on this node, by a connection the daemon itself
    /// opened for it).
    Spiffe(SpiffeId),
    /// A client certificate of an extra trust anchor (a company CA), named as Envoy names
    /// a peer: its first URI SAN, else its first DNS SAN, else its subject. It has no mesh
    /// namespace.
    Certificate(String),
}

impl Principal {
    /// The name AuthorizationPolicy `principals` match: `<td>/ns/<ns>/sa/<sa>` for a
    /// mesh identity, as in Istio.
    pub fn name(&self) -> String {
        match self {
            Principal::Spiffe(id) => id.to_string().trim_start_matches("spiffe://").into(),
            Principal::Certificate(name) => name.clone(),
        }
    }

    /// The mesh namespace, which only mesh identities have.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Principal::Spiffe(id) => Some(&id.namespace),
            Principal::Certificate(_) => None,
        }
    }
}

impl From<SpiffeId> for Principal {
    fn from(id: SpiffeId) -> Self {
        Principal::Spiffe(id)
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Spiffe(id) => id.fmt(f),
            Principal::Certificate(name) => f.write_str(name),
        }
    }
}

/// All policies in force.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policies {
    pub peer_authentications: Vec<PeerAuthentication>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
}
