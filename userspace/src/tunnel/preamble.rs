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

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

const MAGIC: &[u8; 4] = b"HWSR";
pub const VERSION: u8 = 1;
const TLV_PORT: u8 = 1;

/// ALPN protocol of the tunnel.
pub const ALPN: &[u8] = b"hawser-tunnel/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub port: u16,
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

    /// Reads exactly one preamble; every malformation is an `InvalidData` error that says
    /// what was wrong.
    pub async fn read(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Self> {
        let mut header = [0u8; 6];
        stream.read_exact(&mut header).await?;
        if &header[..4] != MAGIC {
            return Err(invalid("not a hawser tunnel preamble (bad magic)"));
        }
        if header[4] != VERSION {
            return Err(invalid(&format!(
                "unsupported preamble version {}",
                header[4]
            )));
        }
        let mut body = vec![0u8; usize::from(header[5])];
        stream.read_exact(&mut body).await?;
        Self::decode_tlvs(&body)
    }

    fn decode_tlvs(mut body: &[u8]) -> io::Result<Self> {
        let mut port = None;
        while !body.is_empty() {
            let [kind, len, rest @ ..] = body else {
                return Err(invalid("truncated TLV"));
            };
            let len = usize::from(*len);
            if rest.len() < len {
                return Err(invalid("TLV longer than the preamble"));
            }
            let (value, tail) = rest.split_at(len);
            if *kind == TLV_PORT {
                let bytes: [u8; 2] = value
                    .try_into()
                    .map_err(|_| invalid("port TLV is not 2 bytes"))?;
                port = Some(u16::from_be_bytes(bytes));
            }
            body = tail;
        }
        match port {
            Some(0) => Err(invalid("destination port 0")),
            Some(port) => Ok(Self { port }),
            None => Err(invalid("no destination port")),
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> io::Result<Preamble> {
        Preamble::read(&mut &bytes[..]).await
    }

    #[tokio::test]
    async fn round_trips_and_skips_unknown_tlvs() {
        let p = Preamble { port: 8080 };
        assert_eq!(read(&p.encode()).await.unwrap(), p);
        let mut with_extra = b"HWSR\x01\x09".to_vec();
        with_extra.extend([9, 3, b'x', b'y', b'z', TLV_PORT, 2, 0x1f, 0x90]);
        assert_eq!(read(&with_extra).await.unwrap().port, 8080);
    }

    #[tokio::test]
    async fn refuses_malformed_preambles() {
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
            let err = read(bytes).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{why}: {err}");
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
        // Too short: the stream ends inside the preamble.
        assert_eq!(
            read(b"HWSR\x01\x04\x01").await.unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
