//! hawser-bench: the load tool of `cargo xtask bench`.
//!
//! - `hawser-bench echo-server PORT`: echoes every connection (a thread each, small stacks:
//!   it must hold 10k idle connections cheaply).
//! - `hawser-bench rr ADDR SIZE keepalive|newconn RATE CONNS MILLIS`: SIZE-byte
//!   request/response against an echo server from CONNS connections for MILLIS ms. RATE
//!   requests/s in total (open loop: latency counts from the scheduled send time, so a
//!   slow reply delays the next one without hiding it), or 0 for as fast as possible.
//!   Prints `requests=N errors=E rps=R p50_us=.. p90_us=.. p99_us=..`.
//! - `hawser-bench hold ADDR N`: opens N connections, echoes a byte on each so every one
//!   is established end to end, prints `held N`, then sleeps until killed.
//! - `hawser-bench probe ADDR MILLIS`: a new connection with a 1-byte echo every 5 ms (1 s
//!   timeout each) for MILLIS ms; prints `probes=N failures=F longest_refused_ms=L`, the
//!   longest stretch from a failed exchange to the next one that succeeded.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args[..] {
        ["echo-server", port] => echo_server(parse(port)),
        ["rr", addr, size, mode, rate, conns, millis] => rr(&Load {
            addr: addr.to_string(),
            size: parse(size),
            new_connection: mode == "newconn",
            rate: parse(rate),
            conns: parse(conns),
            duration: Duration::from_millis(parse(millis)),
        }),
        ["hold", addr, n] => hold(addr, parse(n)),
        ["probe", addr, millis] => probe(addr, Duration::from_millis(parse(millis))),
        _ => Err(
            "usage: hawser-bench echo-server PORT | rr ADDR SIZE keepalive|newconn RATE CONNS MILLIS | hold ADDR N | probe ADDR MILLIS"
                .into(),
        ),
    };
    if let Err(e) = result {
        eprintln!("hawser-bench: {e}");
        std::process::exit(1);
    }
}

type Result<T> = std::result::Result<T, String>;

fn parse<T: std::str::FromStr>(s: &str) -> T {
    s.parse().unwrap_or_else(|_| {
        eprintln!("hawser-bench: not a number: {s}");
        std::process::exit(2)
    })
}

fn echo_server(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| e.to_string())?;
    for stream in listener.incoming().flatten() {
        let spawned = thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || echo(stream));
        if let Err(e) = spawned {
            eprintln!("hawser-bench: echo thread: {e}");
        }
    }
    Ok(())
}

fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

struct Load {
    addr: String,
    size: usize,
    new_connection: bool,
    /// Requests per second over all connections; 0: closed loop, as fast as possible.
    rate: u32,
    conns: u32,
    duration: Duration,
}

/// What one connection's worker measured.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
}

fn rr(load: &Load) -> Result<()> {
    let start = Instant::now() + Duration::from_millis(50);
    let tallies: Vec<Tally> = thread::scope(|s| {
        let workers: Vec<_> = (0..load.conns)
            .map(|i| s.spawn(move || worker(load, start, i)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let mut latencies: Vec<u32> = tallies.into_iter().flat_map(|t| t.latencies_us).collect();
    if latencies.is_empty() {
        return Err(format!("no request succeeded ({errors} errors)"));
    }
    latencies.sort_unstable();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    println!(
        "requests={} errors={errors} rps={:.1} p50_us={} p90_us={} p99_us={}",
        latencies.len(),
        latencies.len() as f64 / load.duration.as_secs_f64(),
        pct(50),
        pct(90),
        pct(99)
    );
    Ok(())
}

/// One connection's loop: requests at its share of the rate (or back to back) until
/// the end, reconnecting per request in `newconn` mode.
fn worker(load: &Load, start: Instant, index: u32) -> Tally {
    let interval = (load.rate > 0).then(|| Duration::from_secs(load.conns.into()) / load.rate);
    // Workers start staggered so that a fixed rate is spread evenly.
    let mut due = start + interval.map_or(Duration::ZERO, |i| i * index / load.conns);
    let end = start + load.duration;
    let request = vec![b'x'; load.size];
    let mut reply = vec![0u8; load.size];
    let mut kept: Option<TcpStream> = None;
    let mut tally = Tally::default();
    // A rate the path cannot keep up with ends at `end` too, with the delays it built up.
    while due < end && Instant::now() < end {
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let sent = if interval.is_some() {
            due
        } else {
            Instant::now()
        };
        match exchange(load, &mut kept, &request, &mut reply) {
            Ok(()) => tally.latencies_us.push(sent.elapsed().as_micros() as u32),
            Err(_) => {
                tally.errors += 1;
                kept = None;
            }
        }
        due = match interval {
            Some(i) => due + i,
            None => Instant::now(),
        };
    }
    tally
}

/// One request and its whole reply, on the kept connection or a new one.
fn exchange(
    load: &Load,
    kept: &mut Option<TcpStream>,
    request: &[u8],
    reply: &mut [u8],
) -> std::io::Result<()> {
    let mut stream = match kept.take() {
        Some(stream) => stream,
        None => connect(&load.addr)?,
    };
    stream.write_all(request)?;
    stream.read_exact(reply)?;
    if !load.new_connection {
        *kept = Some(stream);
    }
    Ok(())
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens `n` connections from a few threads at once (a handshake each through the mesh
/// takes a while), then holds them.
fn hold(addr: &str, n: usize) -> Result<()> {
    const OPENERS: usize = 8;
    let held: Vec<TcpStream> = thread::scope(|s| {
        let openers: Vec<_> = (0..OPENERS)
            .map(|i| s.spawn(move || open_pinged(addr, n / OPENERS + usize::from(i < n % OPENERS))))
            .collect();
        openers
            .into_iter()
            .map(|o| o.join().map_err(|_| "opener panicked".to_string())?)
            .collect::<Result<Vec<Vec<TcpStream>>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    println!("held {}", held.len());
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn probe(addr: &str, duration: Duration) -> Result<()> {
    let (started, mut probes, mut failures) = (Instant::now(), 0, 0);
    let (mut failing_since, mut longest) = (None::<Instant>, Duration::ZERO);
    while started.elapsed() < duration {
        let at = Instant::now();
        let exchanged = TcpStream::connect_timeout(
            &addr.parse().map_err(|e| format!("{addr}: {e}"))?,
            Duration::from_secs(1),
        )
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            let mut byte = [0u8];
            s.write_all(b"p").and_then(|()| s.read_exact(&mut byte))
        });
        probes += 1;
        match (exchanged, failing_since) {
            (Err(_), None) => (failures, failing_since) = (failures + 1, Some(at)),
            (Err(_), Some(_)) => failures += 1,
            (Ok(()), Some(since)) => {
                longest = longest.max(at - since);
                failing_since = None;
            }
            (Ok(()), None) => {}
        }
        thread::sleep(Duration::from_millis(5));
    }
    if let Some(since) = failing_since {
        longest = longest.max(since.elapsed());
    }
    println!(
        "probes={probes} failures={failures} longest_refused_ms={:.1}",
        longest.as_secs_f64() * 1000.0
    );
    Ok(())
}

fn open_pinged(addr: &str, n: usize) -> Result<Vec<TcpStream>> {
    (0..n)
        .map(|_| {
            let mut stream = connect(addr).map_err(|e| format!("connect: {e}"))?;
            let mut byte = [0u8];
            stream
                .write_all(b"p")
                .and_then(|()| stream.read_exact(&mut byte))
                .map_err(|e| format!("ping: {e}"))?;
            Ok(stream)
        })
        .collect()
}
