//! Workload source: what runs on the node, and under which identity.
//!
//! The local source reads Kubernetes-style YAML documents from a directory (`local`) and
//! hot-reloads it (`watch`); a Kubernetes API source will feed the same model.

pub mod local;
pub mod model;
pub mod watch;

pub use model::{Registry, Workload};
