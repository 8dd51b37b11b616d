//! The node daemon's identities: one SVID per identity present on the node, from a key
//! made here and kept in memory only, signed by the CA (`client`), kept fresh and shared
//! among the pods of that identity (`manager`); `held` is one SVID as held; `connector` is
//! the TLS to the CA, whose roots follow the trust bundle.

pub mod client;
pub mod connector;
pub mod held;
pub mod manager;

pub use client::{CaClient, CaClientConfig, TrustBundle};
pub use held::Svid;
pub use manager::{SvidConfig, SvidManager};
