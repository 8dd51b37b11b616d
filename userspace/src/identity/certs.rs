//! PEM and X.509 helpers.

use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use anyhow::{Context, Result, bail};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Splits a PEM bundle into its certificates (PEM text each), in order.
pub fn split_pem(bundle: &str) -> Result<Vec<String>> {
    let blocks = pem::parse_many(bundle).context("malformed PEM")?;
    let certs: Vec<String> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| {
            pem::encode_config(
                &b,
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            )
        })
        .collect();
    Ok(certs)
}

/// DER of a single PEM certificate.
pub fn der(cert_pem: &str) -> Result<Vec<u8>> {
    let block = pem::parse(cert_pem).context("malformed PEM certificate")?;
    if block.tag() != "CERTIFICATE" {
        bail!("expected a CERTIFICATE PEM block, found {}", block.tag());
    }
    Ok(block.into_contents())
}

/// What the daemon, the CA and the tests need to know about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Lowercase hex, no separators.
    pub serial: String,
    pub subject: String,
    pub issuer: String,
    pub uri_sans: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
}

pub fn info(cert_pem: &str) -> Result<CertInfo> {
    info_der(&der(cert_pem)?)
}

/// `info` of a DER certificate.
pub fn info_der(der: &[u8]) -> Result<CertInfo> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| anyhow::anyhow!("malformed certificate: {e}"))?;
    let uri_sans = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(uri) => Some(uri.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(CertInfo {
        serial: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        uri_sans,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        is_ca: cert.is_ca(),
    })
}

/// Writes a private key readable by its owner only (0600), replacing any earlier file.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}
