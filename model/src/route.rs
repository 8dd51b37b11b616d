//! Where a captured outbound connection goes: mesh workloads first (through the tunnel to
//! another node, straight to a pod of this node), then what the egress configuration
//! declares. Pure: the daemon passes the snapshot and what it knows of itself.

use std::net::SocketAddr;

use crate::{
    SpiffeId,
    egress::{
        OutboundPolicy, Resolved,
        route::{EgressRoute, Origination},
    },
    registry::Registry,
    workload::Workload,
};

/// How a captured outbound connection leaves the node.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Straight to `to`: not a mesh workload, or the daemon has no CA.
    Direct { to: SocketAddr },
    /// To an enrolled pod of this node: no wire to protect, and the daemon's inbound side
    /// knows the caller because the daemon opens the connection.
    Local { to: SocketAddr },
    /// Through the mTLS tunnel to `to`, a workload on another node, which must prove
    /// `peer`.
    Tunnel { to: SocketAddr, peer: SpiffeId },
    /// To an external service a ServiceEntry declares, with TLS when a rule says so.
    Egress(Box<Origination>),
    /// Nowhere: the outbound policy refuses undeclared destinations, or a Service has no
    /// ready endpoint.
    Refused(String),
}

/// What the deciding daemon is.
pub struct Node<'a> {
    pub name: &'a str,
    pub trust_domain: &'a str,
    /// Whether it holds identities (has a CA): without, no tunnel can be built.
    pub identities: bool,
    pub outbound_policy: OutboundPolicy,
}

/// The route of a connection `client` dialed to `dst`.
pub fn route(
    registry: &Registry,
    node: &Node<'_>,
    client: &Workload,
    dst: SocketAddr,
    resolved: &Resolved,
) -> Route {
    let dst = match registry.destination(dst) {
        Ok(dst) => dst,
        Err(why) => return Route::Refused(why),
    };
    match registry.by_ip(dst.ip()) {
        Some(w) if w.node_name != node.name && node.identities => Route::Tunnel {
            to: dst,
            peer: w.identity(node.trust_domain),
        },
        Some(w) if w.node_name == node.name => Route::Local { to: dst },
        Some(_) => Route::Direct { to: dst },
        None => match registry
            .egress
            .route(client, dst, node.outbound_policy, resolved)
        {
            EgressRoute::Declared(o) => Route::Egress(o),
            EgressRoute::PassThrough => Route::Direct { to: dst },
            EgressRoute::Refused(why) => Route::Refused(why),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::parse_registry, workload::Service};

    const MESH: &str = "apiVersion: hawser.dev/v1alpha1
kind: Workload
metadata: {name: a, labels: {app: a}}
spec: {serviceAccount: a, podIP: 10.1.0.2, nodeName: node1}
---
apiVersion: hawser.dev/v1alpha1
kind: Workload
metadata: {name: b, labels: {app: b}}
spec: {serviceAccount: b, podIP: 10.2.0.2, nodeName: node2}
---
apiVersion: hawser.dev/v1alpha1
kind: Workload
metadata: {name: c, labels: {app: c}}
spec: {serviceAccount: c, podIP: 10.1.0.3, nodeName: node1}
";

    fn node(identities: bool, outbound_policy: OutboundPolicy) -> Node<'static> {
        Node {
            name: "node1",
            trust_domain: "cluster.local",
            identities,
            outbound_policy,
        }
    }

    #[test]
    fn mesh_workloads_go_through_the_tunnel_or_straight_to_a_local_pod() {
        let mut registry = parse_registry("mesh.yaml".as_ref(), MESH).unwrap();
        registry.services.push(Service {
            name: "b".into(),
            namespace: "default".into(),
            cluster_ips: vec!["10.96.0.2".parse().unwrap()],
            ports: [(80, vec!["10.2.0.2:8080".parse().unwrap()]), (81, vec![])].into(),
        });
        let a = registry.workloads["default/a"].clone();
        let (allow, refuse) = (
            node(true, OutboundPolicy::AllowAny),
            node(true, OutboundPolicy::RegistryOnly),
        );
        let decide = |node: &Node<'_>, dst: &str| {
            route(&registry, node, &a, dst.parse().unwrap(), &Resolved::new())
        };
        let to_b = Route::Tunnel {
            to: "10.2.0.2:8080".parse().unwrap(),
            peer: SpiffeId::new("cluster.local", "default", "b"),
        };
        assert_eq!(decide(&allow, "10.2.0.2:8080"), to_b);
        assert_eq!(
            decide(&allow, "10.96.0.2:80"),
            to_b,
            "a Service, to its endpoint"
        );
        assert!(
            matches!(decide(&allow, "10.96.0.2:81"), Route::Refused(why) if why.contains("no ready endpoint"))
        );
        assert_eq!(
            decide(&allow, "10.1.0.3:80"),
            Route::Local {
                to: "10.1.0.3:80".parse().unwrap()
            }
        );
        let without_ca = node(false, OutboundPolicy::AllowAny);
        assert_eq!(
            decide(&without_ca, "10.2.0.2:8080"),
            Route::Direct {
                to: "10.2.0.2:8080".parse().unwrap()
            }
        );
        assert_eq!(
            decide(&allow, "192.0.2.9:443"),
            Route::Direct {
                to: "192.0.2.9:443".parse().unwrap()
            },
            "undeclared, ALLOW_ANY"
        );
        assert!(matches!(
            decide(&refuse, "192.0.2.9:443"),
            Route::Refused(_)
        ));
    }
}
