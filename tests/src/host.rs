//! Host plumbing: mounts the test bed needs, `ip`, and cgroup clean-up.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn mount_point(fstype: &str) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&fstype)).then(|| PathBuf::from(fields[1]))
    })
}

/// The cgroup v2 hierarchy: the host's if mounted, else one we mount.
pub fn cgroup2_root() -> Result<PathBuf> {
    ensure_mounted(
        "cgroup2",
        Path::new("/run/hawser-testbed/cgroup2"),
        &["-t", "cgroup2", "none"],
    )
}

/// bpffs: the host's if mounted, else /sys/fs/bpf.
pub fn bpffs() -> Result<PathBuf> {
    ensure_mounted("bpf", Path::new("/sys/fs/bpf"), &["-t", "bpf", "bpf"])
}

fn ensure_mounted(fstype: &str, fallback: &Path, args: &[&str]) -> Result<PathBuf> {
    if let Some(existing) = mount_point(fstype) {
        return Ok(existing);
    }
    std::fs::create_dir_all(fallback)?;
    let out = Command::new("mount").args(args).arg(fallback).output()?;
    // A concurrent test may have won the race; the second look settles it.
    mount_point(fstype).with_context(|| {
        format!(
            "mount {fstype} at {}: {}",
            fallback.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// SIGKILLs every process in `root` and its sub-cgroups.
pub fn kill_cgroup_tree(root: &Path) {
    for _ in 0..50 {
        let pids = procs_under(root);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn procs_under(root: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for dir in dirs_under(root) {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
    }
    pids
}

/// `root` and every cgroup below it, parents first.
fn dirs_under(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(entries) = std::fs::read_dir(&dirs[i]) {
            dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        i += 1;
    }
    dirs
}

/// Removes `root` and its sub-cgroups (children first; cgroups are removed with rmdir).
pub fn remove_cgroup_tree(root: &Path) {
    for dir in dirs_under(root).iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Raises this process's open-file limit (inherited by what it starts) to the kernel's
/// ceiling, or, without CAP_SYS_RESOURCE, to the hard limit; returns the new limit.
pub fn raise_fd_limit() -> Result<u64> {
    let ceiling: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")?
        .trim()
        .parse()?;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only access the struct passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!("getrlimit NOFILE: {}", std::io::Error::last_os_error());
        }
        for cap in [ceiling, limit.rlim_max] {
            let wanted = libc::rlimit {
                rlim_cur: cap,
                rlim_max: cap.max(limit.rlim_max),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return Ok(cap);
            }
        }
    }
    bail!("setrlimit NOFILE: {}", std::io::Error::last_os_error())
}
