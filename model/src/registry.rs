//! A consistent snapshot of everything the workload source knows: workloads, Services,
//! and the policy, egress and port resources that apply to them.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::OnceLock,
};

use crate::{
    egress::Egress,
    policy::Policies,
    ports::InboundPorts,
    spiffe::SpiffeId,
    workload::{Service, Workload},
};

/// A consistent snapshot of everything the workload source knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    /// By `namespace/name`.
    pub workloads: std::collections::BTreeMap<String, Workload>,
    pub policies: Policies,
    pub egress: Egress,
    pub ports: Vec<InboundPorts>,
    /// Kubernetes Services (from the API source): virtual addresses and their endpoints.
    pub services: Vec<Service>,
    /// Resources a source refused while the rest of this snapshot stands, each `where: why`
    /// (the Kubernetes source; the directory source refuses an edit as a whole).
    pub refused: Vec<String>,
    /// Lookups by address and identity, built on the first lookup of a snapshot.
    index: Index,
}

/// The registry's lookups, built once: a snapshot is shared read-only (in an `Arc`) after
/// it is assembled, and a clone (which may be changed) starts without one.
#[derive(Default)]
struct Index(OnceLock<Lookups>);

#[derive(Default)]
struct Lookups {
    /// Pod address → `namespace/name`.
    by_ip: HashMap<IpAddr, String>,
    /// Cluster IP → index in `services`.
    service_by_ip: HashMap<IpAddr, usize>,
    /// Ready endpoint → index in `services`.
    service_by_endpoint: HashMap<SocketAddr, usize>,
    /// (node, declared trust domain, namespace, service account) of every workload.
    identities: HashSet<(String, Option<String>, String, String)>,
}

impl Clone for Index {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// Derived data: equal registries are equal whatever was looked up in them.
impl PartialEq for Index {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Index {}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Index")
    }
}

impl Registry {
    fn lookups(&self) -> &Lookups {
        self.index.0.get_or_init(|| Lookups {
            by_ip: self
                .workloads
                .iter()
                .flat_map(|(key, w)| w.ips.iter().map(move |ip| (*ip, key.clone())))
                .collect(),
            service_by_ip: self
                .services
                .iter()
                .enumerate()
                .flat_map(|(i, s)| s.cluster_ips.iter().map(move |ip| (*ip, i)))
                .collect(),
            service_by_endpoint: self
                .services
                .iter()
                .enumerate()
                .flat_map(|(i, s)| s.ports.values().flatten().map(move |e| (*e, i)))
                .collect(),
            identities: self
                .workloads
                .values()
                .map(|w| {
                    let (node, ns, sa) = (&w.node_name, &w.namespace, &w.service_account);
                    (node.clone(), w.trust_domain.clone(), ns.clone(), sa.clone())
                })
                .collect(),
        })
    }

    /// Workloads scheduled on `node`.
    pub fn on_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads.values().filter(move |w| w.node_name == node)
    }

    /// The Service whose virtual address `dst` is, with the endpoints for its port.
    pub fn service_at(&self, dst: SocketAddr) -> Option<(&Service, &[SocketAddr])> {
        let service = &self.services[*self.lookups().service_by_ip.get(&dst.ip())?];
        let endpoints = service
            .ports
            .get(&dst.port())
            .map_or(&[][..], Vec::as_slice);
        Some((service, endpoints))
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

    /// The Service a connection to `addr` is for: the one at that virtual address, or the
    /// one `addr` is a ready endpoint of.
    pub fn service_for(&self, addr: SocketAddr) -> Option<&Service> {
        let lookups = self.lookups();
        let at = lookups.service_by_ip.get(&addr.ip());
        let index = at.or_else(|| lookups.service_by_endpoint.get(&addr))?;
        Some(&self.services[*index])
    }

    /// The workload that owns `ip`, if any.
    pub fn by_ip(&self, ip: IpAddr) -> Option<&Workload> {
        self.workloads.get(self.lookups().by_ip.get(&ip)?)
    }

    /// Whether some workload on `node` runs as `id`, where workloads that declare no trust
    /// domain are in `local`.
    pub fn hosts(&self, node: &str, id: &SpiffeId, local: &str) -> bool {
        let key = |td: Option<&str>| {
            let (ns, sa) = (id.namespace.clone(), id.service_account.clone());
            (node.to_string(), td.map(str::to_string), ns, sa)
        };
        let identities = &self.lookups().identities;
        identities.contains(&key(Some(&id.trust_domain)))
            || (id.trust_domain == local && identities.contains(&key(None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Service;

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

    #[test]
    fn lookups_follow_the_snapshot_and_a_changed_clone_is_looked_up_afresh() {
        let mut registry = Registry::default();
        let a = crate::workload::test_workload("shop", "a");
        registry.workloads.insert(a.key(), a.clone());
        let ip = a.ips[0];
        assert_eq!(registry.by_ip(ip).map(|w| &w.name), Some(&a.name));
        let id = SpiffeId::new("td", "shop", "a");
        assert!(registry.hosts("n", &id, "td"));
        assert!(!registry.hosts("other-node", &id, "td"));
        let mut changed = registry.clone();
        changed.workloads.clear();
        assert!(
            changed.by_ip(ip).is_none(),
            "a stale index would still find a"
        );
        assert!(!changed.hosts("n", &id, "td"));
        assert_eq!(registry.by_ip(ip).map(|w| &w.name), Some(&a.name));
    }

    #[test]
    fn a_workload_is_hosted_only_in_its_own_trust_domain() {
        let mut registry = Registry::default();
        let mut a = crate::workload::test_workload("shop", "a");
        registry.workloads.insert(a.key(), a.clone());
        let local = SpiffeId::new("local.td", "shop", "a");
        let foreign = SpiffeId::new("other.td", "shop", "a");
        assert!(registry.hosts("n", &local, "local.td"));
        assert!(!registry.hosts("n", &foreign, "local.td"));
        a.trust_domain = Some("other.td".into());
        registry.workloads.insert(a.key(), a);
        let registry = registry.clone(); // a fresh index
        assert!(registry.hosts("n", &foreign, "local.td"));
        assert!(!registry.hosts("n", &local, "local.td"));
    }
}
