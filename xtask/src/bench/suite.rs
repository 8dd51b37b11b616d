//! One machine's benchmark (the host, or the VM): every scenario this kernel can run,
//! each measure repeated, every sample printed as a `BENCH` line on standard output.

use std::{io::Write, time::Duration};

use anyhow::Result;
use hawser_testbed::{
    Proc,
    copies::CopyWatch,
    peers::{Nginx, wait_listening},
};

use super::{
    tools::{self, EchoLoad},
    topology::{Scenario, Topology},
};
use crate::cmd::step;

/// How big and how long: the emulated VM runs everything smaller.
pub struct Scale {
    /// Seconds per timed load.
    pub secs: u32,
    pub repeats: usize,
    /// Requests/s of the fixed-rate latency loads on a kept connection, and with a new
    /// connection each (well below every scenario's maximum: above it, latency is queueing).
    pub rate: u32,
    pub new_connection_rate: u32,
    /// Connections of the as-fast-as-possible loads.
    pub conns: u32,
    /// Idle connection counts for the memory measure, and its repeats (each restarts the
    /// daemons and opens every connection anew, which takes a while).
    pub idle: &'static [usize],
    pub idle_repeats: usize,
    pub idle_timeout: Duration,
    /// Whether hawser without a CA runs too (`relay`: the relays' cost without TLS).
    pub relay: bool,
}

pub const HOST: Scale = Scale {
    secs: 10,
    repeats: 3,
    rate: 500,
    new_connection_rate: 10,
    conns: 4,
    idle: &[1_000, 10_000],
    idle_repeats: 2,
    idle_timeout: Duration::from_secs(300),
    relay: true,
};

pub const VM: Scale = Scale {
    secs: 3,
    repeats: 3,
    rate: 20,
    new_connection_rate: 2,
    conns: 4,
    idle: &[100, 400],
    idle_repeats: 2,
    idle_timeout: Duration::from_secs(600),
    // Emulated, the relays' cost beside TLS's is not worth the VM's time.
    relay: false,
};

pub const ECHO_PORT: u16 = 7000;
pub const IPERF_PORT: u16 = 5201;
const HTTP_PORT: u16 = 80;
/// The servers' ports, relayed where the scenario has relays.
pub const PORTS: [u16; 3] = [ECHO_PORT, IPERF_PORT, HTTP_PORT];

pub fn run(scale: &Scale) -> Result<()> {
    machine_facts();
    let fd_limit = hawser_testbed::raise_fd_limit()?;
    info("open files limit", &fd_limit.to_string());
    let spare_fds = usize::try_from(fd_limit.saturating_sub(1000))?;
    let ktls = hawser_testbed::expected_tls_path() == "ktls";
    let mut scenarios = vec![Scenario::Plain, Scenario::Userspace, Scenario::Serial];
    if ktls {
        scenarios.push(Scenario::Kernel);
    }
    if scale.relay {
        scenarios.push(Scenario::Relay);
    }
    scenarios.push(Scenario::Haproxy);
    // Each repeat measures every scenario, so that a drift of the machine (another
    // tenant, a warmer cache) falls on all of them alike.
    for repeat in 0..scale.repeats {
        for &scenario in &scenarios {
            step(&format!(
                "benchmark: {} (repeat {} of {})",
                scenario.name(),
                repeat + 1,
                scale.repeats
            ));
            let mut topology = Topology::new(scenario, &PORTS)?;
            let max_idle = spare_fds / scenario.descriptors_per_connection();
            let idle = repeat < scale.idle_repeats;
            measure(&mut topology, scenario, scale, idle.then_some(max_idle))?;
        }
    }
    Ok(())
}

/// Facts about the machine the suite runs on, for the report.
fn machine_facts() {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|m| m.trim().to_string())
        .unwrap_or_default();
    let loadavg = read("/proc/loadavg");
    let load: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    info("kernel", read("/proc/sys/kernel/osrelease").trim());
    info("cpu", &format!("{cpus} × {model}"));
    info("memory", &memory);
    info("load average at start", &load.join(" "));
    info("tunnel TLS here", hawser_testbed::expected_tls_path());
}

/// Prints a fact about the machine for the report.
fn info(key: &str, value: &str) {
    println!("BENCH-INFO {key}={value}");
}

