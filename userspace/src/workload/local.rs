//! The local workload source: a directory of YAML documents (see `hawser_model::config`),
//! read as a whole: a load either succeeds or fails with every error found, each with its
//! file and line, so that the caller keeps the last good snapshot.

use std::path::{Path, PathBuf};

use hawser_model::{
    Registry,
    config::{ConfigError, ConfigErrors, Document, assemble, parse_file},
};

use crate::credentials::CredentialRoots;

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
pub fn load_dir(
    dir: &Path,
    credential_roots: Option<&CredentialRoots>,
) -> Result<Registry, ConfigErrors> {
    let mut errors = Vec::new();
    let mut found: Vec<(Document, PathBuf, usize)> = Vec::new();
    for file in config_files(dir)? {
        match std::fs::read_to_string(&file) {
            Ok(text) => match parse_file(&file, &text) {
                Ok(docs) => found.extend(docs.into_iter().map(|(d, l)| (d, file.clone(), l))),
                Err(mut e) => errors.append(&mut e.0),
            },
            Err(e) => errors.push(whole_file(&file, e).0.remove(0)),
        }
    }
    if let Some(roots) = credential_roots {
        errors.extend(found.iter().flat_map(|(doc, file, line)| {
            outside_roots(doc, roots).map(|message| ConfigError {
                file: file.clone(),
                line: Some(*line),
                message,
            })
        }));
    }
    let registry = assemble(found, &mut errors);
    if errors.is_empty() {
        Ok(registry)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The certificate files `doc` names that the operator does not let tenants name.
fn outside_roots(doc: &Document, roots: &CredentialRoots) -> impl Iterator<Item = String> {
    let paths: Vec<&PathBuf> = match doc {
        Document::DestinationRule(rule) => rule
            .tls
            .iter()
            .chain(rule.port_tls.values())
            .flat_map(|tls| {
                [
                    &tls.client_certificate,
                    &tls.private_key,
                    &tls.ca_certificates,
                ]
            })
            .flatten()
            .collect(),
        Document::InboundPorts(ports) => ports
            .ports
            .values()
            .filter_map(|port| port.tls.as_ref())
            .flat_map(|tls| {
                [
                    &tls.server_certificate,
                    &tls.private_key,
                    &tls.ca_certificates,
                ]
            })
            .flatten()
            .collect(),
        _ => Vec::new(),
    };
    paths
        .into_iter()
        .filter_map(|path| roots.admits(path).err())
}

fn whole_file(path: &Path, e: std::io::Error) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: path.to_path_buf(),
        line: None,
        message: format!("cannot read: {e}"),
    }])
}

#[cfg(test)]
mod tests;
