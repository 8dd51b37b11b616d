//! The local workload source: a directory of Kubernetes-style YAML documents.
//!
//! ```yaml
//! apiVersion: hawser.dev/v1alpha1
//! kind: Workload
//! metadata: { name: pod-a, namespace: default, labels: { app: a } }
//! spec: { serviceAccount: sa-a, podIP: 10.0.1.2, nodeName: node1, netns: /run/netns/pod-a }
//! ```
//!
//! Every `*.yaml`/`*.yml` file in the directory may hold several documents separated by
//! `---`. A load either succeeds as a whole or fails with every error found, each with its
//! file and line, so that the caller can keep the last good snapshot.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::model::{Registry, Workload};

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

/// The files a load reads, in a stable order.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigErrors> {
    let entries = std::fs::read_dir(dir).map_err(|e| whole_file(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| whole_file(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Hidden entries include Kubernetes' `..data` ConfigMap plumbing.
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if yaml && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every YAML file of `dir` into a registry.
pub fn load_dir(dir: &Path) -> Result<Registry, ConfigErrors> {
    let mut errors = Vec::new();
    let mut found: Vec<(Workload, PathBuf, usize)> = Vec::new();
    for file in config_files(dir)? {
        match std::fs::read_to_string(&file) {
            Ok(text) => match parse_file(&file, &text) {
                Ok(workloads) => {
                    found.extend(workloads.into_iter().map(|(w, l)| (w, file.clone(), l)))
                }
                Err(mut e) => errors.append(&mut e.0),
            },
            Err(e) => errors.push(whole_file(&file, e).0.remove(0)),
        }
    }
    let registry = assemble(found, &mut errors);
    if errors.is_empty() {
        Ok(registry)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Builds the registry, refusing duplicate names and addresses.
fn assemble(found: Vec<(Workload, PathBuf, usize)>, errors: &mut Vec<ConfigError>) -> Registry {
    let mut registry = Registry::default();
    let mut first_seen: BTreeMap<String, String> = BTreeMap::new();
    for (workload, file, line) in found {
        let here = format!("{}:{line}", file.display());
        let mut duplicate = |what: String| {
            errors.push(ConfigError {
                file: file.clone(),
                line: Some(line),
                message: format!("{what} already declared at {}", first_seen[&what]),
            })
        };
        let name_key = format!("workload {}", workload.key());
        let ip_key = format!("pod IP {}", workload.pod_ip);
        if first_seen.contains_key(&name_key) {
            duplicate(name_key);
            continue;
        }
        if first_seen.contains_key(&ip_key) {
            duplicate(ip_key);
            continue;
        }
        first_seen.insert(name_key, here.clone());
        first_seen.insert(ip_key, here);
        registry.workloads.insert(workload.key(), workload);
    }
    registry
}

fn whole_file(path: &Path, e: std::io::Error) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: path.to_path_buf(),
        line: None,
        message: format!("cannot read: {e}"),
    }])
}

/// Parses one file; returns each workload with the line its document starts on.
pub fn parse_file(file: &Path, text: &str) -> Result<Vec<(Workload, usize)>, ConfigErrors> {
    let mut workloads = Vec::new();
    let mut errors = Vec::new();
    for (first_line, doc) in documents(text) {
        let error_at = |line: Option<usize>, message: String| ConfigError {
            file: file.to_path_buf(),
            line: Some(line.unwrap_or(first_line)),
            message,
        };
        match parse_document(doc) {
            Ok(Some(w)) => workloads.push((w, first_line)),
            Ok(None) => {}
            Err(DocError { line, message }) => {
                errors.push(error_at(line.map(|l| l + first_line - 1), message))
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
fn parse_document(doc: &str) -> Result<Option<Workload>, DocError> {
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
    match header.kind.as_deref() {
        Some("Workload") => {
            if header.api_version.as_deref() != Some(API_VERSION) {
                return Err(doc_error(format!(
                    "kind Workload needs apiVersion: {API_VERSION}"
                )));
            }
            let raw: WorkloadDoc = serde_yaml::from_str(doc)?;
            raw.into_workload().map(Some).map_err(doc_error)
        }
        Some(other) => Err(doc_error(format!(
            "unsupported kind {other:?} (supported: Workload)"
        ))),
        None => Err(doc_error("document has no `kind`".into())),
    }
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
    node_name: String,
    netns: PathBuf,
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
        if !spec.netns.is_absolute() {
            return Err(format!(
                "spec.netns must be an absolute path, got {:?}",
                spec.netns
            ));
        }
        Ok(Workload {
            name: metadata.name,
            namespace: metadata.namespace,
            service_account: spec.service_account,
            pod_ip: spec.pod_ip,
            node_name: spec.node_name,
            netns: spec.netns,
            labels: metadata.labels,
        })
    }
}

/// Names end up in SPIFFE IDs and metric labels: hold them to Kubernetes' DNS-1123 rules.
fn check_dns_name(what: &str, value: &str) -> Result<(), String> {
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
