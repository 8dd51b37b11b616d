//! Reading hawser's configuration documents: Kubernetes-style YAML, the kinds hawser
//! declares (`Workload`, `InboundPorts`) and Istio's (`PeerAuthentication`,
//! `AuthorizationPolicy`, `ServiceEntry`, `DestinationRule`), into a `Registry`.
//!
//! ```yaml
//! apiVersion: hawser.dev/v1alpha1
//! kind: Workload
//! metadata: { name: pod-a, namespace: default, labels: { app: a } }
//! spec: { serviceAccount: sa-a, podIP: 10.0.1.2, nodeName: node1, netns: /run/netns/pod-a }
//! ```
//!
//! A text may hold several documents separated by `---`. Every error carries its file and
//! line, so that a caller can refuse a load as a whole and keep the last good snapshot.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    egress::{
        self, DestinationRule, ServiceEntry,
        istio::{DestinationRuleDoc, ServiceEntryDoc},
    },
    policy::{
        AuthorizationPolicy, PeerAuthentication,
        istio::{self, API_VERSIONS, PeerAuthenticationDoc},
    },
    ports::{InboundPorts, InboundPortsDoc},
    registry::Registry,
    workload::Workload,
};

/// One YAML document of the configuration directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    Workload(Workload),
    PeerAuthentication(PeerAuthentication),
    AuthorizationPolicy(AuthorizationPolicy),
    ServiceEntry(ServiceEntry),
    DestinationRule(DestinationRule),
    InboundPorts(InboundPorts),
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; `None` when the problem is the file as a whole.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// All errors of one load attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

/// The registry one file's text declares (for tests and tools).
pub fn parse_registry(file: &Path, text: &str) -> Result<Registry, ConfigErrors> {
    let found = parse_file(file, text)?
        .into_iter()
        .map(|(doc, line)| (doc, file.to_path_buf(), line))
        .collect();
    let mut errors = Vec::new();
    let registry = assemble(found, &mut errors);
    match errors.is_empty() {
        true => Ok(registry),
        false => Err(ConfigErrors(errors)),
    }
}

/// One object of another source (the Kubernetes API), parsed as a document of this
/// directory would be.
pub fn parse_object(object: &serde_json::Value) -> Result<Option<Document>, String> {
    let text = serde_yaml::to_string(object).map_err(|e| e.to_string())?;
    parse_document(&text).map_err(|e| e.message)
}

/// Builds the registry, refusing duplicate names and addresses.
pub fn assemble(found: Vec<(Document, PathBuf, usize)>, errors: &mut Vec<ConfigError>) -> Registry {
    let mut registry = Registry::default();
    let mut first_seen: BTreeMap<String, String> = BTreeMap::new();
    // Where each ServiceEntry kept so far was declared.
    let mut entries_at: Vec<String> = Vec::new();
    for (doc, file, line) in found {
        let keys = match &doc {
            Document::Workload(w) => std::iter::once(format!("workload {}", w.key()))
                .chain(w.ips.iter().map(|ip| format!("pod IP {ip}")))
                .collect(),
            Document::PeerAuthentication(p) => vec![format!(
                "PeerAuthentication {}/{}",
                p.scope.namespace, p.name
            )],
            Document::AuthorizationPolicy(p) => vec![format!(
                "AuthorizationPolicy {}/{}",
                p.scope.namespace, p.name
            )],
            Document::ServiceEntry(e) => vec![format!("ServiceEntry {}/{}", e.namespace, e.name)],
            Document::DestinationRule(r) => {
                vec![format!("DestinationRule {}/{}", r.namespace, r.name)]
            }
            Document::InboundPorts(p) => {
                vec![format!("InboundPorts {}/{}", p.scope.namespace, p.name)]
            }
        };
        if let Some(taken) = keys.iter().find(|k| first_seen.contains_key(*k)) {
            errors.push(ConfigError {
                file: file.clone(),
                line: Some(line),
                message: format!("{taken} already declared at {}", first_seen[taken]),
            });
            continue;
        }
        if let Document::ServiceEntry(e) = &doc
            && let Some(taken) = overlap(e, &registry.egress.service_entries, &entries_at)
        {
            errors.push(ConfigError {
                file: file.clone(),
                line: Some(line),
                message: taken,
            });
            continue;
        }
        for key in keys {
            first_seen.insert(key, format!("{}:{line}", file.display()));
        }
        match doc {
            Document::Workload(w) => {
                registry.workloads.insert(w.key(), w);
            }
            Document::PeerAuthentication(p) => registry.policies.peer_authentications.push(p),
            Document::AuthorizationPolicy(p) => {
                if let Some(why) = &p.unenforceable {
                    let name = format!("{}/{}", p.scope.namespace, p.name);
                    tracing::warn!(at = %format!("{}:{line}", file.display()), policy = %name,
                        "AuthorizationPolicy cannot be enforced ({why}): the workloads it selects deny every connection");
                }
                registry.policies.authorization_policies.push(p)
            }
            Document::ServiceEntry(e) => {
                entries_at.push(format!("{}:{line}", file.display()));
                registry.egress.service_entries.push(e)
            }
            Document::DestinationRule(r) => registry.egress.destination_rules.push(r),
            Document::InboundPorts(p) => registry.ports.push(p),
        }
    }
    registry
}

