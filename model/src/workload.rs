//! Workloads (pods) and Services, independent of where they were read from.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use crate::spiffe::SpiffeId;

/// One pod: where it runs, its address, and the identity it runs as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// The pod's addresses, one per family (Kubernetes' `podIPs`). Empty while unknown: a
    /// new pod's addresses come with its CNI hand-off, before the API server has them.
    pub ips: Vec<IpAddr>,
    pub node_name: String,
    /// The pod's network namespace (e.g. `/run/netns/<name>` or `/proc/<pid>/ns/net`);
    /// None until the CNI plugin hands it over.
    pub netns: Option<PathBuf>,
    pub labels: BTreeMap<String, String>,
    /// The trust domain the workload's identity belongs to, when not the local mesh's (a
    /// federated mesh's workload).
    #[serde(default)]
    pub trust_domain: Option<String>,
}

impl Workload {
    /// `namespace/name`, unique within a registry.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The pod's address of the family of `other`, if it has one.
    pub fn ip_like(&self, other: IpAddr) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == other.is_ipv4())
    }

    /// The addresses for people: `10.1.0.2,fd00::2`, or `-` while unknown.
    pub fn ips_text(&self) -> String {
        match self.ips.is_empty() {
            true => "-".into(),
            false => self
                .ips
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// The SPIFFE ID this workload runs as: in its own trust domain, else in `local`.
    pub fn identity(&self, local: &str) -> SpiffeId {
        let trust_domain = self.trust_domain.as_deref().unwrap_or(local);
        SpiffeId::new(trust_domain, &self.namespace, &self.service_account)
    }
}

/// A Service: its cluster IPs and, per service port, the ready endpoints behind it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: BTreeMap<u16, Vec<SocketAddr>>,
}

/// A workload for unit tests: `<app>` in `namespace`, labelled `app: <app>`, running as
/// service account `<app>`.
#[cfg(test)]
pub fn test_workload(namespace: &str, app: &str) -> Workload {
    Workload {
        name: app.into(),
        namespace: namespace.into(),
        service_account: app.into(),
        ips: vec!["10.0.0.2".parse().unwrap()],
        node_name: "n".into(),
        netns: Some("/x".into()),
        labels: [("app".to_string(), app.to_string())].into(),
        trust_domain: None,
    }
}
