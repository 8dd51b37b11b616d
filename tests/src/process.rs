//! Processes started inside a pod's (or node's) network namespace and cgroup.

use std::{
    fs::File,
    io::Write,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Child, Command, Output, Stdio},
};

use anyhow::{Context, Result};

/// A running process, killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub argv: String,
}

impl Proc {
    /// Spawns `argv` inside `netns`, in cgroup `cgroup`; output goes to the test's stderr.
    pub fn spawn(argv: &[&str], netns: &Path, cgroup: &Path) -> Result<Self> {
        let mut cmd = placed(argv, netns, cgroup)?;
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {argv:?}"))?;
        Ok(Self {
            child,
            argv: argv.join(" "),
        })
    }

    /// Like `spawn`, with stdout and stderr appended to `log`.
    pub fn spawn_logged(argv: &[&str], netns: &Path, cgroup: &Path, log: &Path) -> Result<Self> {
        let file = File::options().create(true).append(true).open(log)?;
        let mut cmd = placed(argv, netns, cgroup)?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = cmd.spawn().with_context(|| format!("spawn {argv:?}"))?;
        Ok(Self {
            child,
            argv: argv.join(" "),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether it has ended (reaped here if so).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().is_ok_and(|status| status.is_some())
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        Ok(self.child.wait()?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `argv` in `netns` and `cgroup` to completion, capturing its output.
pub fn run(argv: &[&str], netns: &Path, cgroup: &Path) -> Result<Output> {
    placed(argv, netns, cgroup)?
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {argv:?}"))
}

/// `sh -c SCRIPT` as an argv.
pub fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// A command that, between fork and exec, joins `netns` and moves itself into `cgroup`.
fn placed(argv: &[&str], netns: &Path, cgroup: &Path) -> Result<Command> {
    let netns_file = File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    let procs = File::options()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .with_context(|| format!("open {}/cgroup.procs", cgroup.display()))?;
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    // SAFETY: only async-signal-safe calls (setns, write) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns_file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            (&procs).write_all(b"0")?;
            Ok(())
        });
    }
    Ok(cmd)
}
