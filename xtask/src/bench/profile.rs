//! `cargo xtask bench --profile`: where the daemons' CPU goes under each load, sampled
//! with `perf record` (both daemons, on-CPU, flat) while the load runs on this machine's
//! userspace-TLS mesh, and new connections again on serial sessions (`--tunnel-reuse`).
//! Summaries go to `target/bench/profile-<load>.txt`.

use std::{
    os::unix::process::ExitStatusExt,
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, ensure};

use super::{
    suite::{self, ECHO_PORT, IPERF_PORT},
    tools::{self, EchoLoad},
    topology::{Scenario, Topology},
};
use crate::cmd;

/// Linux's signal number of SIGINT.
const SIGINT: i32 = 2;
/// Seconds each profiled load runs.
const SECS: u32 = 10;
/// Symbols below this share of the samples are left out of a summary.
const PERCENT_LIMIT: &str = "0.7";

/// A load to profile: runs it, says what it achieved.
type Load<'a> = Box<dyn Fn() -> Result<String> + 'a>;

pub fn run() -> Result<()> {
    let out_dir = cmd::workspace().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    profile(
        Scenario::Userspace,
        &["newconn", "keepalive", "bulk"],
        &out_dir,
    )?;
    profile(Scenario::Serial, &["newconn"], &out_dir)
}

/// Profiles the daemons of `scenario` under each of `wanted` loads.
fn profile(scenario: Scenario, wanted: &[&str], out_dir: &Path) -> Result<()> {
    let t = Topology::new(scenario, &suite::PORTS)?;
    let _echo = suite::serve(
        &t,
        &[&tools::bench_tool(), "echo-server", &ECHO_PORT.to_string()],
        ECHO_PORT,
    )?;
    let _iperf = suite::serve(
        &t,
        &["iperf3", "-s", "-p", &IPERF_PORT.to_string()],
        IPERF_PORT,
    )?;
    let (host, port) = t.address(ECHO_PORT);
    let echo_addr = format!("{host}:{port}");
    let echo = |new_connection| EchoLoad {
        size: 1,
        new_connection,
        rate: 0,
        conns: 4,
        secs: SECS,
    };
    let rps = |new_connection| {
        tools::echo_load(t.client(), &echo_addr, &echo(new_connection))
            .map(|r| format!("{:.0} req/s", r.rps))
    };
    let loads: [(&str, Load); 3] = [
        ("newconn", Box::new(|| rps(true))),
        ("keepalive", Box::new(|| rps(false))),
        (
            "bulk",
            Box::new(|| {
                tools::iperf3(t.client(), &t.address(IPERF_PORT), 1, SECS)
                    .map(|r| format!("{:.2} Gbit/s", r.gbit_per_s))
            }),
        ),
    ];
    for (name, load) in loads.into_iter().filter(|(name, _)| wanted.contains(name)) {
        let name = match scenario {
            Scenario::Userspace => name.to_string(),
            _ => format!("{}-{name}", scenario.name()),
        };
        cmd::step(&format!("profiling the daemons under the {name} load"));
        let data = out_dir.join(format!("perf-{name}.data"));
        let recorder = record(&t.proxy_pids(), &data)?;
        let achieved = load()?;
        stop(recorder)?;
        let summary = format!("{name} load: {achieved}\n{}", report(&data)?);
        let path = out_dir.join(format!("profile-{name}.txt"));
        std::fs::write(&path, &summary)?;
        println!("{summary}\n    (written to {})", path.display());
    }
    Ok(())
}

/// Starts sampling the daemons' threads.
fn record(pids: &[i32], data: &Path) -> Result<Child> {
    ensure!(pids.len() == 2, "both daemons must run");
    let pids: Vec<String> = pids.iter().map(i32::to_string).collect();
    Command::new("perf")
        .args(["record", "-q", "-F", "1999", "-e", "cpu-clock", "-o"])
        .arg(data)
        .args(["-p", &pids.join(",")])
        .stdout(Stdio::null())
        .spawn()
        .context("perf record (Debian's linux-perf)")
}

/// Ends the recording: perf writes its file on SIGINT, then ends by that signal.
fn stop(mut recorder: Child) -> Result<()> {
    cmd::run("kill", &["-INT", &recorder.id().to_string()])?;
    let status = recorder.wait()?;
    ensure!(
        status.success() || status.signal() == Some(SIGINT),
        "perf record failed ({status})"
    );
    Ok(())
}

/// The flat profile: self time per shared object and symbol.
fn report(data: &Path) -> Result<String> {
    let data = data.display().to_string();
    cmd::output(
        "perf",
        &[
            "report",
            "--stdio",
            "-q",
            "-i",
            &data,
            "--sort",
            "dso,sym",
            "--percent-limit",
            PERCENT_LIMIT,
        ],
    )
}
