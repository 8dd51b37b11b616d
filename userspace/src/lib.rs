//! hawser: a node-level, sidecar-less service-mesh dataplane.
//!
//! - `workload`: what runs on the node (local YAML source, hot reload); `cni`: pods'
//!   network namespaces handed over by the CNI plugin;
//! - `redirect`: the eBPF programs that steer pods' TCP traffic, and per-pod routing;
//! - `netns`: doing things inside a pod's network namespace;
//! - `hawser_model` (its own crate, no I/O): identities, workloads, Istio's L4 policy,
//!   ports and egress resources, their YAML and the decisions on them;
//! - `proxy`: the daemon's listeners and the byte relay;
//! - `node`: the daemon that ties them together.

pub mod admin;
pub mod app;
pub mod ca;
pub mod cni;
pub mod context;
pub mod credentials;
pub mod egress;
pub mod failure;
pub mod grpc;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod proxy;
pub mod redirect;
pub mod reload;
pub mod svid;
pub mod tls;
pub mod tunnel;
pub mod workload;