/// Why `entry` cannot join `kept` (declared at `kept_at`): an address and port one of them
/// declares already.
fn overlap(entry: &ServiceEntry, kept: &[ServiceEntry], kept_at: &[String]) -> Option<String> {
    kept.iter().zip(kept_at).find_map(|(other, at)| {
        let (net, port) = entry.overlap(other)?;
        Some(format!(
            "ServiceEntry {}/{} declares {net} port {port}, as ServiceEntry {}/{} at {at} does: \
             at L4 nothing tells the two apart (give each its own address or port)",
            entry.namespace, entry.name, other.namespace, other.name
        ))
    })
}

/// Parses one file; returns each workload with the line its document starts on.
pub fn parse_file(file: &Path, text: &str) -> Result<Vec<(Document, usize)>, ConfigErrors> {
    let mut workloads = Vec::new();
    let mut errors = Vec::new();
    for (first_line, doc) in documents(text) {
        let error_at = |line: Option<usize>, message: String| ConfigError {
            file: file.to_path_buf(),
            line: Some(line.unwrap_or(first_line)),
            message,
        };
        match parse_document(doc) {
            Ok(Some(d)) => workloads.push((d, first_line)),
            Ok(None) => {}
            Err(DocError { line, message }) => {
                // The YAML parser places "unexpected end" one line past the document.
                let last_line = first_line + doc.lines().count().max(1) - 1;
                let line = line.map(|l| (l + first_line - 1).min(last_line));
                errors.push(error_at(line, message))
            }
        }
    }
    if errors.is_empty() {
        Ok(workloads)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Splits a multi-document file at `---` lines; yields (1-based first line, text).
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            docs.push((start_line, &text[start_byte..offset]));
            start_byte = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start_byte..]));
    docs
}

struct DocError {
    /// Line within the document, 1-based.
    line: Option<usize>,
    message: String,
}

impl From<serde_yaml::Error> for DocError {
    fn from(e: serde_yaml::Error) -> Self {
        DocError {
            line: e.location().map(|l| l.line()),
            // serde_yaml appends "at line X column Y"; we report the file's own line instead.
            message: e
                .to_string()
                .split(" at line ")
                .next()
                .unwrap_or("")
                .to_string(),
        }
    }
}

#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
}

const API_VERSION: &str = "hawser.dev/v1alpha1";

