//! What a running process copies between its memory and the kernel, seen from outside by
//! Debian's strace: the bytes its threads read and write through the system calls that
//! copy (`read`, `recvmsg`, `writev`, `sendto`, `vmsplice`, ...). `splice` moves pages
//! between descriptors without them and is not counted: it is how a daemon relays a
//! stream whose bytes never enter its memory.

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{Proc, peers::wait_until};

/// The system calls that copy bytes into a process (`READS`) or out of it (`WRITES`).
const READS: &[&str] = &[
    "read", "readv", "pread64", "preadv", "preadv2", "recvfrom", "recvmsg", "recvmmsg",
];
const WRITES: &[&str] = &[
    "write", "writev", "pwrite64", "pwritev", "pwritev2", "sendto", "sendmsg", "sendmmsg",
    "vmsplice",
];

/// Bytes copied into and out of a process while it was watched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub read: u64,
    pub written: u64,
}

/// strace attached to every thread of a process, counting until `finish`.
pub struct CopyWatch {
    strace: Proc,
    trace: PathBuf,
}

impl CopyWatch {
    /// Attaches to `pid` (all its threads, and threads it starts later); returns once
    /// strace has attached. `dir` holds the trace.
    pub fn attach(pid: i32, dir: &Path) -> Result<Self> {
        let trace = dir.join(format!("copies-{pid}.strace"));
        let attached = dir.join(format!("copies-{pid}.log"));
        let calls = format!("trace={}", [READS, WRITES].concat().join(","));
        let log = std::fs::File::create(&attached)?;
        let child = Command::new("strace")
            .args([
                "-f",
                "-s",
                "0",
                "-e",
                &calls,
                "-e",
                "status=successful",
                "-o",
            ])
            .arg(&trace)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn strace (Debian's strace package)")?;
        let strace = Proc {
            child,
            argv: format!("strace -p {pid}"),
        };
        let said = || std::fs::read_to_string(&attached).unwrap_or_default();
        wait_until(Duration::from_secs(30), "strace to attach", || {
            said().contains("attached")
        })?;
        Ok(Self { strace, trace })
    }

    /// Detaches and counts what the process copied meanwhile.
    pub fn finish(mut self) -> Result<Copied> {
        let pid = nix::unistd::Pid::from_raw(self.strace.pid());
        nix::sys::signal::kill(pid, nix::sys::signal::SIGINT)?;
        let status = self.strace.child.wait()?;
        // strace detaches, then ends by the signal it was sent.
        if !status.success() && status.signal() != Some(libc::SIGINT) {
            bail!("strace ended with {status}");
        }
        let trace = std::fs::read_to_string(&self.trace)
            .with_context(|| format!("read {}", self.trace.display()))?;
        Ok(count(&trace))
    }
}

/// Sums the results of the copying calls in a trace of `strace -f` (lines such as
/// `123 recvfrom(7, ""..., 4096, 0, NULL, NULL) = 4096`, short thread ids padded, or a
/// call another thread interrupted: `123 <... read resumed>""..., 8) = 8`).
fn count(trace: &str) -> Copied {
    let mut copied = Copied::default();
    for line in trace.lines() {
        let Some((call, bytes)) = call_and_result(line) else {
            continue;
        };
        if READS.contains(&call) {
            copied.read += bytes;
        } else if WRITES.contains(&call) {
            copied.written += bytes;
        }
    }
    copied
}

fn call_and_result(line: &str) -> Option<(&str, u64)> {
    let rest = line.trim_start().split_once(' ')?.1.trim_start();
    let call = match rest.strip_prefix("<... ") {
        Some(resumed) => resumed.split_once(" resumed>")?.0,
        None => rest.split_once('(')?.0,
    };
    let result = rest.rsplit_once(" = ")?.1;
    let bytes = result.split_whitespace().next()?.parse().ok()?;
    Some((call, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_sums_each_direction_and_skips_what_copies_nothing() {
        let trace = "\
101 recvfrom(7, \"\"..., 4096, 0, NULL, NULL) = 4096
102 writev(9, [{iov_base=\"\"..., iov_len=100}], 1) = 100
99    write(10, \"\"..., 8)               = 8
101 read(3,  <unfinished ...>
102 splice(5, NULL, 6, NULL, 262144, SPLICE_F_NONBLOCK) = 262144
101 <... read resumed>\"\"..., 8) = 8
102 sendto(9, \"\"..., 20, MSG_NOSIGNAL, NULL, 0) = 20
101 --- SIGINT {si_signo=SIGINT} ---
101 +++ exited with 0 +++
";
        assert_eq!(
            count(trace),
            Copied {
                read: 4104,
                written: 128
            }
        );
    }
}
