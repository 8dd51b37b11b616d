//! Istio's `PeerAuthentication` and `AuthorizationPolicy` YAML (`security.istio.io/v1` and
//! `v1beta1`) into hawser's policy model. Fields outside L4 are recognised (so a user's
//! YAML loads unchanged) and handled as `Rule::l7` says.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    Action, AuthorizationPolicy, MtlsMode, Operation, PeerAuthentication, Rule, Scope, Source,
};

pub const API_VERSIONS: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];

/// Kubernetes metadata: only name and namespace matter; the rest (labels, annotations,
/// what `kubectl get -o yaml` adds) is accepted and ignored.
#[derive(Deserialize)]
pub struct Metadata {
    pub(crate) name: String,
    #[serde(default = "default_namespace")]
    pub(crate) namespace: String,
}

fn default_namespace() -> String {
    "default".into()
}

/// A `credentialName` of a resource in `namespace`, as the daemon looks it up:
/// `<namespace>/<name>`. As with Istio's Secrets, a resource names only credentials of its
/// own namespace, so one tenant cannot present another's certificate.
pub fn scoped_credential(namespace: &str, name: &str) -> Result<String, String> {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.starts_with('.');
    if !plain {
        return Err(format!(
            "credentialName {name:?} must be the name of a Secret of namespace {namespace} \
             (lowercase letters, digits, '-', '.')"
        ));
    }
    Ok(format!("{namespace}/{name}"))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Selector {
    #[serde(default)]
    pub(crate) match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerAuthenticationDoc {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: PeerAuthenticationSpec,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PeerAuthenticationSpec {
    selector: Option<Selector>,
    mtls: Option<MtlsDoc>,
    #[serde(default)]
    port_level_mtls: BTreeMap<u16, MtlsDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MtlsDoc {
    #[serde(default)]
    mode: ModeDoc,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum ModeDoc {
    #[default]
    Unset,
    Strict,
    Permissive,
    Disable,
}

impl From<ModeDoc> for MtlsMode {
    fn from(m: ModeDoc) -> Self {
        match m {
            ModeDoc::Unset => MtlsMode::Unset,
            ModeDoc::Strict => MtlsMode::Strict,
            ModeDoc::Permissive => MtlsMode::Permissive,
            ModeDoc::Disable => MtlsMode::Disable,
        }
    }
}

fn scope(metadata: &Metadata, selector: Option<Selector>) -> Scope {
    Scope {
        namespace: metadata.namespace.clone(),
        selector: selector.map(|s| s.match_labels),
    }
}

impl PeerAuthenticationDoc {
    pub fn into_policy(self) -> Result<PeerAuthentication, String> {
        let spec = self.spec;
        if !spec.port_level_mtls.is_empty() && spec.selector.is_none() {
            return Err("portLevelMtls needs a workload selector (as in Istio)".into());
        }
        Ok(PeerAuthentication {
            scope: scope(&self.metadata, spec.selector),
            name: self.metadata.name,
            mode: spec.mtls.map_or(MtlsMode::Unset, |m| m.mode.into()),
            port_level: spec
                .port_level_mtls
                .into_iter()
                .map(|(port, m)| (port, m.mode.into()))
                .collect(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationPolicyDoc {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: AuthorizationPolicySpec,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AuthorizationPolicySpec {
    selector: Option<Selector>,
    #[serde(rename = "targetRef")]
    target_ref: Option<serde_yaml::Value>,
    #[serde(rename = "targetRefs")]
    target_refs: Option<serde_yaml::Value>,
    #[serde(default)]
    action: ActionDoc,
    provider: Option<serde_yaml::Value>,
    rules: Option<Vec<RuleDoc>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum ActionDoc {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    #[serde(default)]
    from: Vec<FromDoc>,
    #[serde(default)]
    to: Vec<ToDoc>,
    /// `when` conditions are request attributes (L7).
    when: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FromDoc {
    source: SourceDoc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToDoc {
    operation: OperationDoc,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SourceDoc {
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    not_principals: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    not_namespaces: Vec<String>,
    // L7 or unsupported here:
    request_principals: Option<Vec<String>>,
    not_request_principals: Option<Vec<String>>,
    ip_blocks: Option<Vec<String>>,
    not_ip_blocks: Option<Vec<String>>,
    remote_ip_blocks: Option<Vec<String>>,
    not_remote_ip_blocks: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OperationDoc {
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    not_ports: Vec<String>,
    // L7:
    hosts: Option<Vec<String>>,
    not_hosts: Option<Vec<String>>,
    methods: Option<Vec<String>>,
    not_methods: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    not_paths: Option<Vec<String>>,
}

impl AuthorizationPolicyDoc {
    pub fn into_policy(self) -> Result<AuthorizationPolicy, String> {
        let spec = self.spec;
        if spec.target_ref.is_some() || spec.target_refs.is_some() {
            return Err(
                "targetRef(s) address waypoints, which hawser does not run; use a selector".into(),
            );
        }
        let action = match spec.action {
            ActionDoc::Allow => Action::Allow,
            ActionDoc::Deny => Action::Deny,
            ActionDoc::Audit | ActionDoc::Custom => {
                return Err("only ALLOW and DENY actions are supported".into());
            }
        };
        if spec.provider.is_some() {
            return Err("provider goes with CUSTOM, which is not supported".into());
        }
        let rules = spec
            .rules
            .unwrap_or_default()
            .into_iter()
            .map(rule)
            .collect::<Result<_, _>>()?;
        Ok(AuthorizationPolicy {
            scope: scope(&self.metadata, spec.selector),
            name: self.metadata.name,
            action,
            rules,
            unenforceable: None,
        })
    }
}

/// An AuthorizationPolicy as far as hawser can enforce it: the policy, or — when it
/// cannot be understood — a deny-all for the workloads it selects (its whole namespace
/// when the selector is unreadable or it names targets by `targetRef`). Err only when not
/// even its name can be read.
pub fn authorization_policy(doc: &str) -> Result<AuthorizationPolicy, String> {
    let refused = match serde_yaml::from_str::<AuthorizationPolicyDoc>(doc) {
        Ok(raw) => match raw.into_policy() {
            Ok(policy) => return Ok(policy),
            Err(reason) => reason,
        },
        Err(e) => e.to_string(),
    };
    let lenient: LenientPolicy = serde_yaml::from_str(doc).map_err(|_| refused.clone())?;
    let selector = lenient
        .spec
        .filter(|spec| spec.target_ref.is_none() && spec.target_refs.is_none())
        .and_then(|spec| spec.selector)
        .and_then(|s| serde_yaml::from_value::<Selector>(s).ok());
    Ok(AuthorizationPolicy {
        scope: scope(&lenient.metadata, selector),
        name: lenient.metadata.name,
        action: Action::Deny,
        rules: Vec::new(),
        unenforceable: Some(refused),
    })
}

/// What can still be read of a policy hawser does not understand.
#[derive(Deserialize)]
struct LenientPolicy {
    metadata: Metadata,
    spec: Option<LenientSpec>,
}

#[derive(Deserialize)]
struct LenientSpec {
    selector: Option<serde_yaml::Value>,
    #[serde(rename = "targetRef")]
    target_ref: Option<serde_yaml::Value>,
    #[serde(rename = "targetRefs")]
    target_refs: Option<serde_yaml::Value>,
}

fn rule(doc: RuleDoc) -> Result<Rule, String> {
    let mut l7 = doc.when.is_some();
    let from = doc
        .from
        .into_iter()
        .map(|f| {
            let s = f.source;
            l7 |= s.request_principals.is_some() || s.not_request_principals.is_some();
            l7 |= s.ip_blocks.is_some() || s.not_ip_blocks.is_some();
            l7 |= s.remote_ip_blocks.is_some() || s.not_remote_ip_blocks.is_some();
            Source {
                principals: s.principals,
                not_principals: s.not_principals,
                namespaces: s.namespaces,
                not_namespaces: s.not_namespaces,
            }
        })
        .collect();
    let to = doc
        .to
        .into_iter()
        .map(|t| {
            let o = t.operation;
            l7 |= o.hosts.is_some() || o.not_hosts.is_some() || o.methods.is_some();
            l7 |= o.not_methods.is_some() || o.paths.is_some() || o.not_paths.is_some();
            Ok(Operation {
                ports: ports(&o.ports)?,
                not_ports: ports(&o.not_ports)?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Rule { from, to, l7 })
}

fn ports(list: &[String]) -> Result<Vec<u16>, String> {
    list.iter()
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| format!("port {p:?} is not a number from 0 to 65535"))
        })
        .collect()
}
