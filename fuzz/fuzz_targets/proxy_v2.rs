//! The PROXY v2 header hawser writes for an app: for any connection and any certificate
//! details a client outside the mesh can choose (CN, URI SAN), the header is either
//! refused or parses back (with ppp, as HAProxy-compatible readers do) to the same
//! addresses and TLVs.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::Arbitrary;
use hawser_model::proxy_v2::{ClientCertificate, TLV_URI_SAN, header};
use libfuzzer_sys::fuzz_target;
use ppp::v2::{Addresses, Header, Type};

#[derive(Arbitrary, Debug)]
enum Family {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
    /// An IPv4 client seen by a dual-stack listener: the dialed address v4-mapped.
    Mapped([u8; 4], [u8; 4]),
}

#[derive(Arbitrary, Debug)]
struct Input {
    family: Family,
    ports: (u16, u16),
    certificate: Option<(Option<String>, String, String)>,
    uri_san: Option<String>,
}

fuzz_target!(|input: Input| {
    let (src, dst): (IpAddr, IpAddr) = match input.family {
        Family::V4(s, d) => (Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into()),
        Family::V6(s, d) => (Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into()),
        Family::Mapped(s, d) => (
            Ipv4Addr::from(s).into(),
            Ipv4Addr::from(d).to_ipv6_mapped().into(),
        ),
    };
    let (src, dst) = (
        SocketAddr::new(src, input.ports.0),
        SocketAddr::new(dst, input.ports.1),
    );
    let certificate =
        input
            .certificate
            .map(|(common_name, tls_version, cipher)| ClientCertificate {
                serial: "1".into(),
                common_name,
                uri_san: None,
                dns_sans: Vec::new(),
                subject: String::new(),
                tls_version,
                cipher,
            });
    let Ok(written) = header(src, dst, certificate.as_ref(), input.uri_san.as_deref()) else {
        return;
    };
    let parsed = Header::try_from(&written[..]).expect("hawser's header parses");
    assert_eq!(parsed.len(), written.len());
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let expected = match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V6(_)) => Addresses::from((src, canonical(dst))),
        _ => Addresses::from((src, dst)),
    };
    assert_eq!(parsed.addresses, expected);
    let tlvs: Vec<(u8, Vec<u8>)> = parsed
        .tlvs()
        .map(|t| t.map(|t| (t.kind, t.value.to_vec())).expect("a valid TLV"))
        .collect();
    let ssl = tlvs.iter().filter(|(k, _)| *k == Type::SSL as u8).count();
    assert_eq!(ssl, usize::from(certificate.is_some()));
    let uri: Vec<&[u8]> = tlvs
        .iter()
        .filter(|(k, _)| *k == TLV_URI_SAN)
        .map(|(_, v)| &v[..])
        .collect();
    assert_eq!(
        uri,
        input
            .uri_san
            .as_deref()
            .map(str::as_bytes)
            .into_iter()
            .collect::<Vec<_>>()
    );
});
