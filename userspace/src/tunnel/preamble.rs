//! Reading the tunnel preamble (`hawser_model::preamble`) off a stream: the header first,
//! then exactly the body it announces, never more.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

pub use hawser_model::preamble::{ALPN, HEADER_LEN, Preamble};

/// Reads exactly one preamble; every malformation is an `InvalidData` error that says
/// what was wrong. None: the stream ended or was reset before its first byte (nothing
/// was lost: a session closed unused).
pub async fn read(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Preamble>> {
    match first_byte(stream).await? {
        Some(first) => rest(first, stream).await.map(Some),
        None => Ok(None),
    }
}

/// The first byte of a preamble, or None when the stream ended or was reset before it.
/// Cancel-safe: dropped while waiting, it has taken nothing from the stream.
pub async fn first_byte(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<u8>> {
    let mut first = [0u8; 1];
    match stream.read(&mut first).await {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(first[0])),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The rest of a preamble whose first byte was `first`: exactly the header and the body
/// it announces, never more.
pub async fn rest(first: u8, stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Preamble> {
    let invalid = |e| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut header = [0u8; HEADER_LEN];
    header[0] = first;
    stream.read_exact(&mut header[1..]).await?;
    let mut body = vec![0u8; Preamble::body_len(&header).map_err(invalid)?];
    stream.read_exact(&mut body).await?;
    Preamble::decode_body(&body).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_one_preamble_and_reports_malformed_and_short_ones() {
        let p = Preamble { port: 8080 };
        let mut stream = p.encode();
        stream.extend(b"app bytes");
        let mut reader = &stream[..];
        assert_eq!(read(&mut reader).await.unwrap(), Some(p));
        assert_eq!(reader, b"app bytes", "nothing after the preamble is read");
        let bad = read(&mut &b"GET / HTTP/1.1\r\n"[..]).await.unwrap_err();
        assert_eq!(bad.kind(), io::ErrorKind::InvalidData, "{bad}");
        let short = read(&mut &b"HWSR\x01\x04\x01"[..]).await.unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(read(&mut &b""[..]).await.unwrap(), None, "closed unused");
    }
}
