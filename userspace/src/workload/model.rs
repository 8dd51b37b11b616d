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
    /// The pod's addresses, one per family (Kubernetes' `podIPs`). Empty while unknown: a
    /// new pod's addresses come with its CNI hand-off, before the API server has them.
    pub ips: Vec<IpAddr>,
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

    /// Where a connection to `dst` really goes: for a Service's virtual address, one of
    /// its ready endpoints, chosen here so that a mesh endpoint is reached through the
    /// tunnel (kube-proxy would choose too, but after the daemon's connect: in
    /// plaintext); any other address as it is. Err: a Service with no ready endpoint.
    pub fn destination(&self, dst: SocketAddr) -> Result<SocketAddr, String> {
        match self.service_at(dst) {
            None => Ok(dst),
            Some((service, [])) => Err(format!(
                "Service {}/{} has no ready endpoint for port {}",
                service.namespace,
                service.name,
                dst.port()
            )),
            Some((_, endpoints)) => Ok(endpoints[rand::random_range(0..endpoints.len())]),
        }
    }

    /// The workload that owns `ip`, if any.
    pub fn by_ip(&self, ip: IpAddr) -> Option<&Workload> {
        self.workloads.values().find(|w| w.ips.contains(&ip))
    }
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_address_goes_to_a_ready_endpoint_or_nowhere() {
        let endpoints: Vec<SocketAddr> = vec![
            "10.1.0.5:8080".parse().unwrap(),
            "10.2.0.7:8080".parse().unwrap(),
        ];
        let registry = Registry {
            services: vec![Service {
                name: "cart".into(),
                namespace: "shop".into(),
                cluster_ips: vec!["10.96.0.10".parse().unwrap()],
                ports: [(80, endpoints.clone()), (81, Vec::new())].into(),
            }],
            ..Registry::default()
        };
        for _ in 0..20 {
            let to = registry
                .destination("10.96.0.10:80".parse().unwrap())
                .unwrap();
            assert!(endpoints.contains(&to), "{to}");
        }
        let refused = registry
            .destination("10.96.0.10:81".parse().unwrap())
            .unwrap_err();
        assert!(
            refused.contains("shop/cart has no ready endpoint"),
            "{refused}"
        );
        let other = "10.1.0.9:80".parse().unwrap();
        assert_eq!(registry.destination(other), Ok(other));
    }
}
