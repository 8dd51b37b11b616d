//! The load generators (iperf3, wrk, hawser-bench) run in a pod, what they print, and
//! the kernel's counters of the daemons (/proc).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hawser_testbed::{Pod, Proc, peers::wait_until};

use crate::cmd;

/// The load tool built with the release daemon.
pub fn bench_tool() -> String {
    cmd::workspace()
        .join("target/release/hawser-bench")
        .display()
        .to_string()
}

/// Runs `argv` in `pod` to completion and returns its standard output.
pub fn run_in(pod: &Pod, argv: &[&str]) -> Result<String> {
    let out = pod.run(argv)?;
    if !out.status.success() {
        bail!(
            "{} failed in pod {}: {}{}",
            argv.join(" "),
            pod.name,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// iperf3's result: bytes the receiver got and its rate.
pub struct Transfer {
    pub bytes: f64,
    pub gbit_per_s: f64,
}

/// `iperf3 -c` from `pod` with `streams` parallel streams for `secs`.
pub fn iperf3(pod: &Pod, server: &(String, u16), streams: u32, secs: u32) -> Result<Transfer> {
    let (port, streams, secs) = (server.1.to_string(), streams.to_string(), secs.to_string());
    let json = run_in(
        pod,
        &[
            "iperf3", "-c", &server.0, "-p", &port, "-P", &streams, "-t", &secs, "-J",
        ],
    )?;
    // The receiver's totals: the last "sum_received" object of the report.
    let received = json
        .rfind("\"sum_received\"")
        .map(|at| &json[at..])
        .with_context(|| {
            // Its JSON still says why (a refused connection, a server gone).
            let error = json
                .find("\"error\":")
                .map_or("", |at| json[at..].lines().next().unwrap_or(""));
            format!("iperf3 reported no sum_received {error}")
        })?;
    Ok(Transfer {
        bytes: number_after(received, "\"bytes\":").context("iperf3 bytes")?,
        gbit_per_s: number_after(received, "\"bits_per_second\":").context("iperf3 rate")? / 1e9,
    })
}

/// The number following the first `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = text[text.find(key)? + key.len()..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// What a request/response load measured: requests/s and latency percentiles (µs).
pub struct Latency {
    pub rps: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// One request/response load of `hawser-bench rr`.
pub struct EchoLoad {
    pub size: usize,
    /// A new connection per request, or one kept for all.
    pub new_connection: bool,
    /// Requests/s over all connections; 0: as fast as they go.
    pub rate: u32,
    pub conns: u32,
    pub secs: u32,
}

/// `hawser-bench rr` from `pod` against the echo server at `addr`.
pub fn echo_load(pod: &Pod, addr: &str, load: &EchoLoad) -> Result<Latency> {
    let mode = if load.new_connection {
        "newconn"
    } else {
        "keepalive"
    };
    let (size, rate, conns, millis) = (
        load.size.to_string(),
        load.rate.to_string(),
        load.conns.to_string(),
        (load.secs * 1000).to_string(),
    );
    let line = run_in(
        pod,
        &[
            &bench_tool(),
            "rr",
            addr,
            &size,
            mode,
            &rate,
            &conns,
            &millis,
        ],
    )?;
    let field = |key: &str| number_after(&line, &format!("{key}=")).context(line.clone());
    let errors = field("errors")?;
    if errors > 0.0 {
        eprintln!("    note: {errors} failed requests in {line}");
    }
    Ok(Latency {
        rps: field("rps")?,
        p50: field("p50_us")?,
        p90: field("p90_us")?,
        p99: field("p99_us")?,
    })
}

/// `wrk` from `pod` against `url` with `conns` connections; `close` asks for a new
/// connection per request.
pub fn wrk(pod: &Pod, url: &str, conns: u32, secs: u32, close: bool) -> Result<Latency> {
    let (conns, secs) = (conns.to_string(), format!("{secs}s"));
    let mut argv = vec!["wrk", "-t1", "-c", &conns, "-d", &secs, "--latency"];
    if close {
        argv.extend(["-H", "Connection: close"]);
    }
    argv.push(url);
    let out = run_in(pod, &argv)?;
    let percentile = |p: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(str::trim))
            .and_then(wrk_micros)
            .with_context(|| format!("wrk printed no {p} latency:\n{out}"))
    };
    Ok(Latency {
        rps: number_after(&out, "Requests/sec:").with_context(|| format!("wrk:\n{out}"))?,
        p50: percentile("50%")?,
        p90: percentile("90%")?,
        p99: percentile("99%")?,
    })
}

/// wrk's durations (`812.00us`, `1.20ms`, `2.01s`) in µs.
fn wrk_micros(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let value: f64 = text[..split].parse().ok()?;
    let scale = match &text[split..] {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        _ => return None,
    };
    Some(value * scale)
}

/// `hawser-bench hold` in `pod`: `n` idle connections to `addr`, open once this returns,
/// closed when the guard drops.
pub fn hold(pod: &Pod, addr: &str, n: usize, log: PathBuf, timeout: Duration) -> Result<Proc> {
    let n_text = n.to_string();
    let mut proc = Proc::spawn_logged(
        &[&bench_tool(), "hold", addr, &n_text],
        &pod.netns_path,
        &pod.cgroup,
        &log,
    )?;
    let started = Instant::now();
    let done = format!("held {n}");
    let mut exited = None;
    wait_until(timeout, &format!("{n} connections to open"), || {
        exited = proc.child.try_wait().ok().flatten();
        exited.is_some() || std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&done))
    })?;
    if let Some(status) = exited {
        bail!(
            "hawser-bench hold {n} exited ({status}): {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    eprintln!(
        "    {n} connections open after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(proc)
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: i32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// /proc's clock ticks per second (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// CPU seconds (user + system) a process has used.
pub fn cpu_secs(pid: i32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): utime and stime are the
    // 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / TICKS)
}

/// CPU seconds the whole machine has been busy (all CPUs, not idle or waiting).
pub fn machine_busy_secs() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu: Vec<f64> = stat
        .lines()
        .next()
        .context("empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| cpu.get(i)).sum();
    Ok(busy / TICKS)
}

/// `hawser-bench probe` from `pod` to the echo server at `addr` for `millis`: the longest
/// stretch in which exchanges failed, in ms.
pub fn probe(pod: &Pod, addr: &str, millis: u64) -> Result<f64> {
    let line = run_in(pod, &[&bench_tool(), "probe", addr, &millis.to_string()])?;
    let field = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("longest_refused_ms="));
    match field.map(str::parse) {
        Some(Ok(ms)) => Ok(ms),
        _ => bail!("hawser-bench probe wrote {line:?}"),
    }
}
