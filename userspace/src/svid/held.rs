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
    /// The subject of the CA that signed it (which intermediate, during a rotation).
    pub issuer: String,
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
            issuer: leaf.issuer,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            received: OffsetDateTime::now_utc(),
        })
    }

    /// Whether `roots` (PEM) still vouch for it: its chain ends at one of them, or (a CA
    /// that leaves the root out) at a certificate one of them issued.
    pub fn chains_to(&self, roots: &[String]) -> bool {
        let Some(last) = self.chain.last().and_then(|pem| certs::info(pem).ok()) else {
            return false;
        };
        roots
            .iter()
            .filter_map(|pem| certs::info(pem).ok())
            .any(|root| {
                (root.serial, &root.subject) == (last.serial.clone(), &last.subject)
                    || root.subject == last.issuer
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::pki::{self, CaSpec, KeyType};

    fn root(name: &str) -> pki::Generated {
        let spec = CaSpec {
            common_name: pki::distinct_root_name(name),
            organization: "test".into(),
            validity: Duration::from_secs(3600),
            key_type: KeyType::EcdsaP256,
        };
        pki::root_ca(&spec).unwrap()
    }

    /// An SVID whose chain is `[leaf, rest...]`, signed by `signer`.
    fn svid(signer: &pki::Generated, rest: &[&str]) -> Svid {
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(
            &signer.cert_pem,
            rcgen::KeyPair::from_pem(&signer.key_pem).unwrap(),
        )
        .unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://cluster.local/ns/default/sa/a".try_into().unwrap(),
        )];
        let leaf = params.signed_by(&key, &issuer).unwrap().pem();
        let chain = std::iter::once(leaf)
            .chain(rest.iter().map(|s| s.to_string()))
            .collect();
        let id = "spiffe://cluster.local/ns/default/sa/a".parse().unwrap();
        Svid::new(id, chain, key.serialize_pem()).unwrap()
    }

    #[test]
    fn an_svid_is_vouched_for_only_while_its_root_is_in_the_bundle() {
        let (root1, root2) = (root("one"), root("two"));
        let with_root = svid(&root1, &[&root1.cert_pem]);
        assert!(with_root.chains_to(&[root1.cert_pem.clone(), root2.cert_pem.clone()]));
        assert!(!with_root.chains_to(std::slice::from_ref(&root2.cert_pem)));
        // A CA that leaves the root out of the chain: judged by who issued the last one.
        let without_root = svid(&root1, &[]);
        assert!(without_root.chains_to(std::slice::from_ref(&root1.cert_pem)));
        assert!(!without_root.chains_to(std::slice::from_ref(&root2.cert_pem)));
    }
}
