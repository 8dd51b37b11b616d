//! Hot reload of the local workload source.
//!
//! The directory is polled: a poll survives editors that replace files, Kubernetes'
//! ConfigMap symlink swaps and bind mounts, which inotify handles only with care. A bad
//! edit is logged with file and line, and the last good snapshot stays in force.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;

use super::{
    local::{self, ConfigErrors},
    model::Registry,
};

/// Loads `dir` now (an error here is the caller's to report) and then follows it.
pub fn follow(
    dir: PathBuf,
    interval: Duration,
) -> Result<watch::Receiver<Arc<Registry>>, ConfigErrors> {
    let registry = local::load_dir(&dir)?;
    let (tx, rx) = watch::channel(Arc::new(registry));
    tokio::spawn(async move {
        let mut last = fingerprint(&dir);
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            let now = fingerprint(&dir);
            if now == last {
                continue;
            }
            last = now;
            match local::load_dir(&dir) {
                Ok(registry) => {
                    tracing::info!(dir = %dir.display(), workloads = registry.workloads.len(), "configuration reloaded");
                    tx.send_if_modified(|current| {
                        let changed = **current != registry;
                        *current = Arc::new(registry);
                        changed
                    });
                }
                Err(errors) => {
                    for error in &errors.0 {
                        tracing::error!(%error, "configuration rejected; keeping the last good one");
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(rx)
}

/// A cheap summary of the directory's YAML files (names and contents).
fn fingerprint(dir: &Path) -> u64 {
    let mut hasher = DefaultHasher::new();
    if let Ok(files) = local::config_files(dir) {
        for file in files {
            file.hash(&mut hasher);
            std::fs::read(&file).ok().hash(&mut hasher);
        }
    }
    hasher.finish()
}
