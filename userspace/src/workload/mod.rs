//! Workload source: what runs on the node, and under which identity.
//!
//! The local source reads Kubernetes-style YAML documents from a directory (`local`),
//! hot-reloaded with `follow`; a Kubernetes API source will feed the same model.

pub mod local;
pub mod model;

use std::{path::PathBuf, sync::Arc, time::Duration};

pub use model::{Registry, Workload};

/// Loads the workload directory now, then follows its changes.
pub fn follow(
    dir: PathBuf,
    interval: Duration,
) -> Result<tokio::sync::watch::Receiver<Arc<Registry>>, local::ConfigErrors> {
    let listing = dir.clone();
    crate::reload::follow(
        "workload configuration",
        move || local::config_files(&listing).unwrap_or_default(),
        move || local::load_dir(&dir),
        interval,
    )
}
