//! A stream on a serial tunnel session (ALPN `hawser-tunnel/2`): after its preamble the
//! stream's bytes go in frames, so that each direction's end is a mark inside the session
//! (a TCP FIN would end the session) and the session can carry the next stream.
//!
//! ```text
//! frame: length: u32 big-endian | that many bytes (1 ..= MAX_LEN)
//! length 0: this direction of the stream has ended (the sender's half-close)
//! length 0xFFFFFFFF (no bytes): going away (server only, see below)
//! ```
//! A stream is over when each side has sent its end and received the other's; only then
//! may the client send the next preamble. A session that ends any other way inside a
//! stream (FIN, reset, no `close_notify`) cuts that stream: never a clean end.
//!
//! Going away: a draining server takes no new streams on its sessions. It tells each
//! between streams and still serves a stream whose preamble crossed the mark (the client
//! reads the mark before that stream's frames), so the client sends no further stream
//! on the session and none is lost.

use crate::preamble::{Malformed, malformed};

/// Bytes of a frame's header.
pub const HEADER_LEN: usize = 4;
/// The largest frame: a sender reads at most this much at once (bounds what a receiver
/// may be asked to hold, though it never needs to buffer a whole frame).
pub const MAX_LEN: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// This many bytes of the stream follow.
    Data(usize),
    /// The sender's direction of the stream has ended.
    End,
    /// The server takes no new streams on this session.
    GoingAway,
}

const GOING_AWAY: u32 = u32::MAX;

impl Frame {
    /// The header of a frame carrying `len` bytes (0: the end).
    pub fn header(len: usize) -> [u8; HEADER_LEN] {
        assert!(len <= MAX_LEN, "a frame of {len} bytes");
        (len as u32).to_be_bytes()
    }

    /// The going-away mark.
    pub fn going_away() -> [u8; HEADER_LEN] {
        GOING_AWAY.to_be_bytes()
    }

    pub fn decode(header: [u8; HEADER_LEN]) -> Result<Self, Malformed> {
        match u32::from_be_bytes(header) as usize {
            0 => Ok(Frame::End),
            len if len <= MAX_LEN => Ok(Frame::Data(len)),
            len if len == GOING_AWAY as usize => Ok(Frame::GoingAway),
            len => Err(malformed(format!(
                "a frame of {len} bytes (at most {MAX_LEN})"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_oversized_frames() {
        for len in [1, 1024, MAX_LEN] {
            assert_eq!(Frame::decode(Frame::header(len)), Ok(Frame::Data(len)));
        }
        assert_eq!(Frame::decode(Frame::header(0)), Ok(Frame::End));
        assert_eq!(Frame::decode(Frame::going_away()), Ok(Frame::GoingAway));
        let big = Frame::decode(((MAX_LEN + 1) as u32).to_be_bytes()).unwrap_err();
        assert!(big.to_string().contains("at most"), "{big}");
    }
}