/// One document: `Ok(None)` for an empty one.
fn parse_document(doc: &str) -> Result<Option<Document>, DocError> {
    if doc
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(None);
    }
    let header: Header = serde_yaml::from_str(doc)?;
    let doc_error = |message: String| DocError {
        line: Some(1),
        message,
    };
    let kind = header
        .kind
        .as_deref()
        .ok_or_else(|| doc_error("document has no `kind`".into()))?;
    let version = header.api_version.as_deref().unwrap_or("");
    let check_version = |allowed: &[&str]| {
        if allowed.contains(&version) {
            Ok(())
        } else {
            Err(doc_error(format!(
                "kind {kind} needs apiVersion: {}",
                allowed.join(" or ")
            )))
        }
    };
    let document = match kind {
        "Workload" => {
            check_version(&[API_VERSION])?;
            let raw: WorkloadDoc = serde_yaml::from_str(doc)?;
            Document::Workload(raw.into_workload().map_err(doc_error)?)
        }
        "PeerAuthentication" => {
            check_version(API_VERSIONS)?;
            let raw: PeerAuthenticationDoc = serde_yaml::from_str(doc)?;
            Document::PeerAuthentication(raw.into_policy().map_err(doc_error)?)
        }
        "AuthorizationPolicy" => {
            check_version(API_VERSIONS)?;
            let policy = istio::authorization_policy(doc).map_err(doc_error)?;
            Document::AuthorizationPolicy(policy)
        }
        "ServiceEntry" => {
            check_version(egress::istio::API_VERSIONS)?;
            let raw: ServiceEntryDoc = serde_yaml::from_str(doc)?;
            Document::ServiceEntry(raw.into_service_entry().map_err(doc_error)?)
        }
        "DestinationRule" => {
            check_version(egress::istio::API_VERSIONS)?;
            let raw: DestinationRuleDoc = serde_yaml::from_str(doc)?;
            Document::DestinationRule(raw.into_destination_rule().map_err(doc_error)?)
        }
        "InboundPorts" => {
            check_version(&[API_VERSION])?;
            let raw: InboundPortsDoc = serde_yaml::from_str(doc)?;
            Document::InboundPorts(raw.into_inbound_ports().map_err(doc_error)?)
        }
        other => {
            return Err(doc_error(format!(
                "unsupported kind {other:?} (supported: Workload, InboundPorts, PeerAuthentication, AuthorizationPolicy, ServiceEntry, DestinationRule)"
            )));
        }
    };
    Ok(Some(document))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadDoc {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    metadata: Metadata,
    spec: WorkloadSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[serde(default = "default_name")]
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WorkloadSpec {
    #[serde(default = "default_name")]
    service_account: String,
    #[serde(rename = "podIP")]
    pod_ip: IpAddr,
    /// More addresses (a dual-stack pod's other family), as Kubernetes' `podIPs`.
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<IpAddr>,
    node_name: String,
    /// Omitted: the CNI plugin hands it over when the pod's sandbox is created.
    netns: Option<PathBuf>,
    /// A workload of a federated mesh: the trust domain its identity belongs to.
    trust_domain: Option<String>,
}

fn default_name() -> String {
    "default".into()
}

impl WorkloadDoc {
    fn into_workload(self) -> Result<Workload, String> {
        let Self { metadata, spec, .. } = self;
        for (what, value) in [
            ("metadata.name", &metadata.name),
            ("metadata.namespace", &metadata.namespace),
            ("spec.serviceAccount", &spec.service_account),
            ("spec.nodeName", &spec.node_name),
        ] {
            check_dns_name(what, value)?;
        }
        if let Some(td) = &spec.trust_domain {
            check_dns_name("spec.trustDomain", td)?;
        }
        if let Some(netns) = spec.netns.as_ref().filter(|n| !n.is_absolute()) {
            return Err(format!(
                "spec.netns must be an absolute path, got {netns:?}"
            ));
        }
        Ok(Workload {
            name: metadata.name,
            namespace: metadata.namespace,
            service_account: spec.service_account,
            ips: std::iter::once(spec.pod_ip)
                .chain(spec.pod_ips.into_iter().filter(|ip| *ip != spec.pod_ip))
                .collect(),
            node_name: spec.node_name,
            netns: spec.netns,
            labels: metadata.labels,
            trust_domain: spec.trust_domain,
        })
    }
}

/// Names end up in SPIFFE IDs and metric labels: hold them to Kubernetes' DNS-1123 rules.
pub fn check_dns_name(what: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {value:?} is not a valid name (lowercase letters, digits, '-' and '.')"
        ))
    }
}

#[cfg(test)]
mod tests;
