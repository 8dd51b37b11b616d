//! One SVID as the daemon holds it: the certificate chain, its key (in memory only) and
//! when to renew it.

use std::time::Duration;

use anyhow::{Result, bail};
use hawser_model::SpiffeId;
use time::OffsetDateTime;

use crate::identity::certs;

/// An X.509 SVID with its private key (in memory only, never written to disk).
pub struct Svid {
    pub id: SpiffeId,
    /// Leaf first, root last; PEM each.
    pub chain: Vec<String>,
    pub key_pem: String,
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// When this daemon received it: renewal is timed from here, so the CA's back-dating of
    /// `not_before` (for clock skew) does not bring renewals forward.
    received: OffsetDateTime,
}

impl Svid {
    /// Checks that the chain's leaf is for `id` before accepting it.
    pub fn new(id: SpiffeId, chain: Vec<String>, key_pem: String) -> Result<Self> {
        let Some(leaf) = chain.first() else {
            bail!("the CA sent an empty chain")
        };
        let leaf = certs::info(leaf)?;
        if leaf.uri_sans != [id.to_string()] {
            bail!(
                "the CA sent a certificate for {:?}, not {id}",
                leaf.uri_sans
            );
        }
        Ok(Self {
            id,
            chain,
            key_pem,
            serial: leaf.serial,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            received: OffsetDateTime::now_utc(),
        })
    }

    pub fn expired(&self) -> bool {
        OffsetDateTime::now_utc() >= self.not_after
    }

    /// When to renew: half-way through the remaining lifetime, jittered by ±10% of it so
    /// that a node's identities (and a cluster's nodes) do not all renew at once.
    pub(super) fn refresh_in(&self) -> Duration {
        let lifetime = (self.not_after - self.received).as_seconds_f64().max(0.0);
        let jitter = (rand::random::<f64>() - 0.5) * 0.2 * lifetime;
        let at = self.received + time::Duration::seconds_f64(lifetime / 2.0 + jitter);
        Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO)
    }

    pub(super) fn until_expiry(&self) -> Duration {
        Duration::try_from(self.not_after - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO)
    }
}
