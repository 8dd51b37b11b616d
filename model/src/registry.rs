//! A consistent snapshot of everything the workload source knows: workloads, Services,
//! and the policy, egress and port resources that apply to them.

use std::net::{IpAddr, SocketAddr};

use crate::{
    egress::Egress,
    policy::Policies,
    ports::InboundPorts,
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
}
