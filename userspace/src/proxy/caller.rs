//! Who called: what the daemon proved about an inbound connection's client, read from its
//! verified certificate and TLS session, and told to the app in a PROXY protocol v2
//! header (`hawser_model::proxy_v2`), so a service behind hawser can authorize on
//! client-certificate details without terminating TLS itself. A mesh client on this
//! node, proven by the connection the daemon opened for it, gets its SPIFFE ID in the URI
//! SAN TLV without `PP2_TYPE_SSL`.

use std::net::SocketAddr;

use hawser_model::{
    policy::Principal,
    proxy_v2::{self, ClientCertificate},
};
use rustls::{CommonState, pki_types::CertificateDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::live::Admitted;
use crate::failure::{Failure, Result};

/// An inbound connection's client, as far as it was proven.
#[derive(Clone, Debug)]
pub struct Caller {
    pub src: SocketAddr,
    /// The address the client dialed.
    pub dst: SocketAddr,
    pub principal: Option<Principal>,
    /// The client's verified certificate, when it presented one.
    pub certificate: Option<ClientCertificate>,
}

impl Caller {
    /// What the caller is admitted as, for checking again later (see `live`).
    pub fn admitted(&self) -> Admitted {
        Admitted {
            port: self.dst.port(),
            principal: self.principal.clone(),
            serial: self.certificate.as_ref().map(|c| c.serial.clone()),
            opened: false,
        }
    }
}

/// Reads `leaf` (already verified) and the session's parameters.
pub fn client_certificate(
    leaf: &CertificateDer<'_>,
    session: &CommonState,
) -> Result<ClientCertificate> {
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| Failure::Peer(format!("malformed client certificate: {e}")))?;
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    let uri_san = sans.iter().find_map(|n| match n {
        GeneralName::URI(uri) => Some(uri.to_string()),
        _ => None,
    });
    let dns_sans = sans
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(name) => Some(name.to_string()),
            _ => None,
        })
        .collect();
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let unfinished = || Failure::Peer("the TLS session negotiated no version or cipher".into());
    let version = session.protocol_version().ok_or_else(unfinished)?;
    let cipher = session.negotiated_cipher_suite().ok_or_else(unfinished)?;
    Ok(ClientCertificate {
        serial: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
        common_name,
        uri_san,
        dns_sans,
        subject: rfc2253(&cert),
        tls_version: tls_version_name(version).into(),
        cipher: iana_name(cipher.suite()),
    })
}

/// Subject attributes, most specific first, `,`-separated.
fn rfc2253(cert: &X509Certificate<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut parts: Vec<String> = Vec::new();
    for rdn in cert.subject().iter_rdn() {
        for attr in rdn.iter() {
            let name = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                .map_or_else(|_| attr.attr_type().to_id_string(), str::to_string);
            let value = attr.as_str().unwrap_or("?");
            parts.push(format!("{name}={value}"));
        }
    }
    parts.reverse();
    parts.join(",")
}

/// The suite's IANA name (rustls prefixes TLS 1.3 suites with `TLS13_`).
fn iana_name(suite: rustls::CipherSuite) -> String {
    let name = suite.as_str().unwrap_or("unknown");
    match name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => name.into(),
    }
}

/// The names OpenSSL (and so nginx and HAProxy) use.
fn tls_version_name(version: rustls::ProtocolVersion) -> &'static str {
    match version {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "unknown",
    }
}

impl Caller {
    /// The PROXY protocol v2 header for this connection: the URI SAN of the certificate,
    /// or the SPIFFE ID of a mesh client proven by the connection the daemon opened.
    pub fn proxy_header(&self) -> Result<Vec<u8>, proxy_v2::Unwritable> {
        let uri = match (&self.certificate, &self.principal) {
            (Some(cert), _) => cert.uri_san.clone(),
            (None, Some(Principal::Spiffe(id))) => Some(id.to_string()),
            _ => None,
        };
        proxy_v2::header(
            self.src,
            self.dst,
            self.certificate.as_ref(),
            uri.as_deref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use hawser_model::{SpiffeId, proxy_v2::TLV_URI_SAN};
    use ppp::v2::Header;

    use super::*;

    #[test]
    fn a_mesh_caller_proven_by_the_daemons_connection_gets_its_spiffe_id_without_ssl() {
        let id = SpiffeId::new("cluster.local", "shop", "frontend");
        let caller = Caller {
            src: "10.1.0.2:5000".parse().unwrap(),
            dst: "10.1.0.3:80".parse().unwrap(),
            principal: Some(id.clone().into()),
            certificate: None,
        };
        let header = caller.proxy_header().unwrap();
        let tlvs: Vec<(u8, Vec<u8>)> = Header::try_from(&header[..])
            .unwrap()
            .tlvs()
            .map(|t| t.map(|t| (t.kind, t.value.to_vec())).unwrap())
            .collect();
        assert_eq!(tlvs, vec![(TLV_URI_SAN, id.to_string().into_bytes())]);
    }
}
