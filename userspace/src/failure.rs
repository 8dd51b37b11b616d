//! Why one step of a connection failed (a socket, a handshake, the credentials, the
//! kernel hand-off). Typed, so the data path carries no `anyhow`: a `proxy::refusal`
//! wraps one when it happened before any byte was relayed, and the text is what the
//! access log says after the refusal's kind.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The pod cannot speak for itself yet: no CA, no SVID yet, a bundle without roots.
    #[error("{0}")]
    NotReady(String),
    /// Certificates, keys or trust anchors that cannot be used (files an operator named,
    /// the SVID, or one the CA sent).
    #[error("{0}")]
    Credentials(String),
    /// A socket step: making one in the pod, connecting, reading, writing.
    #[error("{what}: {error}")]
    Io {
        what: String,
        #[source]
        error: io::Error,
    },
    /// A connect, handshake or preamble that did not finish in its time.
    #[error("{0}: timed out")]
    TimedOut(String),
    /// rustls refused a configuration built from the credentials.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The peer: its certificate or identity is not acceptable, or what it sent is not.
    #[error("{0}")]
    Peer(String),
    /// Steering refused to let a delivery through (its map is full or gone).
    #[error("steering: {0}")]
    Steering(String),
    /// The session could not go to the kernel (the connection is lost with it).
    #[error("kernel TLS offload ({step}): {error}")]
    Offload { step: &'static str, error: String },
}

impl Failure {
    pub fn io(what: impl Into<String>, error: io::Error) -> Self {
        Failure::Io {
            what: what.into(),
            error,
        }
    }
}

/// The result of a data-path step.
pub type Result<T, E = Failure> = std::result::Result<T, E>;
