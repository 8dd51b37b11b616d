//! Workload identity: SPIFFE IDs, CA material, certificate issuance and PKI tooling.
//!
//! - `spiffe`: the `spiffe://<td>/ns/<ns>/sa/<sa>` identity;
//! - `pki`: creating root and intermediate CAs (`hawser pki`);
//! - `authority`: a CA's signing material (plug-in `cacerts` or self-signed) and issuing
//!   SVIDs from CSRs;
//! - `certs`: small PEM/X.509 helpers shared by all of the above.

pub mod authority;
pub mod certs;
pub mod pki;
pub mod spiffe;

pub use spiffe::SpiffeId;
