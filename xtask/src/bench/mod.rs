//! `cargo xtask bench`: hawser against plain TCP, as ratios within one run.
//!
//! The same suite (`xtask bench-suite`) runs twice: on this machine (plain TCP, userspace
//! TLS, serial sessions with `--tunnel-reuse`: this kernel has no kTLS), and in the VM of
//! `vm-test` on Debian's stock kernel (the same, userspace TLS forced with `--no-ktls`,
//! and kTLS + splice), smaller because the VM is emulated; HAProxy's pair in both. Each
//! prints its samples as `BENCH` lines; this side collects them and writes the reports.
//! The daemon and the load tool are release builds.

pub mod profile;
mod relays;
mod report;
pub mod suite;
mod tools;
mod topology;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use crate::{cmd, vm};
use report::Run;

/// The whole VM part (boot, every scenario) must finish within this.
const VM_TIMEOUT: Duration = Duration::from_secs(50 * 60);

pub fn run(host_only: bool, profile: bool) -> Result<()> {
    build()?;
    if profile {
        return suite_here(&["--profile"]).map(drop);
    }
    let mut runs = vec![Run::parse("host", &suite_here(&[])?)];
    if !host_only {
        runs.push(in_vm()?);
    }
    let about = format!(
        "{} at {}",
        commit()?,
        cmd::output("date", &["-u", "+%FT%TZ"])?.trim()
    );
    for run in &mut runs {
        run.info.insert(0, ("hawser".into(), about.clone()));
    }
    report::write(&cmd::workspace(), &runs)
}

fn build() -> Result<()> {
    cmd::step("building the daemon and the load tool (release)");
    cmd::cargo(&[
        "build",
        "--release",
        "--package",
        "hawser",
        "--package",
        "hawser-testbed",
        "--bins",
    ])
}

/// The release daemon, by the path the VM sees too.
fn daemon_env() -> Result<String> {
    let bin = cmd::workspace()
        .join("target/release/hawser")
        .canonicalize()?;
    Ok(format!("HAWSER_BIN={}", bin.display()))
}

/// The suite on this machine, in a child process like in the VM, with the release
/// daemon; its output.
fn suite_here(args: &[&str]) -> Result<String> {
    cmd::step("on this machine (userspace TLS)");
    let env = daemon_env()?;
    let (key, value) = env.split_once('=').context("daemon env")?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("bench-suite")
        .args(args)
        .env(key, value)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut output = String::new();
    for line in BufReader::new(child.stdout.take().context("suite stdout")?).lines() {
        let line = line?;
        println!("    {line}");
        output += &line;
        output.push('\n');
    }
    let status = child.wait()?;
    ensure!(status.success(), "the benchmark suite failed ({status})");
    Ok(output)
}

/// The suite in the VM, with kernel TLS.
fn in_vm() -> Result<Run> {
    let suite = format!("{} bench-suite --vm", std::env::current_exe()?.display());
    let script = format!(
        "{} || status=1\n",
        vm::in_host_root(&daemon_env()?, &suite)?
    );
    let log = vm::guest(
        "bench",
        "the benchmarks (plain, userspace TLS, serial sessions, kTLS, HAProxy)",
        &script,
        VM_TIMEOUT,
    )?;
    let serial = std::fs::read_to_string(&log)?;
    let run = Run::parse("vm", &serial);
    ensure!(
        serial.contains("VM-TEST-EXIT=0") && !run.is_empty(),
        "the benchmarks failed in the VM; its serial log is {}",
        log.display()
    );
    Ok(run)
}

/// The commit measured, and whether the tree had changes on top.
fn commit() -> Result<String> {
    let head = cmd::output("git", &["rev-parse", "--short", "HEAD"])?;
    let dirty = !cmd::output("git", &["status", "--porcelain", "--untracked-files=no"])?
        .trim()
        .is_empty();
    Ok(format!(
        "{}{}",
        head.trim(),
        if dirty { " + uncommitted changes" } else { "" }
    ))
}
