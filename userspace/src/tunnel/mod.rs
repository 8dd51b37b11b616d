//! The mTLS tunnel between node daemons (port 15008).
//!
//! The client side connects from the source pod's namespace to the destination pod's IP
//! on 15008 with the source identity's SVID and checks that the server is the destination
//! workload's identity (secure naming); the server side presents the destination pod's
//! SVID, requires a client SVID chaining to the trust bundle and not revoked, reads the
//! preamble naming the destination port, and delivers to the app.

pub mod client;
pub mod configs;
pub mod kernel_tls;
pub mod offload;
pub mod preamble;
pub mod server;
pub mod splice;
pub mod tls;

use std::{fmt::Display, future::Future, io, time::Duration};

use anyhow::{Context, Result};

use crate::metrics::{METRICS, timed};

/// Handshake and preamble must complete within this, or the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a TLS `handshake` with `peer` within `HANDSHAKE_TIMEOUT`, timed in the handshake
/// metric as `side` (client, server, inbound, egress): every handshake the daemon does.
pub async fn bounded<S>(
    side: &'static str,
    peer: impl Display,
    handshake: impl Future<Output = io::Result<S>>,
) -> Result<S> {
    timed(&METRICS.handshake_seconds, side, async {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .with_context(|| format!("TLS handshake with {peer}: timed out"))?
            .with_context(|| format!("TLS handshake with {peer}"))
    })
    .await
}
