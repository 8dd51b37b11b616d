//! The tunnel preamble: what the client tells the server after the handshake, before the
//! stream becomes raw bytes. Only what the certificates do not already prove: the
//! destination port.
//!
//! ```text
//! "HWSR" | version: u8 (1) | length: u8 | TLVs (type: u8, len: u8, value)...
//! TLV 1: destination port, u16 big-endian (required)
//! ```
//! Unknown TLV types are skipped, so later versions can add fields; the whole preamble is at
//! most 4 + 1 + 1 + 255 bytes, so a peer cannot make the server buffer more.

use std::fmt;

const MAGIC: &[u8; 4] = b"HWSR";
pub const VERSION: u8 = 1;
const TLV_PORT: u8 = 1;
/// Magic, version and body length.
pub const HEADER_LEN: usize = 6;

/// ALPN protocol of the tunnel: one stream per session, raw bytes after the preamble.
pub const ALPN: &[u8] = b"hawser-tunnel/1";
/// ALPN protocol of a serial session: streams one after another, each a preamble and
/// frames (`frames`). A server that knows it picks it when the client offers it.
pub const ALPN_SERIAL: &[u8] = b"hawser-tunnel/2";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub port: u16,
}

/// A malformed preamble, saying what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Malformed {}

pub(crate) fn malformed(what: impl Into<String>) -> Malformed {
    Malformed(what.into())
}

impl Preamble {
    pub fn encode(&self) -> Vec<u8> {
        let mut tlvs = vec![TLV_PORT, 2];
        tlvs.extend(self.port.to_be_bytes());
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        out.push(tlvs.len() as u8);
        out.extend(tlvs);
        out
    }

    /// The length of the body that follows `header`, if it is a preamble's header.
    pub fn body_len(header: &[u8; HEADER_LEN]) -> Result<usize, Malformed> {
        if &header[..4] != MAGIC {
            return Err(malformed("not a hawser tunnel preamble (bad magic)"));
        }
        if header[4] != VERSION {
            return Err(malformed(format!(
                "unsupported preamble version {}",
                header[4]
            )));
        }
        Ok(usize::from(header[5]))
    }

    /// The preamble at the start of `bytes` and how many bytes it takes; None: `bytes`
    /// ends inside it.
    pub fn decode(bytes: &[u8]) -> Result<Option<(Self, usize)>, Malformed> {
        let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let end = HEADER_LEN + Self::body_len(header)?;
        match bytes.get(HEADER_LEN..end) {
            Some(body) => Ok(Some((Self::decode_body(body)?, end))),
            None => Ok(None),
        }
    }

    /// The TLVs after the header.
    pub fn decode_body(mut body: &[u8]) -> Result<Self, Malformed> {
        let mut port = None;
        while !body.is_empty() {
            let [kind, len, rest @ ..] = body else {
                return Err(malformed("truncated TLV"));
            };
            let len = usize::from(*len);
            if rest.len() < len {
                return Err(malformed("TLV longer than the preamble"));
            }
            let (value, tail) = rest.split_at(len);
            if *kind == TLV_PORT {
                let bytes: [u8; 2] = value
                    .try_into()
                    .map_err(|_| malformed("port TLV is not 2 bytes"))?;
                port = Some(u16::from_be_bytes(bytes));
            }
            body = tail;
        }
        match port {
            Some(0) => Err(malformed("destination port 0")),
            Some(port) => Ok(Self { port }),
            None => Err(malformed("no destination port")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Result<Option<Preamble>, Malformed> {
        Ok(Preamble::decode(bytes)?.map(|(p, _)| p))
    }

    #[test]
    fn round_trips_and_skips_unknown_tlvs() {
        let p = Preamble { port: 8080 };
        let encoded = p.encode();
        assert_eq!(Preamble::decode(&encoded), Ok(Some((p, encoded.len()))));
        let mut with_extra = b"HWSR\x01\x09".to_vec();
        with_extra.extend([9, 3, b'x', b'y', b'z', TLV_PORT, 2, 0x1f, 0x90]);
        assert_eq!(decode(&with_extra), Ok(Some(p)));
    }

    #[test]
    fn refuses_malformed_preambles() {
        let cases: [(&[u8], &str); 7] = [
            (b"GET / HTTP/1.1\r\n", "bad magic"),
            (b"HWSR\x02\x04\x01\x02\x00\x50", "version 2"),
            (b"HWSR\x01\x00", "no destination port"),
            (b"HWSR\x01\x04\x01\x02\x00\x00", "port 0"),
            (b"HWSR\x01\x03\x01\x01\x50", "not 2 bytes"),
            (b"HWSR\x01\x03\x01\x05\x50", "longer than"),
            (b"HWSR\x01\x01\x01", "truncated"),
        ];
        for (bytes, why) in cases {
            let err = decode(bytes).unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
        // Too short: the bytes end inside the preamble.
        assert_eq!(decode(b"HWSR\x01\x04\x01"), Ok(None));
        assert_eq!(decode(b"HWS"), Ok(None));
    }
}
