//! The PROXY protocol v2 header that tells an app who called (opt-in per port,
//! `InboundPorts`): the client's address and the one it dialed, and when the client
//! presented a verified certificate, `PP2_TYPE_SSL` (client flags, verify = 0, the TLS
//! version as OpenSSL names it, the certificate's CN, the cipher's IANA name as sub-TLVs).
//! The peer's URI SAN (a mesh client's SPIFFE ID) goes in the custom TLV `0xE0`, which
//! the PROXY protocol reserves for applications.

use std::{fmt, net::SocketAddr};

use ppp::v2::{Builder, Command, Protocol, Type, Version};

/// The custom TLV with the peer's URI SAN (`spiffe://…` for mesh clients).
pub const TLV_URI_SAN: u8 = 0xE0;

/// `PP2_TYPE_SSL` client flags: TLS, a certificate on this connection, and (no
/// resumption here) for this session.
const PP2_CLIENT_SSL_WITH_CERT: u8 = 0x01 | 0x02 | 0x04;

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
    /// The name AuthorizationPolicy sees for a certificate outside the mesh, as Envoy names
    /// a peer: URI SAN, else DNS SAN, else subject.
    pub fn principal_name(&self) -> String {
        self.uri_san
            .clone()
            .or_else(|| self.dns_sans.first().cloned())
            .unwrap_or_else(|| self.subject.clone())
    }
}

/// A header that cannot be written (a value longer than a TLV holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwritable(String);

impl fmt::Display for Unwritable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PROXY v2 header: {}", self.0)
    }
}

impl std::error::Error for Unwritable {}

/// The header for a connection from `src` to `dst`, with the SSL TLV for `certificate`
/// and the URI SAN TLV for `uri_san`.
pub fn header(
    src: SocketAddr,
    dst: SocketAddr,
    certificate: Option<&ClientCertificate>,
    uri_san: Option<&str>,
) -> Result<Vec<u8>, Unwritable> {
    let unwritable = |e: std::io::Error| Unwritable(e.to_string());
    let mut builder = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (src, same_family(dst, src)),
    );
    if let Some(cert) = certificate {
        builder = builder
            .write_tlv(Type::SSL, &ssl_tlv(cert)?)
            .map_err(unwritable)?;
    }
    if let Some(uri) = uri_san {
        builder = builder
            .write_tlv(TLV_URI_SAN, uri.as_bytes())
            .map_err(unwritable)?;
    }
    builder.build().map_err(unwritable)
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
fn ssl_tlv(cert: &ClientCertificate) -> Result<Vec<u8>, Unwritable> {
    let mut value = vec![PP2_CLIENT_SSL_WITH_CERT];
    value.extend(0u32.to_be_bytes());
    let mut sub = |kind: Type, text: &str| {
        let len = u16::try_from(text.len())
            .map_err(|_| Unwritable(format!("{kind:?} of {} bytes", text.len())))?;
        value.push(kind as u8);
        value.extend(len.to_be_bytes());
        value.extend(text.as_bytes());
        Ok(())
    };
    sub(Type::SSLVersion, &cert.tls_version)?;
    if let Some(cn) = &cert.common_name {
        sub(Type::SSLCommonName, cn)?;
    }
    sub(Type::SSLCipher, &cert.cipher)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use ppp::v2::Header;

    use super::*;

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
        let (src, dst) = (
            "192.0.2.7:40000".parse().unwrap(),
            "10.1.0.3:8443".parse().unwrap(),
        );
        let header = header(src, dst, Some(&certificate()), None).unwrap();
        let parsed = Header::try_from(&header[..]).unwrap();
        assert_eq!(parsed.addresses, ppp::v2::Addresses::from((src, dst)));
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
    fn an_unknown_caller_gets_its_addresses_only() {
        let (src, dst) = (
            "[::ffff:192.0.2.1]:1".parse().unwrap(),
            "[::ffff:10.0.0.1]:2".parse().unwrap(),
        );
        assert!(tlvs(&header(src, dst, None, None).unwrap()).is_empty());
    }

    #[test]
    fn a_value_longer_than_a_tlv_holds_is_refused_not_cut() {
        let mut cert = certificate();
        cert.common_name = Some("x".repeat(70_000));
        let src = "192.0.2.7:1".parse().unwrap();
        assert!(header(src, src, Some(&cert), None).is_err());
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