/// One sample of every measure; of idle memory too, up to `max_idle` connections, if given.
fn measure(
    t: &mut Topology,
    scenario: Scenario,
    scale: &Scale,
    max_idle: Option<usize>,
) -> Result<()> {
    let out = |measure: &str, value: f64| {
        println!("BENCH {} {measure} {value}", scenario.name());
        let _ = std::io::stdout().flush();
    };
    let _echo = serve(
        t,
        &[&tools::bench_tool(), "echo-server", &ECHO_PORT.to_string()],
        ECHO_PORT,
    )?;
    // First, while the daemons' heaps are fresh.
    if let Some(max_idle) = max_idle {
        idle_memory(t, scale, max_idle, &out)?;
    }
    throughput(t, scale, &out)?;
    echo(t, scale, &out)?;
    http(t, scale, &out)?;
    crash_recovery(t, &out)?;
    match scenario {
        Scenario::Plain | Scenario::Haproxy => Ok(()),
        Scenario::Userspace | Scenario::Serial => t.expect_tls_path("userspace"),
        Scenario::Kernel => t.expect_tls_path("ktls"),
        Scenario::Relay => t.expect_tls_path("none"),
    }
}

/// Starts a server in `pod` and waits until it listens on `port`.
pub fn serve(t: &Topology, argv: &[&str], port: u16) -> Result<Proc> {
    let pod = t.server();
    // Their chatter goes to a file, not between the samples on standard output.
    let log = t.bed().dir().join(format!("server-{port}.log"));
    let proc = Proc::spawn_logged(argv, &pod.netns_path, &pod.cgroup, &log)?;
    wait_listening(pod, port, argv[0])?;
    Ok(proc)
}

type Out<'a> = &'a dyn Fn(&str, f64);

/// iperf3, one stream and eight; CPU per GiB from the one-stream run.
fn throughput(t: &Topology, scale: &Scale, out: Out) -> Result<()> {
    let _server = serve(
        t,
        &["iperf3", "-s", "-p", &IPERF_PORT.to_string()],
        IPERF_PORT,
    )?;
    let server = t.address(IPERF_PORT);
    let (proxies_before, busy_before) = (proxies_cpu(t)?, tools::machine_busy_secs()?);
    let one = tools::iperf3(t.client(), &server, 1, scale.secs)?;
    let gib = one.bytes / f64::from(1u32 << 30);
    out("throughput_1_stream_gbps", one.gbit_per_s);
    out(
        "cpu_machine_s_per_gib",
        (tools::machine_busy_secs()? - busy_before) / gib,
    );
    if !t.proxy_pids().is_empty() {
        out(
            "cpu_daemons_s_per_gib",
            (proxies_cpu(t)? - proxies_before) / gib,
        );
    }
    let eight = tools::iperf3(t.client(), &server, 8, scale.secs)?;
    out("throughput_8_streams_gbps", eight.gbit_per_s);
    copies(t, &server, out)
}

/// Seconds of the stream whose copies are counted.
const COPIES_SECS: u32 = 3;

/// What the daemons (or relays) copy through userspace per byte one stream moves: each
/// byte once in and once out of each relay on the userspace path, none with kernel TLS
/// and `splice`. strace counts the copying system calls; it slows the relays it watches,
/// so this load is short and timed by nothing else.
fn copies(t: &Topology, server: &(String, u16), out: Out) -> Result<()> {
    let pids = t.proxy_pids();
    if pids.is_empty() {
        return Ok(());
    }
    let dir = t.bed().dir();
    let watches: Vec<CopyWatch> = pids
        .iter()
        .map(|&pid| CopyWatch::attach(pid, dir))
        .collect::<Result<_>>()?;
    let moved = tools::iperf3(t.client(), server, 1, COPIES_SECS)?;
    let copied: u64 = watches
        .into_iter()
        .map(|w| w.finish().map(|c| c.read + c.written))
        .sum::<Result<_>>()?;
    out("copied_daemons_bytes_per_byte", copied as f64 / moved.bytes);
    Ok(())
}

/// CPU seconds the daemons (or relays) used so far.
fn proxies_cpu(t: &Topology) -> Result<f64> {
    t.proxy_pids().into_iter().map(tools::cpu_secs).sum()
}

