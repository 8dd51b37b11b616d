//! Workload identity (SPIFFE IDs are `hawser_model::spiffe`'s): CA material, certificate issuance and PKI tooling.
//!
//! - `pki`: creating root and intermediate CAs (`hawser pki`);
//! - `authority`: a CA's signing material (plug-in `cacerts` or self-signed) and issuing
//!   SVIDs from CSRs;
//! - `spiffe_bundle`: the SPIFFE bundle format trust domains exchange roots in;
//! - `certs`: small PEM/X.509 helpers shared by all of the above.

pub mod authority;
pub mod certs;
pub mod pki;
pub mod spiffe_bundle;
