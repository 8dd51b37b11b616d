//! Who called: what the daemon proved about an inbound connection's client, and the
//! PROXY protocol v2 header that tells the app (opt-in per port, `InboundPorts`), so a
//! service behind hawser can authorize on client-certificate details without terminating
//! TLS itself.
//!
//! The header carries the client's address and the address it dialed, and when the client
//! presented a verified certificate, `PP2_TYPE_SSL` (client flags, verify = 0, the TLS
//! version as OpenSSL names it, the certificate's CN, the cipher's IANA name as sub-TLVs). The peer's URI SAN (a
//! mesh client's SPIFFE ID) goes in the custom TLV `0xE0`, which the PROXY protocol
//! reserves for applications; a mesh client on this node, proven by the connection the
//! daemon opened for it, gets that TLV without `PP2_TYPE_SSL`.

use std::net::SocketAddr;

use super::live::Admitted;

use anyhow::{Context, Result};
use ppp::v2::{Builder, Command, Protocol, Type, Version};
use rustls::{CommonState, pki_types::CertificateDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use hawser_model::policy::Principal;

/// The custom TLV with the peer's URI SAN (`spiffe://…` for mesh clients).
pub const TLV_URI_SAN: u8 = 0xE0;

/// `PP2_TYPE_SSL` client flags: TLS, a certificate on this connection, and (no
/// resumption here) for this session.
const PP2_CLIENT_SSL_WITH_CERT: u8 = 0x01 | 0x02 | 0x04;

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
        }
    }
}

/// What the app may want of a verified client certificate and its TLS session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    /// Hex, as the revocation list names serials.
    pub serial: String,
    pub common_name: Option<String>,
    pub uri_san: Option<String>,
    pub dns_sans: Vec<String>,
    /// RFC 2253 order, as nginx's `$ssl_client_s_dn` and Envoy print it.
    pub subject: String,
    pub tls_version: String,
    pub cipher: String,
}

impl ClientCertificate {
    /// Reads `leaf` (already verified) and the session's parameters.
    pub fn new(leaf: &CertificateDer<'_>, session: &CommonState) -> Result<Self> {
        let (_, cert) = X509Certificate::from_der(leaf.as_ref())
            .map_err(|e| anyhow::anyhow!("malformed client certificate: {e}"))?;
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
        let version = session.protocol_version().context("no TLS version")?;
        let cipher = session
            .negotiated_cipher_suite()
            .context("no cipher suite")?;
        Ok(Self {
            serial: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
            common_name,
            uri_san,
            dns_sans,
            subject: rfc2253(&cert),
            tls_version: tls_version_name(version).into(),
            cipher: iana_name(cipher.suite()),
        })
    }

    /// The name AuthorizationPolicy sees for a certificate outside the mesh, as Envoy names
    /// a peer: URI SAN, else DNS SAN, else subject.
    pub fn principal_name(&self) -> String {
        self.uri_san
            .clone()
            .or_else(|| self.dns_sans.first().cloned())
            .unwrap_or_else(|| self.subject.clone())
    }
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
    /// The PROXY protocol v2 header for this connection.
    pub fn proxy_header(&self) -> Result<Vec<u8>> {
        let mut builder = Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            (self.src, same_family(self.dst, self.src)),
        );
        if let Some(cert) = &self.certificate {
            builder = builder.write_tlv(Type::SSL, &ssl_tlv(cert))?;
        }
        let uri = match (&self.certificate, &self.principal) {
            (Some(cert), _) => cert.uri_san.clone(),
            (None, Some(Principal::Spiffe(id))) => Some(id.to_string()),
            _ => None,
        };
        if let Some(uri) = uri {
            builder = builder.write_tlv(TLV_URI_SAN, uri.as_bytes())?;
        }
        Ok(builder.build()?)
    }
}

/// The header needs both addresses in one family; an IPv4 client of an IPv6 listener is
/// shown as IPv4-mapped the other way round.
fn same_family(addr: SocketAddr, like: SocketAddr) -> SocketAddr {
    match (addr, like) {
        (SocketAddr::V6(v6), SocketAddr::V4(_)) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        _ => addr,
    }
}

