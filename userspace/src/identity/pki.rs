//! Creating CAs: `hawser pki root-ca` and `hawser pki intermediate`, the steps of Istio's
//! "plug in CA certificates" task without openssl Makefiles.
//!
//! A root directory holds `root-cert.pem` and `root-key.pem`; each intermediate gets a
//! subdirectory in Istio's `cacerts` layout: `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`
//! (intermediate then root) and `root-cert.pem`.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize, SerialNumber,
};
use time::OffsetDateTime;

use super::certs::{self, write_private};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    EcdsaP256,
    #[value(name = "rsa-2048")]
    Rsa2048,
    #[value(name = "rsa-4096")]
    Rsa4096,
}

/// What a CA certificate says about itself.
#[derive(Clone, Debug)]
pub struct CaSpec {
    pub common_name: String,
    pub organization: String,
    pub validity: Duration,
    pub key_type: KeyType,
}

/// A root's default common name, `<what> <date> <tag>`: a new root never has the subject
/// of the one it replaces. Chains are built by subject, so two trusted roots of one name
/// (as during a rotation) would make a chain's root ambiguous.
pub fn distinct_root_name(what: &str) -> String {
    let tag: u32 = rand::random();
    format!("{what} {} {tag:08x}", OffsetDateTime::now_utc().date())
}

/// A certificate and its private key, PEM.
pub struct Generated {
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn generate_key(key_type: KeyType) -> Result<KeyPair> {
    let key = match key_type {
        KeyType::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyType::Rsa4096 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_4096),
    };
    key.context("generate a key")
}

/// A random, positive 128-bit serial (RFC 5280 allows up to 20 octets).
pub fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Parameters of a CA certificate. `path_len` None: unconstrained (a root).
fn ca_params(spec: &CaSpec, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, spec.organization.as_str());
    params
        .distinguished_name
        .push(DnType::CommonName, spec.common_name.as_str());
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks that run behind.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + spec.validity;
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = path_len.is_some();
    params
}

/// A self-signed root CA.
pub fn root_ca(spec: &CaSpec) -> Result<Generated> {
    let key = generate_key(spec.key_type)?;
    let cert = ca_params(spec, None).self_signed(&key)?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// An intermediate CA that may sign leaves only (path length 0), signed by the given CA.
pub fn intermediate(
    spec: &CaSpec,
    issuer_cert_pem: &str,
    issuer_key_pem: &str,
) -> Result<Generated> {
    let issuer_key = KeyPair::from_pem(issuer_key_pem).context("parse the issuer's key")?;
    let issuer = Issuer::from_ca_cert_pem(issuer_cert_pem, issuer_key)
        .context("parse the issuer's certificate")?;
    let key = generate_key(spec.key_type)?;
    let cert = ca_params(spec, Some(0)).signed_by(&key, &issuer)?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// `hawser pki root-ca --dir D`: `D/root-cert.pem`, `D/root-key.pem`.
pub fn write_root_ca(dir: &Path, spec: &CaSpec) -> Result<()> {
    let root_cert = dir.join("root-cert.pem");
    if root_cert.exists() {
        bail!(
            "{} exists; refusing to replace a root CA (remove it first)",
            root_cert.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let root = root_ca(spec)?;
    write_private(&dir.join("root-key.pem"), &root.key_pem)?;
    std::fs::write(&root_cert, &root.cert_pem)?;
    Ok(())
}

/// `hawser pki intermediate --dir D --name N`: Istio `cacerts` files in `D/N/`.
pub fn write_intermediate(dir: &Path, name: &str, spec: &CaSpec) -> Result<()> {
    let root_cert = certs::read(&dir.join("root-cert.pem"))?;
    let root_key = certs::read(&dir.join("root-key.pem"))?;
    let out = dir.join(name);
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let ca = intermediate(spec, &root_cert, &root_key)?;
    write_private(&out.join("ca-key.pem"), &ca.key_pem)?;
    std::fs::write(out.join("ca-cert.pem"), &ca.cert_pem)?;
    std::fs::write(
        out.join("cert-chain.pem"),
        format!("{}{}", ca.cert_pem, root_cert),
    )?;
    std::fs::write(out.join("root-cert.pem"), &root_cert)?;
    Ok(())
}