/// Echo request/response: 1 byte and 4 KiB, one kept connection or a new one per
/// request; latency at a fixed rate from one connection, then the maximum rate.
/// request/response: 1 byte and 4 KiB, one kept connection or a new one per
/// request; latency at a fixed rate from one connection, then the maximum rate — and for
/// 1-byte new connections, the daemons' (or relays') CPU per 1000 of them.
fn echo(t: &Topology, scale: &Scale, out: Out) -> Result<()> {
    let (host, port) = t.address(ECHO_PORT);
    let addr = format!("{host}:{port}");
    for (size, size_name) in [(1, "1B"), (4096, "4KiB")] {
        for new_connection in [false, true] {
            let mode = if new_connection {
                "newconn"
            } else {
                "keepalive"
            };
            let label = format!("echo_{size_name}_{mode}");
            let load = |rate, conns| EchoLoad {
                size,
                new_connection,
                rate,
                conns,
                secs: scale.secs,
            };
            let rate = if new_connection {
                scale.new_connection_rate
            } else {
                scale.rate
            };
            let fixed = tools::echo_load(t.client(), &addr, &load(rate, 1))?;
            out(&format!("{label}_fixed_p50_us"), fixed.p50);
            out(&format!("{label}_fixed_p90_us"), fixed.p90);
            out(&format!("{label}_fixed_p99_us"), fixed.p99);
            let cpu_before = proxies_cpu(t)?;
            let max = tools::echo_load(t.client(), &addr, &load(0, scale.conns))?;
            out(&format!("{label}_max_rps"), max.rps);
            let thousands = max.rps * f64::from(scale.secs) / 1000.0;
            if new_connection && size == 1 && !t.proxy_pids().is_empty() && thousands > 0.0 {
                out(
                    "cpu_daemons_s_per_1000_newconn",
                    (proxies_cpu(t)? - cpu_before) / thousands,
                );
            }
        }
    }
    Ok(())
}

/// wrk against nginx: keep-alive, and a new connection per request.
fn http(t: &Topology, scale: &Scale, out: Out) -> Result<()> {
    let _nginx = Nginx::start(t.bed(), t.server())?;
    let (host, port) = t.address(HTTP_PORT);
    let url = format!("http://{host}:{port}/hello.txt");
    for (close, mode) in [(false, "keepalive"), (true, "close")] {
        let r = tools::wrk(t.client(), &url, scale.conns, scale.secs, close)?;
        out(&format!("http_{mode}_max_rps"), r.rps);
        out(&format!("http_{mode}_max_p50_us"), r.p50);
        out(&format!("http_{mode}_max_p99_us"), r.p99);
    }
    Ok(())
}

/// How long new connections fail when the client node's daemon is killed (SIGKILL, a
/// crash or an OOM kill) and started again at once: the longest stretch of failed 1-byte
/// exchanges from a to b, probed every 5 ms (they fail closed, see the end-to-end tests).
fn crash_recovery(t: &mut Topology, out: Out) -> Result<()> {
    let Topology::Mesh(m) = t else {
        return Ok(());
    };
    let (client, addr) = (m.a.clone(), format!("{}:{ECHO_PORT}", m.b.ip));
    let probing = std::thread::spawn(move || tools::probe(&client, &addr, 8000));
    std::thread::sleep(Duration::from_secs(1));
    m.d1.kill();
    m.d1.restart()?;
    let refused = probing
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))??;
    out("restart_kill9_refused_ms", refused);
    Ok(())
}

/// RSS growth of the daemons (or relays) per established idle connection, client side
/// first, at each count (at most `max_idle`, what the open-files limit allows).
fn idle_memory(t: &mut Topology, scale: &Scale, max_idle: usize, out: Out) -> Result<()> {
    if t.proxy_pids().is_empty() {
        return Ok(());
    }
    let (host, port) = t.address(ECHO_PORT);
    let addr = format!("{host}:{port}");
    for n in scale.idle.iter().map(|&n| n.min(max_idle)) {
        t.restart_proxies()?;
        let pids = t.proxy_pids();
        let before: Vec<f64> = pids
            .iter()
            .map(|&p| tools::rss_kib(p))
            .collect::<Result<_>>()?;
        let log = t.bed().dir().join(format!("hold-{n}.log"));
        let held = match tools::hold(t.client(), &addr, n, log, scale.idle_timeout) {
            Ok(held) => held,
            Err(e) => {
                // Recorded, not fatal: the other measures still stand.
                info(&format!("idle {n} failed"), &e.to_string());
                daemon_errors(t);
                continue;
            }
        };
        // Let buffers of the handshakes go before reading.
        std::thread::sleep(Duration::from_secs(2));
        for (node, (pid, before)) in pids.iter().zip(before).enumerate() {
            let grown = tools::rss_kib(*pid)? - before;
            out(
                &format!("idle_{n}_conns_node{}_kib_per_conn", node + 1),
                grown / n as f64,
            );
        }
        drop(held);
    }
    Ok(())
}

/// The daemons' last complaints, to explain a failed measure.
fn daemon_errors(t: &Topology) {
    for d in t.daemons() {
        let log = d.log();
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN") || l.contains("refused"))
            .collect();
        for line in errors.iter().rev().take(5).rev() {
            eprintln!("    daemon: {line}");
        }
    }
}
