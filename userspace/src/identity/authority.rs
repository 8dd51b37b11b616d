//! A certificate authority's signing material, and issuing SVIDs from CSRs.
//!
//! Material comes in Istio's `cacerts` layout: `ca-cert.pem` + `ca-key.pem` sign,
//! `cert-chain.pem` is the chain from `ca-cert.pem` up to the root, `root-cert.pem` holds
//! the trusted roots (more than one while a root is being rotated). Without plug-in files
//! the CA creates a self-signed root once, in the same layout, and reuses it.
//!
//! The CA follows the directory (`follow`): roots added to `root-cert.pem` join the trust
//! bundle at once, a new `ca-cert.pem`/`ca-key.pem` signs from the next CSR on, and a
//! broken or half-written update keeps the material in force.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use tokio::sync::watch;

use hawser_model::SpiffeId;

use super::{
    certs::{self, write_private},
    pki::{self, CaSpec, KeyType},
};

/// The files of a `cacerts` directory, all of which make up the material.
const FILES: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "cert-chain.pem",
    "root-cert.pem",
];

/// Largest CSR the CA reads (a P-256 CSR is ~0.5 KiB, RSA-4096 ~1.7 KiB).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// From `ca-cert.pem` up to the root, PEM each.
    chain: Vec<String>,
    /// Trusted roots, PEM each.
    roots: Vec<String>,
    pub trust_domain: String,
}

/// Material is the same when it signs with the same chain and trusts the same roots.
impl PartialEq for Authority {
    fn eq(&self, other: &Self) -> bool {
        (&self.chain, &self.roots, &self.trust_domain)
            == (&other.chain, &other.roots, &other.trust_domain)
    }
}

/// Loads the material (as `Authority::load`), then reloads it whenever its files change.
pub fn follow(
    cacerts: Option<&Path>,
    state_dir: &Path,
    trust_domain: &str,
    interval: Duration,
) -> Result<watch::Receiver<Arc<Authority>>> {
    // Creates the self-signed root on first start; later changes are only ever read.
    Authority::load(cacerts, state_dir, trust_domain)?;
    let dir: PathBuf = cacerts.unwrap_or(state_dir).to_path_buf();
    let files = FILES.map(|f| dir.join(f)).to_vec();
    let trust_domain = trust_domain.to_string();
    let followed = crate::reload::follow(
        "CA material",
        move || files.clone(),
        move || {
            let loaded = Authority::from_dir(&dir, &trust_domain).map_err(|e| format!("{e:#}"))?;
            let roots = loaded.roots.len();
            tracing::info!(signing = %loaded.signer(), roots, "CA material loaded");
            Ok::<_, String>(loaded)
        },
        interval,
    );
    followed.map_err(anyhow::Error::msg)
}

/// Why a CSR was refused; every variant is the caller's error (InvalidArgument).
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is larger than {MAX_CSR_BYTES} bytes")]
    TooLarge,
    #[error("malformed CSR: {0}")]
    Malformed(String),
    #[error("CSR refused: {0}")]
    Refused(String),
}

impl Authority {
    /// Plug-in material from `cacerts` if given, else the self-signed root in `state_dir`
    /// (created on first start).
    pub fn load(cacerts: Option<&Path>, state_dir: &Path, trust_domain: &str) -> Result<Self> {
        match cacerts {
            Some(dir) => Self::from_dir(dir, trust_domain),
            None => {
                if !state_dir.join("ca-cert.pem").exists() {
                    create_self_signed(state_dir, trust_domain)?;
                    tracing::info!(dir = %state_dir.display(), "created a self-signed root CA");
                }
                Self::from_dir(state_dir, trust_domain)
            }
        }
    }

