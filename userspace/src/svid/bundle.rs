//! The trust bundle a node daemon holds: the roots and revocations its CA publishes.

use crate::failure::Failure;

/// The roots and revocations the CA publishes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustBundle {
    pub trust_domain: String,
    pub roots: Vec<String>,
    pub revoked_serials: Vec<String>,
    pub revoked_identities: Vec<String>,
}

impl TrustBundle {
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
