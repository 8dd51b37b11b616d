//! The node daemon's identities: one SVID per identity present on the node, from a key
//! made here and kept in memory only, signed by the CA (`client`), kept fresh and shared
//! among the pods of that identity (`manager`); `held` is one SVID as held; `connector` is
//! the TLS to the CA, whose roots follow the trust bundle; `bundle` is the trust bundle.

pub mod bundle;
pub mod client;
pub mod connector;
pub mod held;
pub mod manager;

pub use bundle::TrustBundle;
pub use client::{CaClient, CaClientConfig};
pub use held::Svid;
pub use manager::{SvidConfig, SvidManager};
