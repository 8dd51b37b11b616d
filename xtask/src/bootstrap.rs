//! Installs what a fresh Debian machine lacks, idempotently: each piece is checked first
//! and installed only when missing.

use anyhow::{Result, bail};

use crate::cmd::{self, output, step, succeeds};

/// Debian packages: LLVM for bpf-linker, and the real peers and tools the tests use.
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "curl",
    "nginx-light",
    "socat",
    "openssl",
    "tcpdump",
    // Decodes PROXY protocol headers in captures (the inbound ports test).
    "tshark",
    // A name server for `resolution: DNS` ServiceEntries (the egress test).
    "dnsmasq-base",
    // Debian's /usr/bin/python3: the hostile and reading clients of the capture and
    // tunnel tests (a socket mark set before connect, an idle flood, a reset seen).
    "python3",
    // Counts what the daemons copy through userspace (the tunnel test under kernel TLS).
    "strace",
    // Benchmarks (cargo xtask bench) and their profiles.
    "iperf3",
    "haproxy",
    "wrk",
    "linux-perf",
    // The kernel-TLS VM (cargo xtask vm-test).
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    // libFuzzer, which the fuzz targets link, is C++.
    "g++",
];

pub fn run() -> Result<()> {
    debian_packages()?;
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    kubernetes_validate()
}

/// The offline Kubernetes manifest validator (tests/tests/deploy.rs), with the Kubernetes
/// OpenAPI schemas inside. Keep in step with VALIDATOR_VERSION there.
const KUBERNETES_VALIDATE: &str = "1.37.0";

fn kubernetes_validate() -> Result<()> {
    if output("python3", &["-m", "kubernetes_validate", "--version"])
        .is_ok_and(|v| v.trim() == KUBERNETES_VALIDATE)
    {
        return Ok(());
    }
    let pkg = format!("kubernetes-validate=={KUBERNETES_VALIDATE}");
    if !is_root() {
        bail!("{pkg} is missing: run as root, or `python3 -m pip install {pkg}`");
    }
    step(&format!("installing {pkg} (pip)"));
    // Debian's python3 refuses pip installs outside a venv (PEP 668) unless told to.
    cmd::run(
        "env",
        &[
            "PIP_BREAK_SYSTEM_PACKAGES=1",
            "python3",
            "-m",
            "pip",
            "install",
            "--quiet",
            &pkg,
        ],
    )
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            !output("dpkg-query", &["-W", "-f=${Status}", pkg])
                .is_ok_and(|s| s == "install ok installed")
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}: run as root, or `apt-get install {}`",
            missing.join(" ")
        );
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    cmd::run("apt-get", &["update", "-q"])?;
    // No debconf questions (tshark's package asks one) on a machine nobody watches.
    let mut args = vec![
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
    ];
    args.extend(&missing);
    cmd::run("env", &args)
}

fn rust_src() -> Result<()> {
    if !succeeds("rustup", &["run", "nightly", "rustc", "--version"]) {
        bail!(
            "the nightly Rust toolchain is missing (needed to build eBPF): rustup toolchain install nightly"
        );
    }
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    step("adding rust-src to the nightly toolchain");
    cmd::run(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )
}

fn bpf_linker() -> Result<()> {
    if succeeds("bpf-linker", &["--version"]) {
        return Ok(());
    }
    step("building bpf-linker against LLVM 22 (about 4 minutes on 2 cores)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .status()?;
    if !status.success() {
        bail!("cargo install bpf-linker failed ({status})");
    }
    Ok(())
}

/// `cargo fuzz`, which builds and runs the fuzz targets (fuzz/).
fn cargo_fuzz() -> Result<()> {
    if succeeds("cargo", &["fuzz", "--version"]) {
        return Ok(());
    }
    step("installing cargo-fuzz");
    cmd::cargo(&["install", "cargo-fuzz", "--locked"])
}

fn is_root() -> bool {
    output("id", &["-u"]).is_ok_and(|uid| uid.trim() == "0")
}
