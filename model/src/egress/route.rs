//! Deciding one captured connection to an address outside the mesh: which `ServiceEntry`
//! declares it (by endpoint, address, or the resolved addresses of its hosts), where the daemon connects (`targetPort`), and which `DestinationRule` TLS
//! settings apply for this client.

use std::net::{IpAddr, SocketAddr};

use super::{
    ClientTls, DestinationRule, Egress, OutboundPolicy, Resolution, Resolved, ServiceEntry, TlsMode,
};
use crate::{
    scope::{self, Reach},
    workload::Workload,
};

#[derive(Debug)]
pub enum EgressRoute {
    /// Declared by a ServiceEntry: connect to the upstream, with TLS when a rule says so.
    Declared(Box<Origination>),
    /// Not declared, and the outbound policy is ALLOW_ANY: plain TCP as dialed.
    PassThrough,
    /// Not declared, and the outbound policy is REGISTRY_ONLY.
    Refused(String),
}

/// How one connection leaves for an external service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origination {
    /// `namespace/name` of the ServiceEntry.
    pub service_entry: String,
    /// The service's host name: the default SNI and name to verify.
    pub host: String,
    pub upstream: SocketAddr,
    /// The rule (`namespace/name`) and its TLS settings; None for plain TCP.
    pub tls: Option<(String, ClientTls)>,
}

impl Egress {
    /// `resolved`: the addresses of `resolution: DNS` names (see `dns`).
    pub fn route(
        &self,
        client: &Workload,
        dst: SocketAddr,
        policy: OutboundPolicy,
        resolved: &Resolved,
    ) -> EgressRoute {
        let mut declared = self
            .service_entries
            .iter()
            .filter_map(|se| declares(se, dst, resolved).map(|upstream| (se, upstream)));
        let first = declared.next();
        // Names resolved to one address can make two entries declare it (the load refuses
        // overlaps it can see): refused, never guessed.
        if let (Some((se, _)), Some((other, _))) = (&first, declared.next()) {
            return EgressRoute::Refused(format!(
                "ServiceEntries {}/{} and {}/{} both declare {dst}: refused, as nothing at L4 tells them apart",
                se.namespace, se.name, other.namespace, other.name
            ));
        }
        let Some((se, upstream)) = first else {
            return match policy {
                OutboundPolicy::AllowAny => EgressRoute::PassThrough,
                OutboundPolicy::RegistryOnly => {
                    EgressRoute::Refused(format!("REGISTRY_ONLY: no ServiceEntry declares {dst}"))
                }
            };
        };
        let tls = self.rule_for(client, se).and_then(|rule| {
            let settings = rule
                .port_tls
                .get(&dst.port())
                .or_else(|| rule.port_tls.get(&upstream.port()))
                .or(rule.tls.as_ref())?;
            (settings.mode != TlsMode::Disable).then(|| {
                (
                    format!("{}/{}", rule.namespace, rule.name),
                    settings.clone(),
                )
            })
        });
        EgressRoute::Declared(Box::new(Origination {
            service_entry: format!("{}/{}", se.namespace, se.name),
            host: se.hosts[0].clone(),
            upstream,
            tls,
        }))
    }

    /// The DestinationRule for `se`'s hosts that applies to `client`: the closest by
    /// `Reach` (a selector only within its own namespace, as in Istio), then one exported
    /// from any other namespace.
    fn rule_for(&self, client: &Workload, se: &ServiceEntry) -> Option<&DestinationRule> {
        self.destination_rules
            .iter()
            .filter(|r| se.hosts.iter().any(|h| host_matches(&r.host, h)))
            .filter_map(|r| {
                let selector = r.workload_selector.as_ref();
                match scope::reach(&r.namespace, selector, client) {
                    Some(Reach::MeshSelected) => None,
                    Some(reach) => Some((Some(reach), r)),
                    None => selector.is_none().then_some((None, r)),
                }
            })
            // None (exported from elsewhere) sorts first: it must come last. min_by_key
            // keeps the first of equals, so the first declared wins.
            .min_by_key(|(reach, _)| (reach.is_none(), *reach))
            .map(|(_, r)| r)
    }
}

/// The upstream address when `se` declares `dst` (address and port), else None.
fn declares(se: &ServiceEntry, dst: SocketAddr, resolved: &Resolved) -> Option<SocketAddr> {
    let port = se.ports.iter().find(|p| p.number == dst.port())?;
    let ip = dst.ip();
    let addresses_of = |names: &[String]| -> Vec<IpAddr> {
        match se.resolution {
            Resolution::Dns => names
                .iter()
                .filter_map(|n| resolved.get(n))
                .flatten()
                .copied()
                .collect(),
            _ => Vec::new(),
        }
    };
    let endpoints: Vec<IpAddr> = se
        .endpoints
        .iter()
        .copied()
        .chain(addresses_of(&se.endpoint_names))
        .collect();
    let upstream: IpAddr = if endpoints.contains(&ip) {
        ip
    } else if se.addresses.iter().any(|net| net.contains(&ip))
        || addresses_of(&se.hosts).contains(&ip)
    {
        // The service's own address: the first endpoint, or the dialed address without any.
        endpoints.first().copied().unwrap_or(ip)
    } else {
        return None;
    };
    Some(SocketAddr::new(
        upstream,
        port.target_port.unwrap_or(port.number),
    ))
}

/// Istio host matching: exact, or a `*.suffix` wildcard.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests;
