//! hawser-echo-load ADDR CONNECTIONS BYTES
//!
//! Opens CONNECTIONS connections to an echo server at ADDR, all at once (a barrier holds
//! them open together), sends BYTES pseudo-random bytes on each, half-closes, reads the
//! echo to EOF and compares a checksum. Prints `echo ok: N/N connections intact` or the
//! failures, and exits non-zero on any failure.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    sync::{Arc, Barrier},
    thread,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, conns, bytes] = &args[..] else {
        eprintln!("usage: hawser-echo-load ADDR CONNECTIONS BYTES");
        std::process::exit(2);
    };
    let conns: usize = conns.parse().expect("CONNECTIONS");
    let bytes: usize = bytes.parse().expect("BYTES");
    let barrier = Arc::new(Barrier::new(conns));
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            let (addr, barrier) = (addr.clone(), barrier.clone());
            thread::spawn(move || one(&addr, i as u64, bytes, &barrier))
        })
        .collect();
    let failures: Vec<String> = workers
        .into_iter()
        .enumerate()
        .filter_map(|(i, w)| match w.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("connection {i}: {e}")),
            Err(_) => Some(format!("connection {i}: panicked")),
        })
        .collect();
    if failures.is_empty() {
        println!("echo ok: {conns}/{conns} connections intact");
    } else {
        println!("echo FAILED: {}/{conns} connections broken", failures.len());
        for f in &failures {
            println!("{f}");
        }
        std::process::exit(1);
    }
}

fn one(addr: &str, seed: u64, len: usize, barrier: &Barrier) -> Result<(), String> {
    let connected = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"));
    // Everyone waits here, so all connections are open at the same time.
    barrier.wait();
    let stream = connected?;
    let payload = pseudo_random(seed, len);
    let expected = checksum(&payload);
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&payload)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut echoed = Vec::with_capacity(len);
    (&stream)
        .read_to_end(&mut echoed)
        .map_err(|e| format!("read: {e}"))?;
    sender
        .join()
        .map_err(|_| "writer panicked")?
        .map_err(|e| format!("write: {e}"))?;
    if echoed.len() != len || checksum(&echoed) != expected {
        return Err(format!(
            "echo differs: {} of {len} bytes came back",
            echoed.len()
        ));
    }
    Ok(())
}

/// xorshift64*: reproducible bytes that differ per connection.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// FNV-1a over the whole stream.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
