//! The node's view of workloads, independent of where it was read from.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

/// One pod: where it runs, its address, and the identity it runs as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub pod_ip: IpAddr,
    pub node_name: String,
    /// The pod's network namespace (e.g. `/run/netns/<name>` or `/proc/<pid>/ns/net`);
    /// None until the CNI plugin hands it over.
    pub netns: Option<PathBuf>,
    pub labels: BTreeMap<String, String>,
}

impl Workload {
    /// `namespace/name`, unique within a registry.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The SPIFFE ID this workload runs as.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// A consistent snapshot of everything the workload source knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    /// By `namespace/name`.
    pub workloads: BTreeMap<String, Workload>,
    pub policies: crate::policy::Policies,
    pub egress: crate::egress::Egress,
    pub ports: Vec<crate::ports::InboundPorts>,
    /// Kubernetes Services (from the API source): virtual addresses and their endpoints.
    pub services: Vec<Service>,
}

/// A Service: its cluster IPs and, per service port, the ready endpoints behind it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: BTreeMap<u16, Vec<SocketAddr>>,
}

impl Registry {
    /// Workloads scheduled on `node`.
    pub fn on_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads.values().filter(move |w| w.node_name == node)
    }

    /// The Service whose virtual address `dst` is, with the endpoints for its port.
    pub fn service_at(&self, dst: SocketAddr) -> Option<(&Service, &[SocketAddr])> {
        self.services
            .iter()
            .find(|s| s.cluster_ips.contains(&dst.ip()))
            .map(|s| (s, s.ports.get(&dst.port()).map_or(&[][..], Vec::as_slice)))
    }

    /// The workload that owns `ip`, if any.
    pub fn by_ip(&self, ip: IpAddr) -> Option<&Workload> {
        self.workloads.values().find(|w| w.pod_ip == ip)
    }
}
