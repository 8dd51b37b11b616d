//! Moving bytes between the two halves of a proxied connection, and the access log line
//! that closes every connection.

use std::{net::SocketAddr, time::Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use tokio::net::TcpStream;

use crate::tunnel::{
    offload::{TlsPath, TunnelStream},
    splice,
};

/// Which listener a connection came through.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    Outbound,
    Inbound,
    Tunnel,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
            Direction::Tunnel => "tunnel",
        }
    }
}

/// What the access log says about one connection.
pub struct Connection {
    pub direction: Direction,
    /// `namespace/name` of the enrolled pod whose listener took the connection.
    pub pod: String,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// `mtls` when the bytes crossed the wire inside the tunnel, else `plaintext`.
    pub security: &'static str,
    /// Who encrypted: `ktls` (the kernel), `userspace` (rustls) or `none`.
    pub tls: &'static str,
    /// The peer's SPIFFE ID, when mTLS proved it.
    pub peer_identity: Option<String>,
    pub started: Instant,
}

impl Connection {
    pub fn new(direction: Direction, pod: &str, src: SocketAddr, dst: SocketAddr) -> Self {
        Self {
            direction,
            pod: pod.to_string(),
            src,
            dst,
            security: "plaintext",
            tls: "none",
            peer_identity: None,
            started: Instant::now(),
        }
    }

    /// Marks the connection as carried by the mTLS tunnel with a proven peer.
    pub fn mtls(mut self, peer: &impl ToString, path: TlsPath) -> Self {
        self.security = "mtls";
        self.tls = path.as_str();
        self.peer_identity = Some(peer.to_string());
        self
    }

    /// Copies both ways until both sides are done (a half-close is passed on), then logs.
    pub async fn relay(
        self,
        mut downstream: impl AsyncRead + AsyncWrite + Unpin,
        mut upstream: impl AsyncRead + AsyncWrite + Unpin,
    ) {
        let result = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
        match result {
            Ok((sent, received)) => self.log(sent, received, None),
            Err(e) => self.log(0, 0, Some(&format!("relay: {e}"))),
        }
    }

    /// Relays between the app-side socket and a tunnel: spliced when the kernel does the
    /// TLS, copied through rustls otherwise.
    pub async fn relay_tunnel(self, app: TcpStream, tunnel: TunnelStream) {
        match tunnel {
            TunnelStream::Userspace(stream) => match self.direction {
                Direction::Tunnel => self.relay(stream, app).await,
                _ => self.relay(app, stream).await,
            },
            TunnelStream::Kernel(stream) => match splice::relay(app, stream).await {
                // (app→peer, peer→app); a tunnel-side record counts from the peer.
                Ok((to_peer, to_app)) => match self.direction {
                    Direction::Tunnel => self.log(to_app, to_peer, None),
                    _ => self.log(to_peer, to_app, None),
                },
                Err(e) => self.log(0, 0, Some(&format!("relay: {e}"))),
            },
        }
    }

    /// Logs a connection that was refused before any byte moved.
    pub fn refuse(self, reason: &str) {
        self.log(0, 0, Some(reason));
    }

    fn log(&self, sent: u64, received: u64, error: Option<&str>) {
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let direction = self.direction.as_str();
        let peer = self.peer_identity.as_deref().unwrap_or("-");
        match error {
            None => tracing::info!(
                target: "hawser::access",
                direction, pod = %self.pod, src = %self.src, dst = %self.dst, security = self.security, tls = self.tls,
                peer, bytes_sent = sent, bytes_received = received, duration_ms,
                "connection closed"
            ),
            Some(reason) => tracing::warn!(
                target: "hawser::access",
                direction, pod = %self.pod, src = %self.src, dst = %self.dst, security = self.security, tls = self.tls,
                peer, bytes_sent = sent, bytes_received = received, duration_ms, reason,
                "connection refused"
            ),
        }
    }
}
