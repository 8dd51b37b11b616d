//! The trust bundle a node daemon holds: the roots and revocations its CA publishes, and
//! the roots of the trust domains it federates with.

use std::collections::BTreeMap;

use crate::failure::Failure;

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
