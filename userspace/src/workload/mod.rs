//! Workload source: what runs on the node, and under which identity.
//!
//! The local source reads Kubernetes-style YAML documents from a directory (`local`),
//! hot-reloaded with `follow`; the Kubernetes API source (`kubernetes`) feeds the same
//! model.

pub mod kubernetes;
pub mod local;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use hawser_model::Registry;
use tokio::sync::watch;

use crate::credentials::CredentialRoots;

/// Where workloads and policies come from.
pub enum Source {
    /// A directory of YAML, polled every `interval`; with `credential_roots`, resources
    /// naming certificate files outside them are refused (file:line).
    Directory {
        dir: PathBuf,
        interval: Duration,
        credential_roots: Option<CredentialRoots>,
    },
    /// The Kubernetes API (in-cluster configuration, or the kubeconfig).
    Kubernetes,
}

/// Starts `source`; returns once it has a complete first registry.
pub async fn start(source: &Source) -> anyhow::Result<watch::Receiver<Arc<Registry>>> {
    match source {
        Source::Directory {
            dir,
            interval,
            credential_roots,
        } => follow(dir.clone(), *interval, credential_roots.clone())
            .with_context(|| format!("reading workloads from {}", dir.display())),
        Source::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster or kubeconfig)")?;
            kubernetes::follow(client).await
        }
    }
}

/// Loads the workload directory now, then follows its changes.
pub fn follow(
    dir: PathBuf,
    interval: Duration,
    credential_roots: Option<CredentialRoots>,
) -> Result<tokio::sync::watch::Receiver<Arc<Registry>>, hawser_model::config::ConfigErrors> {
    let listing = dir.clone();
    crate::reload::follow(
        "workload configuration",
        move || local::config_files(&listing).unwrap_or_default(),
        move || local::load_dir(&dir, credential_roots.as_ref()),
        interval,
    )
}
