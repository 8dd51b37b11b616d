//! What the node daemon publishes of its enrolled set, for the admin API and the CNI
//! hand-off to read (they never reach into the daemon's own state).

use std::sync::Arc;

use super::pod::PodContext;

/// What the admin API shows of the enrolled set.
#[derive(Clone, Default)]
pub struct NodeStatus {
    pub pods: Vec<Arc<PodContext>>,
    /// The first reconciliation is done.
    pub reconciled: bool,
    /// Pods whose enrollment failed and is being retried.
    pub failing: Vec<String>,
}
