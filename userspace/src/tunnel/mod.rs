//! The mTLS tunnel between node daemons (port 15008).
//!
//! The client side connects from the source pod's namespace to the destination pod's IP
//! on 15008 with the source identity's SVID and checks that the server is the destination
//! workload's identity (secure naming); the server side presents the destination pod's
//! SVID, requires a client SVID chaining to the trust bundle and not revoked, reads the
//! preamble naming the destination port, and delivers to the app. For a pair of pods
//! with recent traffic, the client side keeps a session handshaken ahead (`spares`);
//! with `--tunnel-reuse`, a session carries the pair's connections one after another
//! (`hawser_model::frames`).

pub mod client;
pub mod preamble;
pub mod server;
pub mod spares;
