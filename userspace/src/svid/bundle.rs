//! The trust bundle a node daemon holds: the roots and revocations its CA publishes, and
//! the roots of the trust domains it federates with.

use std::collections::BTreeMap;

use crate::{failure::Failure, identity::certs};

/// The roots and revocations the CA publishes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustBundle {
    pub trust_domain: String,
    pub roots: Vec<String>,
    pub revoked_serials: Vec<String>,
    pub revoked_identities: Vec<String>,
    /// Other trust domains' roots (PEM), by trust domain: their identities are checked
    /// against these and only these.
    pub federated: BTreeMap<String, Vec<String>>,
}

impl TrustBundle {
    /// Whether any of `roots` (PEM) is also one of ours (compared as certificates): such a
    /// root would let either CA vouch for the other's identities.
    pub fn shares_a_root(&self, roots: &[String]) -> bool {
        let der = |pem: &String| certs::der(pem).ok();
        let ours: Vec<Vec<u8>> = self.roots.iter().filter_map(der).collect();
        roots
            .iter()
            .filter_map(der)
            .any(|root| ours.contains(&root))
    }

    /// The roots identities of `trust_domain` must chain to (none: not trusted at all).
    pub fn roots_of(&self, trust_domain: &str) -> &[String] {
        if trust_domain == self.trust_domain {
            return &self.roots;
        }
        self.federated.get(trust_domain).map_or(&[], Vec::as_slice)
    }

    /// Refuses a revoked certificate serial or identity.
    pub fn check_revoked(&self, serial: Option<&str>, identity: &str) -> Result<(), Failure> {
        if let Some(serial) = serial.filter(|s| self.revoked_serials.iter().any(|r| r == s)) {
            return Err(Failure::Peer(format!(
                "the peer certificate (serial {serial}) is revoked"
            )));
        }
        if self.revoked_identities.iter().any(|r| r == identity) {
            return Err(Failure::Peer(format!(
                "the peer identity {identity} is revoked"
            )));
        }
        Ok(())
    }
}
