//! `cargo xtask`: everything from a fresh Debian machine to a tested hawser.
//!
//! - `bootstrap`: installs what is missing (rust-src for nightly, llvm-22-dev, bpf-linker,
//!   the Debian packages the tests use), and only that;
//! - `build`: bootstrap, then the eBPF object, the daemon and the test tools;
//! - `test`: build, then formatting, lints, unit and end-to-end tests, 30 s of fuzzing per
//!   parser (`fuzz`), and `vm-test`;
//! - `fuzz`: the parsers that take bytes from the network or from tenants, for longer;
//! - `demo`: build (quietly), then two nodes on network namespaces with real curl and nginx:
//!   mTLS across the link, a refusal by policy, the same-node path;
//! - `vm-test`: the end-to-end tests that depend on kernel TLS or on the stock kernel, in a
//!   QEMU VM on Debian's stock kernel;
//! - `bench`: hawser against plain TCP, here and in the VM with kernel TLS (docs/BENCHMARKS.md).

mod bench;
mod bootstrap;
mod cmd;
mod demo;
mod fuzz;
#[cfg(test)]
mod layers;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "hawser's build, test and demo driver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain pieces and Debian packages that are missing.
    Bootstrap,
    /// Bootstrap, then build the eBPF programs, the daemon and the test tools.
    Build,
    /// Build, then run formatting and lint checks, unit and end-to-end tests.
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// Fuzz the parsers that take bytes from the network or from tenants.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 600)]
        secs: u64,
        /// Only this target (preamble, proxy_v2, cni_request, config_yaml).
        target: Option<String>,
    },
    /// Build, then run the local mesh demo (needs root).
    Demo,
    /// Build, then run the tests that depend on kernel TLS in a VM on Debian's stock kernel.
    VmTest,
    /// Benchmarks (needs root): plain TCP, userspace TLS and, in the VM, kernel TLS.
    Bench {
        /// Only this machine (no kernel TLS numbers).
        #[arg(long)]
        host_only: bool,
        /// Instead: where the daemons' CPU goes under each load (`perf record`, this
        /// machine's userspace TLS), summed up in `target/bench/profile-<load>.txt`.
        #[arg(long)]
        profile: bool,
    },
    /// One machine's part of `bench`, as `BENCH` lines (run by `bench`, here and in the VM).
    #[command(hide = true)]
    BenchSuite {
        /// The emulated VM's smaller sizes.
        #[arg(long)]
        vm: bool,
        /// Profile the daemons instead (`bench --profile`).
        #[arg(long)]
        profile: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Bootstrap => bootstrap::run(),
        Command::Build => build(),
        Command::Test { filter } => test(filter),
        Command::Fuzz { secs, target } => {
            bootstrap::run()?;
            fuzz::run(secs, target.as_deref())
        }
        Command::Demo => {
            quiet_build()?;
            demo::run()
        }
        Command::VmTest => {
            build()?;
            vm::run()
        }
        Command::Bench { host_only, profile } => {
            bootstrap::run()?;
            bench::run(host_only, profile)
        }
        Command::BenchSuite { profile: true, .. } => bench::profile::run(),
        Command::BenchSuite { vm, .. } => bench::suite::run(if vm {
            &bench::suite::VM
        } else {
            &bench::suite::HOST
        }),
    }
}

/// The build, its compiler lines shown only when it fails.
fn quiet_build() -> Result<()> {
    bootstrap::run()?;
    cmd::step("building the eBPF programs, the daemon and the test tools (quietly)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    cmd::run_quietly(&cargo, &BUILD, "Finished")
}

const BUILD: [&str; 6] = [
    "build",
    "--package",
    "hawser",
    "--package",
    "hawser-testbed",
    "--bins",
];

fn build() -> Result<()> {
    bootstrap::run()?;
    cmd::step("building the eBPF programs, the daemon and the test tools");
    cmd::cargo(&BUILD)
}

/// Seconds of fuzzing per target in every test run (`cargo xtask fuzz` runs longer).
const FUZZ_SECS: u64 = 30;

fn test(filter: Option<String>) -> Result<()> {
    build()?;
    cmd::step("checking formatting");
    cmd::cargo(&["fmt", "--all", "--", "--check"])?;
    cmd::step("running clippy");
    cmd::cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    cmd::step("running unit and end-to-end tests");
    let mut args = vec!["test", "--no-fail-fast"];
    if let Some(filter) = filter.as_deref() {
        args.push(filter);
    }
    cmd::cargo(&args)?;
    fuzz::run(FUZZ_SECS, None)?;
    cmd::step("running the tests that depend on kernel TLS or the stock kernel in a VM");
    vm::run()
}
