//! The Kubernetes API as the workload source (`hawser node --workload-source
//! kubernetes`): Pods, Namespaces (the opt-in label), Services and EndpointSlices, and the
//! Istio resources hawser reads (PeerAuthentication, AuthorizationPolicy, ServiceEntry,
//! DestinationRule; `v1`) plus hawser's InboundPorts, watched with kube-rs reflectors and
//! turned into the same registry the local YAML source fills (`convert`). Pods' network
//! namespaces come from the CNI hand-off.
//!
//! The first registry is published only once the core kinds are listed in full: an empty
//! registry at start-up would make the daemon drop the pinned state of running pods. A
//! kind that cannot be watched (an Istio CRD not installed) is retried with backoff and
//! counts as empty meanwhile.

pub mod convert;

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use futures::{Stream, StreamExt, TryFutureExt, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::Registry;
use convert::Snapshot;

/// The resources read besides the core kinds: (group, version, kind, plural).
const RESOURCES: &[(&str, &str, &str, &str)] = &[
    (
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
    ),
    (
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    (
        "networking.istio.io",
        "v1",
        "ServiceEntry",
        "serviceentries",
    ),
    (
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    ("hawser.dev", "v1alpha1", "InboundPorts", "inboundports"),
];

/// How long events are gathered before the registry is rebuilt.
const SETTLE: Duration = Duration::from_millis(100);
/// How long the first list of the core kinds may take.
const INITIAL_SYNC: Duration = Duration::from_secs(60);

struct Stores {
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    /// With what they are: list items may leave out `apiVersion` and `kind`.
    resources: Vec<(ApiResource, Store<DynamicObject>)>,
    /// Per resource: the API server says the kind does not exist (its CRD is not
    /// installed), so there is none of it to wait for.
    absent: Vec<watch::Receiver<bool>>,
}

impl Stores {
    fn snapshot(&self) -> Snapshot {
        fn owned<K: Clone + Resource>(store: &Store<K>) -> Vec<K>
        where
            K::DynamicType: std::hash::Hash + Eq + Clone,
        {
            store.state().iter().map(|k| (**k).clone()).collect()
        }
        Snapshot {
            pods: owned(&self.pods),
            namespaces: owned(&self.namespaces),
            services: owned(&self.services),
            slices: owned(&self.slices),
            resources: self
                .resources
                .iter()
                .flat_map(|(resource, store)| {
                    owned(store).into_iter().map(|mut object| {
                        object.types = Some(kube::api::TypeMeta {
                            api_version: resource.api_version.clone(),
                            kind: resource.kind.clone(),
                        });
                        object
                    })
                })
                .collect(),
        }
    }
}

/// Watches the API server behind `client`; returns once the core kinds are listed.
pub async fn follow(client: Client) -> Result<watch::Receiver<Arc<Registry>>> {
    let mut events = Vec::new();
    let core = || watch::channel(false).0;
    let (pods, w) = reflector::store();
    events.push(reflect(Api::all(client.clone()), w, "Pod", core()));
    let (namespaces, w) = reflector::store();
    events.push(reflect(Api::all(client.clone()), w, "Namespace", core()));
    let (services, w) = reflector::store();
    events.push(reflect(Api::all(client.clone()), w, "Service", core()));
    let (slices, w) = reflector::store();
    events.push(reflect(
        Api::all(client.clone()),
        w,
        "EndpointSlice",
        core(),
    ));
    let (mut resources, mut absent) = (Vec::new(), Vec::new());
    for (group, version, kind, plural) in RESOURCES {
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let writer = Writer::new(resource.clone());
        resources.push((resource.clone(), writer.as_reader()));
        let (absent_tx, absent_rx) = watch::channel(false);
        absent.push(absent_rx);
        events.push(reflect(
            Api::all_with(client.clone(), &resource),
            writer,
            kind,
            absent_tx,
        ));
    }
    let stores = Stores {
        pods,
        namespaces,
        services,
        slices,
        resources,
        absent,
    };
    let mut events = futures::stream::select_all(events);
    initial_sync(&stores, &mut events).await?;
    let (tx, rx) = watch::channel(Arc::new(rebuild(&stores, &mut Vec::new())));
    tracing::info!("Kubernetes workload source synced");
    tokio::spawn(async move {
        let mut reported = Vec::new();
        while events.next().await.is_some() {
            // Let a burst (a relist, a rollout) settle before rebuilding.
            let _ = tokio::time::timeout(SETTLE, async { while events.next().await.is_some() {} })
                .await;
            let registry = rebuild(&stores, &mut reported);
            tx.send_if_modified(|current| {
                let changed = **current != registry;
                *current = Arc::new(registry);
                changed
            });
        }
    });
    Ok(rx)
}

/// Drives the watches until every kind is listed in full: the core kinds, and every kind
/// that can restrict traffic (policies, ports, egress rules) or is known not to exist.
/// Until then nothing is enrolled, so nothing is admitted under a policy not yet read.
async fn initial_sync(
    stores: &Stores,
    events: &mut (impl Stream<Item = ()> + Unpin),
) -> Result<()> {
    let restricting = stores.resources.iter().zip(&stores.absent).map(|((_, store), absent)| {
        let mut absent = absent.clone();
        async move {
            tokio::select! {
                ready = store.wait_until_ready() => ready.map_err(anyhow::Error::from),
                gone = absent.wait_for(|absent| *absent) => gone.map(|_| ()).map_err(anyhow::Error::from),
            }
        }
    });
    let synced = async {
        tokio::try_join!(
            stores.pods.wait_until_ready().map_err(anyhow::Error::from),
            stores
                .namespaces
                .wait_until_ready()
                .map_err(anyhow::Error::from),
            stores
                .services
                .wait_until_ready()
                .map_err(anyhow::Error::from),
            stores
                .slices
                .wait_until_ready()
                .map_err(anyhow::Error::from),
            futures::future::try_join_all(restricting),
        )
    };
    let deadline = tokio::time::sleep(INITIAL_SYNC);
    tokio::pin!(synced, deadline);
    loop {
        tokio::select! {
            done = &mut synced => return done.map(|_| ()).context("the API watches ended"),
            _ = events.next() => {}
            _ = &mut deadline => anyhow::bail!(
                "the API server did not list pods, namespaces, services, endpoint slices and the Istio and hawser policy kinds within {INITIAL_SYNC:?} (RBAC? see the daemon's log)"
            ),
        }
    }
}

/// A reflector keeping `writer`'s store current; yields once per event. Watch errors
/// are logged and retried with backoff; `absent` says when the API server does not know
/// the kind at all (404: its CRD is not installed).
fn reflect<K>(
    api: Api<K>,
    writer: Writer<K>,
    kind: &'static str,
    absent: watch::Sender<bool>,
) -> BoxStream<'static, ()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone + Send + Sync,
{
    reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .map(move |event| match event {
        Err(watcher::Error::InitialListFailed(kube::Error::Api(status))) if status.code == 404 => {
            if !absent.send_replace(true) {
                tracing::info!(
                    kind,
                    "not served by the API server (CRD not installed): none to read"
                );
            }
        }
        Err(e) => tracing::warn!(kind, "Kubernetes watch: {e}"),
        Ok(_) => {}
    })
    .boxed()
}

/// The registry now, with the objects it refused (`/config_dump` shows them); refusals are
/// logged when they change.
fn rebuild(stores: &Stores, reported: &mut Vec<String>) -> Registry {
    let (mut registry, errors) = convert::registry(&stores.snapshot());
    registry.refused = errors.iter().map(ToString::to_string).collect();
    if registry.refused != *reported {
        for error in &registry.refused {
            tracing::error!(%error, "Kubernetes object refused");
        }
        reported.clone_from(&registry.refused);
    }
    registry
}
