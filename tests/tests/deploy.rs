//! The Kubernetes manifests in `deploy/` (and `deploy/optional/`) validate against
//! Kubernetes' OpenAPI schemas, offline and strictly (an unknown field is an error), with
//! the pinned `kubernetes-validate` that `cargo xtask bootstrap` installs. Needs no
//! cluster and no root.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// The validator release `cargo xtask bootstrap` pins; it carries the schemas.
const VALIDATOR_VERSION: &str = "1.37.0";
/// The oldest Kubernetes the manifests are for (`securityContext.appArmorProfile` is 1.30+).
const KUBERNETES_VERSION: &str = "1.31.0";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every `*.yaml`/`*.yml` under `dir`, sorted.
fn manifests(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(manifests(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Runs the validator on `files`: whether it accepted them, and what it said.
fn validate(files: &[PathBuf]) -> (bool, String) {
    let version = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .output();
    let installed = version.as_ref().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == VALIDATOR_VERSION
    });
    assert!(
        installed,
        "kubernetes-validate {VALIDATOR_VERSION} is not installed for python3 \
         (found: {version:?}): run `cargo xtask bootstrap` as root"
    );
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(["--kubernetes-version", KUBERNETES_VERSION])
        .args(files)
        .output()
        .expect("run python3 -m kubernetes_validate");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn every_manifest_validates_strictly() {
    let files = manifests(&deploy_dir());
    assert!(files.len() >= 6, "too few manifests found: {files:?}");
    let (ok, said) = validate(&files);
    assert!(ok, "the validator refused deploy/:\n{said}");
    // A warning means a document went unchecked (e.g. a kind without a schema).
    assert!(
        !said.contains("WARN"),
        "not everything was checked:\n{said}"
    );
    for file in &files {
        assert!(
            said.contains(&format!("{} passed", file.display())),
            "{} was not validated:\n{said}",
            file.display()
        );
    }
}

#[test]
fn a_misspelled_field_is_refused() {
    let daemonset = fs::read_to_string(deploy_dir().join("40-node.yaml")).unwrap();
    let broken = daemonset.replace("hostNetwork:", "hostNetwrok:");
    assert_ne!(broken, daemonset, "40-node.yaml has no hostNetwork field");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("40-node.yaml");
    fs::write(&file, broken).unwrap();

    let (ok, said) = validate(&[file]);
    assert!(!ok, "the validator accepted a misspelled field:\n{said}");
    assert!(said.contains("'hostNetwrok' was unexpected"), "{said}");
}
