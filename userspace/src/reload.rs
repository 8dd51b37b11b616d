//! Hot reload of configuration read from files.
//!
//! Files are polled: a poll survives editors that replace files, Kubernetes' ConfigMap
//! symlink swaps and bind mounts, which inotify handles only with care. A bad edit is
//! logged with file and line, and the last good value stays in force.

use std::{
    collections::hash_map::DefaultHasher,
    fmt::Display,
    hash::{Hash, Hasher},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;

/// Loads now (an error here is the caller's to report), then reloads whenever the files
/// named by `files` change, publishing each good value.
pub fn follow<T, E>(
    what: &'static str,
    files: impl Fn() -> Vec<PathBuf> + Send + 'static,
    load: impl Fn() -> Result<T, E> + Send + 'static,
    interval: Duration,
) -> Result<watch::Receiver<Arc<T>>, E>
where
    T: PartialEq + Send + Sync + 'static,
    E: Display,
{
    let (tx, rx) = watch::channel(Arc::new(load()?));
    tokio::spawn(async move {
        let mut last = fingerprint(&files());
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            let now = fingerprint(&files());
            if now == last {
                continue;
            }
            last = now;
            match load() {
                Ok(value) => {
                    tracing::info!("{what} reloaded");
                    tx.send_if_modified(|current| {
                        let changed = **current != value;
                        *current = Arc::new(value);
                        changed
                    });
                }
                Err(errors) => {
                    for error in errors.to_string().lines() {
                        tracing::error!(%error, "{what} rejected; keeping the last good one");
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

/// A cheap summary of files' names and contents (a missing file counts too).
fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.hash(&mut hasher);
        std::fs::read(file).ok().hash(&mut hasher);
    }
    hasher.finish()
}
