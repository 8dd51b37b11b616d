//! Names of `resolution: DNS` ServiceEntries, kept resolved by the daemon: an app that
//! resolved `api.example.com` itself dials one of its addresses, and the daemon
//! recognises the service by that address.
//!
//! Every name is looked up again every `REFRESH` (the resolver caches within the
//! records' TTL, so this costs a query only when a record expires). A name that stops
//! resolving keeps its last addresses, with a warning: a DNS hiccup must not turn a
//! declared service into an undeclared destination.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolverConfig},
    name_server::TokioConnectionProvider,
    proto::xfer::Protocol,
};
use tokio::sync::watch;

use hawser_model::Registry;

const REFRESH: Duration = Duration::from_secs(5);

pub use hawser_model::egress::Resolved;

/// A resolver: the system's configuration (`/etc/resolv.conf`, `/etc/hosts`), or one
/// name server.
pub fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver> {
    let provider = TokioConnectionProvider::default();
    Ok(match server {
        Some(addr) => {
            let mut config = ResolverConfig::new();
            config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            TokioResolver::builder_with_config(config, provider).build()
        }
        None => TokioResolver::builder(provider)
            .context("the system's resolver configuration")?
            .build(),
    })
}

/// Keeps the names the registry's ServiceEntries ask for resolved.
pub fn follow(
    resolver: TokioResolver,
    mut registry: watch::Receiver<Arc<Registry>>,
) -> watch::Receiver<Arc<Resolved>> {
    let (tx, rx) = watch::channel(Arc::new(Resolved::new()));
    tokio::spawn(async move {
        loop {
            let names = wanted(&registry.borrow_and_update());
            let current = tx.borrow().clone();
            let next = resolve_all(&resolver, &names, &current).await;
            if next != *current {
                tracing::info!(resolved = ?next, "ServiceEntry names resolved");
                tx.send_replace(Arc::new(next));
            }
            tokio::select! {
                changed = registry.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(REFRESH) => {}
            }
        }
    });
    rx
}

fn wanted(registry: &Registry) -> BTreeSet<String> {
    registry
        .egress
        .service_entries
        .iter()
        .flat_map(|se| se.names_to_resolve())
        .map(str::to_string)
        .collect()
}

/// The addresses of `names` now; a failed lookup keeps what `before` had.
async fn resolve_all(
    resolver: &TokioResolver,
    names: &BTreeSet<String>,
    before: &Resolved,
) -> Resolved {
    let mut resolved = Resolved::new();
    for name in names {
        match resolver.lookup_ip(name.as_str()).await {
            Ok(lookup) => {
                let mut ips: Vec<IpAddr> = lookup.iter().collect();
                ips.sort();
                resolved.insert(name.clone(), ips);
            }
            Err(e) => {
                let kept = before.get(name).cloned().unwrap_or_default();
                tracing::warn!(%name, kept = ?kept, "ServiceEntry host does not resolve: {e}");
                resolved.insert(name.clone(), kept);
            }
        }
    }
    resolved
}