/// `PP2_TYPE_SSL`'s value: client flags, verify result (0: the certificate was
/// verified), then the sub-TLVs.
fn ssl_tlv(cert: &ClientCertificate) -> Vec<u8> {
    let mut value = vec![PP2_CLIENT_SSL_WITH_CERT];
    value.extend(0u32.to_be_bytes());
    let mut sub = |kind: Type, text: &str| {
        let bytes = text.as_bytes();
        value.push(kind as u8);
        value.extend((bytes.len() as u16).to_be_bytes());
        value.extend(bytes);
    };
    sub(Type::SSLVersion, &cert.tls_version);
    if let Some(cn) = &cert.common_name {
        sub(Type::SSLCommonName, cn);
    }
    sub(Type::SSLCipher, &cert.cipher);
    value
}

#[cfg(test)]
mod tests {
    use ppp::v2::{Header, Type};

    use super::*;
    use hawser_model::SpiffeId;

    fn certificate() -> ClientCertificate {
        ClientCertificate {
            serial: "1f".into(),
            common_name: Some("billing".into()),
            uri_san: None,
            dns_sans: vec!["billing.corp.example".into()],
            subject: "CN=billing,O=Corp".into(),
            tls_version: "TLSv1.3".into(),
            cipher: "TLS_AES_128_GCM_SHA256".into(),
        }
    }

    fn tlvs(header: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let parsed = Header::try_from(header).expect("a valid PROXY v2 header");
        assert_eq!(parsed.len(), header.len());
        parsed
            .tlvs()
            .map(|t| {
                let t = t.expect("a valid TLV");
                (t.kind, t.value.to_vec())
            })
            .collect()
    }

    #[test]
    fn a_certificate_caller_gets_addresses_and_the_ssl_tlv_with_its_cn() {
        let caller = Caller {
            src: "192.0.2.7:40000".parse().unwrap(),
            dst: "10.1.0.3:8443".parse().unwrap(),
            principal: Some(Principal::Certificate("billing.corp.example".into())),
            certificate: Some(certificate()),
        };
        let header = caller.proxy_header().unwrap();
        let parsed = Header::try_from(&header[..]).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((caller.src, caller.dst))
        );
        let found = tlvs(&header);
        assert_eq!(found.len(), 1, "no URI SAN, so only PP2_TYPE_SSL");
        let (kind, value) = &found[0];
        assert_eq!(*kind, Type::SSL as u8);
        assert_eq!(value[0], 0x07);
        assert_eq!(&value[1..5], &[0, 0, 0, 0], "verified");
        let sub = &value[5..];
        let cn_at = sub
            .windows(7)
            .position(|w| w == b"billing")
            .expect("the CN");
        assert_eq!(sub[cn_at - 3], Type::SSLCommonName as u8);
        assert_eq!(&sub[..3], &[Type::SSLVersion as u8, 0, 7]);
    }

    #[test]
    fn a_mesh_caller_proven_by_address_gets_its_spiffe_id_without_ssl() {
        let id = SpiffeId::new("cluster.local", "shop", "frontend");
        let caller = Caller {
            src: "10.1.0.2:5000".parse().unwrap(),
            dst: "10.1.0.3:80".parse().unwrap(),
            principal: Some(id.clone().into()),
            certificate: None,
        };
        assert_eq!(
            tlvs(&caller.proxy_header().unwrap()),
            vec![(TLV_URI_SAN, id.to_string().into_bytes())]
        );
    }

    #[test]
    fn an_unknown_caller_gets_its_addresses_only() {
        let caller = Caller {
            src: "[::ffff:192.0.2.1]:1".parse().unwrap(),
            dst: "[::ffff:10.0.0.1]:2".parse().unwrap(),
            principal: None,
            certificate: None,
        };
        assert!(tlvs(&caller.proxy_header().unwrap()).is_empty());
    }

    #[test]
    fn principal_names_follow_envoy_uri_then_dns_then_subject() {
        let mut cert = certificate();
        assert_eq!(cert.principal_name(), "billing.corp.example");
        cert.dns_sans.clear();
        assert_eq!(cert.principal_name(), "CN=billing,O=Corp");
        cert.uri_san = Some("urn:corp:billing".into());
        assert_eq!(cert.principal_name(), "urn:corp:billing");
    }
}
