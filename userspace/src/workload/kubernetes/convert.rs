//! Objects of the Kubernetes API into hawser's registry, the same model the local YAML
//! source fills: mesh pods become workloads, Services with their EndpointSlices become
//! virtual addresses, and the Istio (and hawser) resources go through the very parser the
//! YAML directory uses, so both sources accept and refuse the same things.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service as KubeService},
    discovery::v1::EndpointSlice,
};
use kube::api::DynamicObject;
use serde_json::{Value, json};

use hawser_model::{
    Registry, Service, Workload,
    config::{self, ConfigError},
};

/// Namespace or pod labels that put pods in the mesh (Istio ambient's, or hawser's).
const OPT_IN: &[(&str, &str)] = &[
    ("istio.io/dataplane-mode", "ambient"),
    ("hawser.dev/mesh", "enabled"),
];
/// A pod label that keeps a pod out of a mesh namespace.
const OPT_OUT: (&str, &str) = ("istio.io/dataplane-mode", "none");

/// Everything the source watches, as last seen.
#[derive(Default)]
pub struct Snapshot {
    pub pods: Vec<Pod>,
    pub namespaces: Vec<Namespace>,
    pub services: Vec<KubeService>,
    pub slices: Vec<EndpointSlice>,
    /// PeerAuthentication, AuthorizationPolicy, ServiceEntry, DestinationRule,
    /// InboundPorts.
    pub resources: Vec<DynamicObject>,
}

/// The registry the snapshot describes, and the objects refused (each with why). A
/// refused object is left out; the rest stands.
pub fn registry(snapshot: &Snapshot) -> (Registry, Vec<ConfigError>) {
    let meshed: BTreeMap<&str, bool> = snapshot
        .namespaces
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, opted_in(&n.metadata.labels))))
        .collect();
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for pod in &snapshot.pods {
        if let Some(w) = workload(pod, &meshed) {
            found.push((
                config::Document::Workload(w),
                source("Pod", &pod.metadata),
                1,
            ));
        }
    }
    // Where two resources conflict the older one wins, as in Istio (then by name, for
    // objects created in the same second).
    let mut resources: Vec<&DynamicObject> = snapshot.resources.iter().collect();
    resources.sort_by_key(|o| {
        let m = &o.metadata;
        (
            m.creation_timestamp.clone(),
            m.namespace.clone(),
            m.name.clone(),
        )
    });
    for object in resources {
        let origin = source(
            object.types.as_ref().map_or("?", |t| t.kind.as_str()),
            &object.metadata,
        );
        match config::parse_object(&manifest(object)) {
            Ok(Some(doc)) => found.push((doc, origin, 1)),
            Ok(None) => {}
            Err(message) => errors.push(ConfigError {
                file: origin,
                line: None,
                message,
            }),
        }
    }
    let mut registry = config::assemble(found, &mut errors);
    registry.services = services(&snapshot.services, &snapshot.slices);
    (registry, errors)
}

fn opted_in(labels: &Option<BTreeMap<String, String>>) -> bool {
    let labels = labels.as_ref();
    OPT_IN
        .iter()
        .any(|(k, v)| labels.and_then(|l| l.get(*k)).is_some_and(|x| x == v))
}

/// A running (or starting) pod scheduled to a node, in the mesh by its namespace or its
/// own label, on the pod network (host-network pods share the node's namespace: never
/// enrolled). Its network namespace, and its addresses while the API server has none
/// yet, come from the CNI hand-off: a new pod is enrolled before its first packet.
fn workload(pod: &Pod, meshed: &BTreeMap<&str, bool>) -> Option<Workload> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref()?;
    let status = pod.status.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let labels = meta.labels.clone().unwrap_or_default();
    let opted_out = labels.get(OPT_OUT.0).is_some_and(|v| v == OPT_OUT.1);
    let in_mesh = opted_in(&meta.labels) || meshed.get(namespace.as_str()) == Some(&true);
    let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    if !in_mesh || opted_out || finished || spec.host_network == Some(true) {
        return None;
    }
    Some(Workload {
        name: meta.name.clone()?,
        namespace,
        service_account: spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
        ips: addresses(&status),
        node_name: spec.node_name.clone()?,
        netns: None,
        labels,
        // The cluster's own pods: the local trust domain.
        trust_domain: None,
    })
}

/// `status.podIPs` (one per family), else `status.podIP`; unparsable ones are skipped.
fn addresses(status: &k8s_openapi::api::core::v1::PodStatus) -> Vec<std::net::IpAddr> {
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let ips: Vec<_> = listed.filter_map(|ip| ip.parse().ok()).collect();
    match ips.is_empty() {
        true => status
            .pod_ip
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect(),
        false => ips,
    }
}

/// What the YAML parser expects of an object: the API's additions (status, managed
/// fields, UIDs) dropped.
fn manifest(object: &DynamicObject) -> Value {
    let meta = &object.metadata;
    let types = object.types.clone().unwrap_or_default();
    json!({
        "apiVersion": types.api_version,
        "kind": types.kind,
        "metadata": {
            "name": meta.name,
            "namespace": meta.namespace.clone().unwrap_or_else(|| "default".into()),
        },
        "spec": object.data.get("spec").cloned().unwrap_or(json!({})),
    })
}

/// Where an object came from, for errors: `kubernetes/<Kind>/<namespace>/<name>`.
fn source(kind: &str, meta: &kube::api::ObjectMeta) -> PathBuf {
    PathBuf::from(format!(
        "kubernetes/{kind}/{}/{}",
        meta.namespace.as_deref().unwrap_or("-"),
        meta.name.as_deref().unwrap_or("-")
    ))
}

/// Services with cluster IPs, each port mapped to the ready endpoints of the slices that
/// belong to it (matched by port name, as kube-proxy does).
fn services(services: &[KubeService], slices: &[EndpointSlice]) -> Vec<Service> {
    services
        .iter()
        .filter_map(|svc| {
            let (name, namespace) = (svc.metadata.name.clone()?, svc.metadata.namespace.clone()?);
            let spec = svc.spec.as_ref()?;
            let cluster_ips: Vec<IpAddr> = spec
                .cluster_ips
                .iter()
                .flatten()
                .filter_map(|ip| ip.parse().ok())
                .collect();
            if cluster_ips.is_empty() {
                return None; // headless: clients dial the pods themselves
            }
            let owned: Vec<&EndpointSlice> = slices
                .iter()
                .filter(|s| {
                    s.metadata.namespace.as_deref() == Some(&namespace)
                        && s.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get("kubernetes.io/service-name"))
                            == Some(&name)
                })
                .collect();
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                .filter_map(|p| {
                    let port = u16::try_from(p.port).ok()?;
                    Some((port, endpoints(&owned, p.name.as_deref().unwrap_or(""))))
                })
                .collect();
            Some(Service {
                name,
                namespace,
                cluster_ips,
                ports,
            })
        })
        .collect()
}

/// Ready endpoint addresses of `slices` on the port named `port_name`.
fn endpoints(slices: &[&EndpointSlice], port_name: &str) -> Vec<SocketAddr> {
    let mut found = Vec::new();
    for slice in slices {
        let Some(port) = slice.ports.iter().flatten().find_map(|p| {
            (p.name.as_deref().unwrap_or("") == port_name)
                .then_some(p.port)
                .flatten()
        }) else {
            continue;
        };
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            found.extend(
                endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    found.sort();
    found.dedup();
    found
}
