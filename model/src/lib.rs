//! hawser's pure layer: what the daemon decides on, with no I/O (no sockets, no async
//! runtime, no eBPF), so it builds and tests on stable in seconds and can be fuzzed.
//!
//! - `spiffe`: the `spiffe://<td>/ns/<ns>/sa/<sa>` identity;
//! - `workload`: pods and Services; `registry`: one consistent snapshot of everything;
//! - `policy`: Istio's L4 security policy and its evaluation; `ports`: what a workload's
//!   ports ask for; `egress`: ServiceEntries, DestinationRules and the route decision;
//! - `scope`: which workloads a resource applies to, and the precedence all kinds share;
//! - `route`: where a captured outbound connection goes (mesh, egress, refused);
//! - `config`: the YAML documents all of the above are read from;
//! - `preamble`: the tunnel's preamble codec; `frames`: a serial session's stream frames;
//!   `proxy_v2`: the PROXY v2 header that tells
//!   an app who called; `cni`: the CNI hand-off messages.

pub mod cni;
pub mod config;
pub mod egress;
pub mod frames;
pub mod policy;
pub mod ports;
pub mod preamble;
pub mod proxy_v2;
pub mod registry;
pub mod route;
pub mod scope;
pub mod spiffe;
pub mod workload;

pub use registry::Registry;
pub use spiffe::SpiffeId;
pub use workload::{Service, Workload};
