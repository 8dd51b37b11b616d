//! Traffic steering without iptables: the eBPF programs and their per-pod plumbing.
//!
//! `dataplane` loads, pins and attaches the programs and owns the maps; `pod_routing`
//! prepares a pod's namespace so that the daemon can deliver inbound connections to the app
//! with the client's own source address; `captured` is a captured pod as its connection
//! handlers see it.

pub mod captured;
pub mod dataplane;
pub mod pod_routing;

pub use dataplane::Dataplane;
