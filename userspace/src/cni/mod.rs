//! Enrollment from the container runtime: `hawser-cni`, a CNI plugin chained after the
//! cluster's own, hands each new pod's network namespace to the node daemon over a Unix
//! socket, and the daemon enrolls the pod before its containers start.
//!
//! - the messages on the socket are `hawser_model::cni`'s;
//! - `plugin`: the plugin as the runtime runs it (CNI environment, JSON on stdin);
//! - `install`: copies the plugin into the host's CNI directory and chains it;
//! - `server`: the daemon's side: the socket, the hand-offs (persisted across restarts),
//!   and the registry they complete.

pub mod install;
pub mod plugin;
pub mod server;
