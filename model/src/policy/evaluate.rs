//! Deciding one inbound connection, with the reason an operator can read in the log.

use std::fmt;

use super::{
    Action, AuthorizationPolicy, MtlsMode, Operation, PeerAuthentication, Policies, Principal,
    ROOT_NAMESPACE, Rule, Scope, Source,
};
use crate::workload::Workload;

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

pub(crate) fn covers(scope: &Scope, workload: &Workload) -> bool {
    let namespace_ok = scope.namespace == workload.namespace || scope.namespace == ROOT_NAMESPACE;
    let labels_ok = scope
        .selector
        .as_ref()
        .is_none_or(|sel| sel.iter().all(|(k, v)| workload.labels.get(k) == Some(v)));
    namespace_ok && labels_ok
}

/// The mTLS mode for `port` of `workload`: workload policy (its port-level setting
/// first), then namespace, then mesh-wide; PERMISSIVE when nothing says otherwise, as in
/// Istio.
pub fn mtls_mode(policies: &Policies, workload: &Workload, port: u16) -> MtlsMode {
    let applicable = |namespace: &str, with_selector: bool| -> Vec<&PeerAuthentication> {
        policies
            .peer_authentications
            .iter()
            .filter(|p| {
                p.scope.namespace == namespace
                    && p.scope.selector.is_some() == with_selector
                    && covers(&p.scope, workload)
            })
            .collect()
    };
    let mut candidates = Vec::new();
    for p in applicable(&workload.namespace, true) {
        candidates.push(p.port_level.get(&port).copied().unwrap_or(MtlsMode::Unset));
        candidates.push(p.mode);
    }
    candidates.extend(
        applicable(&workload.namespace, false)
            .iter()
            .map(|p| p.mode),
    );
    candidates.extend(applicable(ROOT_NAMESPACE, false).iter().map(|p| p.mode));
    candidates
        .into_iter()
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
        .filter(|p| covers(&p.scope, workload))
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
