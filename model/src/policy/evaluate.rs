//! Deciding one inbound connection, with the reason an operator can read in the log.

use std::fmt;

use super::{
    Action, AuthorizationPolicy, MtlsMode, Operation, PeerAuthentication, Policies, Principal,
    Rule, Source,
};
use crate::{scope::Reach, workload::Workload};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow(String),
    Deny(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Allow(why) => write!(f, "allowed: {why}"),
            Verdict::Deny(why) => write!(f, "denied: {why}"),
        }
    }
}

/// Why a connection was refused, and which kind of policy refused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// `PeerAuthentication` or `AuthorizationPolicy`.
    pub by: &'static str,
    pub reason: String,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Whether a connection to `port` of `workload` from `principal` may go on: plaintext
/// without a proven identity must pass PeerAuthentication, then every connection passes
/// AuthorizationPolicy. Ok carries the reason it was allowed.
pub fn admit(
    policies: &Policies,
    workload: &Workload,
    port: u16,
    principal: Option<&Principal>,
) -> Result<String, Denial> {
    if principal.is_none() && mtls_mode(policies, workload, port) == MtlsMode::Strict {
        return Err(Denial {
            by: "PeerAuthentication",
            reason: "PeerAuthentication STRICT: plaintext from a peer without a mesh identity"
                .into(),
        });
    }
    match authorize(policies, workload, port, principal) {
        Verdict::Allow(why) => Ok(why),
        Verdict::Deny(reason) => Err(Denial {
            by: "AuthorizationPolicy",
            reason,
        }),
    }
}

/// The mTLS mode for `port` of `workload`: workload policy (its port-level setting
/// first), then namespace, then mesh-wide; PERMISSIVE when nothing says otherwise, as in
/// Istio.
pub fn mtls_mode(policies: &Policies, workload: &Workload, port: u16) -> MtlsMode {
    // A PeerAuthentication selector does not cross namespaces, as in Istio.
    let mut applicable: Vec<(Reach, &PeerAuthentication)> = policies
        .peer_authentications
        .iter()
        .filter_map(|p| Some((p.scope.reach(workload)?, p)))
        .filter(|(reach, _)| *reach != Reach::MeshSelected)
        .collect();
    applicable.sort_by_key(|(reach, _)| *reach);
    applicable
        .iter()
        .flat_map(|(_, p)| [p.port_level.get(&port).copied(), Some(p.mode)])
        .flatten()
        .find(|m| *m != MtlsMode::Unset)
        .unwrap_or(MtlsMode::Permissive)
}

/// AuthorizationPolicy for a connection to `port` of `workload` from `principal` (None:
/// no proven identity): any matching DENY denies; then, if ALLOW policies apply, one of
/// their rules must match; with none, the connection is allowed.
pub fn authorize(
    policies: &Policies,
    workload: &Workload,
    port: u16,
    principal: Option<&Principal>,
) -> Verdict {
    let applicable: Vec<&AuthorizationPolicy> = policies
        .authorization_policies
        .iter()
        .filter(|p| p.scope.reach(workload).is_some())
        .collect();
    let name = |p: &AuthorizationPolicy| format!("{}/{}", p.scope.namespace, p.name);
    if let Some(p) = applicable.iter().find(|p| p.unenforceable.is_some()) {
        let why = p.unenforceable.as_deref().unwrap_or_default();
        return Verdict::Deny(format!(
            "AuthorizationPolicy {} cannot be enforced ({why}): its workloads deny all",
            name(p)
        ));
    }
    let matching_rule = |p: &AuthorizationPolicy| {
        p.rules
            .iter()
            .position(|r| rule_matches(r, port, principal, p.action))
    };
    for policy in applicable.iter().filter(|p| p.action == Action::Deny) {
        if let Some(i) = matching_rule(policy) {
            return Verdict::Deny(format!("DENY policy {} rules[{i}] matches", name(policy)));
        }
    }
    let allows: Vec<&&AuthorizationPolicy> = applicable
        .iter()
        .filter(|p| p.action == Action::Allow)
        .collect();
    if allows.is_empty() {
        return Verdict::Allow("no ALLOW policy applies".into());
    }
    match allows.iter().find_map(|p| matching_rule(p).map(|i| (p, i))) {
        Some((policy, i)) => {
            Verdict::Allow(format!("ALLOW policy {} rules[{i}] matches", name(policy)))
        }
        None => {
            let names: Vec<String> = allows.iter().map(|p| name(p)).collect();
            Verdict::Deny(format!(
                "no rule of ALLOW policies {} matches",
                names.join(", ")
            ))
        }
    }
}

fn rule_matches(rule: &Rule, port: u16, principal: Option<&Principal>, action: Action) -> bool {
    if rule.l7 && action == Action::Allow {
        return false;
    }
    let from = rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, principal));
    let to = rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, port));
    from && to
}

/// Principals are written as in Istio: `cluster.local/ns/default/sa/sleep`, with `*` as
/// the whole value, a prefix or a suffix.
fn source_matches(source: &Source, principal: Option<&Principal>) -> bool {
    let name = principal.map(Principal::name);
    let namespace = principal.and_then(Principal::namespace);
    let any = |patterns: &[String], value: Option<&str>| {
        value.is_some_and(|v| patterns.iter().any(|p| wildcard(p, v)))
    };
    (source.principals.is_empty() || any(&source.principals, name.as_deref()))
        && !any(&source.not_principals, name.as_deref())
        && (source.namespaces.is_empty() || any(&source.namespaces, namespace))
        && !any(&source.not_namespaces, namespace)
}

fn operation_matches(op: &Operation, port: u16) -> bool {
    (op.ports.is_empty() || op.ports.contains(&port)) && !op.not_ports.contains(&port)
}

fn wildcard(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        (Some(suffix), _) => value.ends_with(suffix),
        (_, Some(prefix)) => value.starts_with(prefix),
        _ => pattern == value,
    }
}

#[cfg(test)]
mod tests;