    /// Reads and checks a `cacerts` directory.
    pub fn from_dir(dir: &Path, trust_domain: &str) -> Result<Self> {
        let file = |name: &str| certs::read(&dir.join(name));
        let ca_cert = file("ca-cert.pem")?;
        let key = KeyPair::from_pem(&file("ca-key.pem")?).context("parse ca-key.pem")?;
        let chain = certs::split_pem(&file("cert-chain.pem")?).context("cert-chain.pem")?;
        let roots = certs::split_pem(&file("root-cert.pem")?).context("root-cert.pem")?;
        if roots.is_empty() {
            bail!("{}/root-cert.pem holds no certificate", dir.display());
        }
        let ca_info = certs::info(&ca_cert).context("ca-cert.pem")?;
        if !ca_info.is_ca {
            bail!("{}/ca-cert.pem is not a CA certificate", dir.display());
        }
        check_key_matches(&ca_cert, &key)
            .with_context(|| format!("{}/ca-key.pem", dir.display()))?;
        let chain = full_chain(&ca_cert, chain, &roots)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert, key).context("ca-cert.pem")?;
        Ok(Self {
            issuer,
            chain,
            roots,
            trust_domain: trust_domain.to_string(),
        })
    }

    pub fn roots(&self) -> &[String] {
        &self.roots
    }

    /// The signing certificate's subject, for the log.
    pub fn signer(&self) -> String {
        certs::info(&self.chain[0]).map_or_else(|e| format!("{e:#}"), |i| i.subject)
    }

    /// The signing certificate's chain up to its root.
    pub fn chain(&self) -> &[String] {
        &self.chain
    }

    /// Checks a CSR and signs it: exactly one URI SAN, a SPIFFE ID of this trust domain,
    /// not a CA. Returns the identity and the chain (leaf first, root last).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<(SpiffeId, Vec<String>), CsrError> {
        let (id, csr) = self.check_csr(csr_pem)?;
        let params = leaf_params(
            SanType::URI(
                id.to_string()
                    .try_into()
                    .map_err(|_| CsrError::Refused("bad URI".into()))?,
            ),
            ttl,
        );
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        let mut chain = vec![leaf.pem()];
        chain.extend(self.chain.iter().cloned());
        Ok((id, chain))
    }

    /// The identity a CSR asks for, after every check.
    pub fn check_csr(
        &self,
        csr_pem: &str,
    ) -> Result<(SpiffeId, CertificateSigningRequestParams), CsrError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(CsrError::TooLarge);
        }
        check_key(csr_pem)?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !matches!(csr.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
            return Err(CsrError::Refused("it asks for a CA certificate".into()));
        }
        let [SanType::URI(uri)] = &csr.params.subject_alt_names[..] else {
            return Err(CsrError::Refused(format!(
                "it must carry exactly one URI SAN (the SPIFFE ID), found {:?}",
                csr.params.subject_alt_names
            )));
        };
        let id: SpiffeId = uri.as_str().parse().map_err(CsrError::Refused)?;
        if id.trust_domain != self.trust_domain {
            return Err(CsrError::Refused(format!(
                "trust domain {} is not this CA's ({})",
                id.trust_domain, self.trust_domain
            )));
        }
        Ok((id, csr))
    }

    /// A server certificate for the CA's own gRPC endpoint: (chain PEM, key PEM).
    pub fn server_certificate(&self, names: &[String], ttl: Duration) -> Result<(String, String)> {
        let key = pki::generate_key(KeyType::EcdsaP256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.not_before = OffsetDateTime::now_utc() - time::Duration::minutes(5);
        params.not_after = OffsetDateTime::now_utc() + ttl;
        params.serial_number = Some(pki::random_serial());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain = std::iter::once(cert.pem())
            .chain(self.chain.iter().cloned())
            .collect();
        Ok((chain, key.serialize_pem()))
    }
}

/// Refuses keys too weak to hold a workload identity for its lifetime: only ECDSA on
/// P-256 or P-384, Ed25519, and RSA of 2048 bits or more.
fn check_key(csr_pem: &str) -> Result<(), CsrError> {
    use x509_parser::{
        certification_request::X509CertificationRequest,
        oid_registry::{OID_EC_P256, OID_NIST_EC_P384, OID_SIG_ED25519},
        prelude::FromDer,
        public_key::PublicKey,
    };
    let malformed = |e: String| CsrError::Malformed(e);
    let der = pem::parse(csr_pem).map_err(|e| malformed(e.to_string()))?;
    let (_, request) =
        X509CertificationRequest::from_der(der.contents()).map_err(|e| malformed(e.to_string()))?;
    let spki = &request.certification_request_info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => Ok(()),
        Ok(PublicKey::RSA(rsa)) => Err(CsrError::Refused(format!(
            "an RSA key of {} bits (at least 2048)",
            rsa.key_size()
        ))),
        Ok(PublicKey::EC(_))
            if curve
                .as_ref()
                .is_some_and(|c| *c == OID_EC_P256 || *c == OID_NIST_EC_P384) =>
        {
            Ok(())
        }
        _ if spki.algorithm.algorithm == OID_SIG_ED25519 => Ok(()),
        _ => Err(CsrError::Refused(format!(
            "a key of algorithm {} (curve {curve:?}): only ECDSA P-256/P-384, Ed25519 and RSA of 2048 bits or more",
            spki.algorithm.algorithm
        ))),
    }
}

/// An SVID: the identity as the only SAN, usable for both ends of mTLS, never a CA.
fn leaf_params(san: SanType, ttl: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![san];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + ttl;
    params.serial_number = Some(pki::random_serial());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

/// `ca-cert.pem` followed by the rest of `cert-chain.pem`, ending at a root of the bundle.
fn full_chain(ca_cert: &str, chain: Vec<String>, roots: &[String]) -> Result<Vec<String>> {
    let ca_der = certs::der(ca_cert)?;
    let mut full = vec![ca_cert.to_string()];
    full.extend(
        chain
            .into_iter()
            .filter(|c| certs::der(c).ok().as_ref() != Some(&ca_der)),
    );
    let last = certs::info(full.last().unwrap())?;
    if last.subject != last.issuer {
        let root = roots
            .iter()
            .find(|r| certs::info(r).is_ok_and(|i| i.subject == last.issuer))
            .with_context(|| format!("no root in root-cert.pem issued {}", last.subject))?;
        full.push(root.clone());
    }
    Ok(full)
}

fn check_key_matches(cert_pem: &str, key: &KeyPair) -> Result<()> {
    use rcgen::PublicKeyData;
    let der = certs::der(cert_pem)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| anyhow::anyhow!("{e}"))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        bail!("the key does not belong to ca-cert.pem");
    }
    Ok(())
}

fn create_self_signed(dir: &Path, trust_domain: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let spec = CaSpec {
        common_name: pki::distinct_root_name(&format!("hawser root CA ({trust_domain})")),
        organization: "hawser".into(),
        validity: Duration::from_secs(10 * 365 * 24 * 3600),
        key_type: KeyType::EcdsaP256,
    };
    let root = pki::root_ca(&spec)?;
    write_private(&dir.join("ca-key.pem"), &root.key_pem)?;
    for name in ["ca-cert.pem", "cert-chain.pem", "root-cert.pem"] {
        std::fs::write(dir.join(name), &root.cert_pem)?;
    }
    Ok(())
}
