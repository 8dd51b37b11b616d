//! Egress I/O: what the model's route decision (`hawser_model::egress`) needs from the
//! world. `dns` keeps the names of `resolution: DNS` entries resolved; `originate` dials
//! the upstream and does the TLS handshake (client certificates from `credentials`).

pub mod dns;
pub mod originate;
