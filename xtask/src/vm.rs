//! `cargo xtask vm-test`: the end-to-end tests whose outcome depends on kernel TLS
//! (tunnel, egress, inbound ports, the hand-off at an upgrade) or on the stock kernel (a
//! capture attack), on Debian's stock kernel, which has kernel TLS.
//!
//! This machine's kernel has no `tls` module, and its KVM cannot boot a stock kernel, so
//! QEMU emulates (TCG) a VM running Debian's `linux-image-amd64` (downloaded with
//! `apt-get download`, unpacked, never installed). A small initramfs (busybox + the
//! modules the tests need) mounts the host's root filesystem read-only over 9p, chroots
//! into it and runs the test binaries built here. Results come back on the serial log.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, step};

/// Modules loaded in the guest, dependencies first (resolved with the host's modprobe).
const MODULES: &[&str] = &[
    "9p",
    "9pnet_virtio",
    "virtio_pci",
    "tls",
    "veth",
    "bridge",
    "gcm",
    "aesni_intel",
    "ghash_clmulni_intel",
    "ghash_generic",
    "chacha20poly1305",
];

/// Test binaries (cargo test targets of hawser-testbed) run in the VM, each with the
/// names of the tests to run: only those whose outcome depends on kernel TLS or on the
/// stock kernel. Emulation makes each test 20 to 30 times slower than on the host, so the
/// rest (handshake refusals, admission, serial sessions, spare sessions' timed windows)
/// run on the host only, where their code is the same.
const SUITES: &[(&str, &[&str])] = &[
    (
        "tunnel",
        &[
            // kTLS records on the wire, the kernel's TLS counters.
            "traffic_between_nodes_is_mtls_on_the_wire",
            // The app's first bytes go with the preamble (rustls), then the kernel's
            // records; the server hands them to the app before the socket's.
            "an_apps_first_bytes_cross_in_the_preambles_record",
            // Splice in bulk.
            "a_gibibyte_crosses_the_tunnel_intact",
            // Nor does the payload enter the daemons.
            "the_payload_enters_the_daemons_only_without_kernel_tls",
            // A splice that fails reaches the app as a reset.
            "a_stream_cut_by_a_dead_peer_daemon",
            // A key that may seal no more records ends its connection.
            "a_stream_longer_than_a_tunnel_key_may_seal",
            // Policy and revocation cut connections the kernel encrypts.
            "open_connections_are_cut_when_policy",
            // Session tickets are read before the hand-off to the kernel.
            "tunnels_between_the_same_pods_resume",
            // --tunnel-reuse beside a kernel-TLS daemon.
            "serial_sessions_fall_back",
        ],
    ),
    // TLS originated for an app, then handed to the kernel.
    ("egress", &["istio_mutual_reaches_an_external_nginx"]),
    // TLS terminated for a client outside the mesh, then handed to the kernel.
    ("inbound_ports", &["company_ca_clients_reach_the_port"]),
    // A pod's socket mark against the stock kernel's eBPF hooks.
    (
        "capture",
        &["a_socket_mark_does_not_exempt_a_pod_from_capture"],
    ),
    // Kernel-TLS sockets passed to the new daemon.
    ("upgrade", &["kernel_tls_streams_move_to_the_new_daemons"]),
];

/// Emulation is slow: bulk tests move this much instead of their default.
const VM_BULK_BYTES: &str = "16777216";

/// The tests may take this long under emulation (about 15 minutes on a 2-core machine).
const TEST_TIMEOUT: Duration = Duration::from_secs(25 * 60);

pub fn run() -> Result<()> {
    let binaries = test_binaries()?;
    let env = format!(
        "HAWSER_BIN={}/target/debug/hawser HAWSER_BULK_BYTES={VM_BULK_BYTES}",
        cmd::workspace().canonicalize()?.display()
    );
    let script: String = binaries
        .iter()
        .zip(SUITES)
        .map(|(binary, (_, filters))| {
            let test = format!(
                "{} --test-threads=1 --color=never {}",
                binary.display(),
                filters.join(" ")
            );
            Ok(format!("{} || status=1\n", in_host_root(&env, &test)?))
        })
        .collect::<Result<_>>()?;
    let log = guest(
        "tests",
        &format!("{:?} with kernel TLS", suite_names()),
        &script,
        TEST_TIMEOUT,
    )?;
    report(&log)
}

/// Boots Debian's kernel in QEMU, runs `script` (shell lines for the guest's init; a
/// failing line sets `status=1`) and returns the serial log. `name` keeps each use's
/// initramfs and log apart (`target/vm/<name>`), so tests and benchmarks do not collide.
pub fn guest(name: &str, what: &str, script: &str, timeout: Duration) -> Result<PathBuf> {
    let dir = cmd::workspace().join("target/vm");
    let own = dir.join(name);
    std::fs::create_dir_all(&own)?;
    let (kernel, version, root) = kernel(&dir)?;
    step("building the VM's initramfs");
    let initrd = initramfs(&own, &root, &version, script)?;
    step(&format!(
        "booting Debian's kernel {version} in QEMU (TCG) to run {what}"
    ));
    let log = own.join("serial.log");
    boot(&kernel, &initrd, &log, timeout)?;
    Ok(log)
}

/// A guest shell line running `command` with `env` (`NAME=value ...`) in the host's root
/// filesystem, from the workspace directory.
pub fn in_host_root(env: &str, command: &str) -> Result<String> {
    Ok(format!(
        "chroot /host /usr/bin/env -C {} {env} {command}",
        cmd::workspace().canonicalize()?.display()
    ))
}

/// Debian's current stock kernel, downloaded and unpacked once: (vmlinuz, version, root).
fn kernel(dir: &Path) -> Result<(PathBuf, String, PathBuf)> {
    let depends = cmd::output("apt-cache", &["depends", "linux-image-amd64"])?;
    let package = depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
        .map(|v| format!("linux-image-{v}"))
        .context("apt-cache finds no linux-image-amd64 (run apt-get update)")?;
    let version = package.trim_start_matches("linux-image-").to_string();
    let root = dir.join(&package);
    let vmlinuz = root.join(format!("boot/vmlinuz-{version}"));
    if !vmlinuz.exists() {
        step(&format!(
            "downloading {package} (about 70 MB; unpacked, not installed)"
        ));
        let status = Command::new("apt-get")
            .args(["download", &package])
            .current_dir(dir)
            .status()?;
        if !status.success() {
            bail!("apt-get download {package} failed");
        }
        let deb = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.to_string_lossy().contains(&package) && p.extension().is_some_and(|e| e == "deb")
            })
            .context("the downloaded .deb is missing")?;
        cmd::run(
            "dpkg",
            &[
                "-x",
                &deb.display().to_string(),
                &root.display().to_string(),
            ],
        )?;
        std::fs::remove_file(deb)?;
    }
    Ok((vmlinuz, version, root))
}

fn suite_names() -> Vec<&'static str> {
    SUITES.iter().map(|(name, _)| *name).collect()
}

/// Builds the test binaries and returns their paths, in the order of `SUITES`.
fn test_binaries() -> Result<Vec<PathBuf>> {
    let mut args = vec![
        "test",
        "--package",
        "hawser-testbed",
        "--no-run",
        "--message-format=json",
    ];
    for (suite, _) in SUITES {
        args.extend(["--test", suite]);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = cmd::output(&cargo, &args)?;
    let executable = |suite: &str| -> Option<PathBuf> {
        let name = format!("\"name\":\"{suite}\"");
        out.lines()
            .filter(|l| l.contains(&name) && l.contains("\"kind\":[\"test\"]"))
            .find_map(|l| {
                Some(PathBuf::from(
                    l.split("\"executable\":\"").nth(1)?.split('"').next()?,
                ))
            })
    };
    let binaries: Vec<PathBuf> = SUITES
        .iter()
        .filter_map(|(suite, _)| executable(suite))
        .collect();
    if binaries.len() != SUITES.len() {
        bail!(
            "expected {} test binaries from cargo, found {binaries:?}",
            SUITES.len()
        );
    }
    Ok(binaries)
}

fn initramfs(dir: &Path, kernel_root: &Path, version: &str, script: &str) -> Result<PathBuf> {
    let root = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "dev", "host", "lib/modules"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static is missing")?;
    let modules = module_order(kernel_root, version)?;
    let mut inserts = String::new();
    for (i, module) in modules.iter().enumerate() {
        let name = format!("{i:02}-{}", module.file_name().unwrap().to_string_lossy());
        std::fs::copy(module, root.join("lib/modules").join(&name))?;
        inserts += &format!("insmod /lib/modules/{name} || echo \"insmod {name} failed\"\n");
    }
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         {inserts}\
         mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host || echo 'VM-TEST no host root'\n\
         mount -t proc proc /host/proc; mount -t sysfs sys /host/sys; mount -t devtmpfs dev /host/dev\n\
         mount -t tmpfs tmp /host/tmp; mount -t tmpfs run /host/run\n\
         ip link set lo up\n\
         status=0\n\
         {script}\
         echo \"VM-TEST-EXIT=$status\"\n\
         poweroff -f\n"
    );
    std::fs::write(root.join("init"), init)?;
    let status = Command::new("sh")
        .arg("-c")
        .arg("chmod +x init && find . | cpio -o -H newc --quiet | gzip -1 > ../initrd.gz")
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("building the initramfs failed");
    }
    Ok(dir.join("initrd.gz"))
}

/// The .ko files to load, dependencies first, each once.
fn module_order(kernel_root: &Path, version: &str) -> Result<Vec<PathBuf>> {
    let base = kernel_root.display().to_string();
    cmd::run("depmod", &["-b", &base, version])?;
    let mut order: Vec<PathBuf> = Vec::new();
    for module in MODULES {
        let deps = cmd::output(
            "modprobe",
            &["-d", &base, "-S", version, "--show-depends", module],
        )?;
        for line in deps.lines() {
            if let Some(path) = line.strip_prefix("insmod ") {
                let path = PathBuf::from(path.trim());
                if !order.contains(&path) {
                    order.push(path);
                }
            }
        }
    }
    Ok(order)
}

fn boot(kernel: &Path, initrd: &Path, log: &Path, timeout: Duration) -> Result<()> {
    let _ = std::fs::remove_file(log);
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-m",
        "2048",
        "-smp",
        "2",
    ])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", "console=ttyS0 panic=-1 quiet"])
    .args([
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    ])
    .args([
        "-nographic",
        "-no-reboot",
        "-monitor",
        "none",
        "-display",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", log.display()));
    let mut child = qemu.spawn().context("start qemu-system-x86_64")?;
    let mut follow = Follow::new(log);
    let deadline = follow.start + timeout;
    loop {
        follow.poll();
        if let Some(status) = child.try_wait()? {
            follow.poll();
            if !status.success() {
                bail!("qemu exited with {status}");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the VM did not finish within {} minutes; see {}",
                timeout.as_secs() / 60,
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Follows the guest's serial log while it runs, printing the lines worth seeing with the
/// seconds since boot: a slow or stuck test shows in the output, timeout or not.
struct Follow<'a> {
    log: &'a Path,
    start: Instant,
    read: usize,
}

impl<'a> Follow<'a> {
    fn new(log: &'a Path) -> Self {
        Follow {
            log,
            start: Instant::now(),
            read: 0,
        }
    }

    /// Prints the complete lines written since the last call.
    fn poll(&mut self) {
        let Ok(bytes) = std::fs::read(self.log) else {
            return;
        };
        let new = bytes.get(self.read..).unwrap_or_default();
        let Some(end) = new.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let secs = self.start.elapsed().as_secs();
        for line in String::from_utf8_lossy(&new[..end]).lines() {
            let line = line.trim_end_matches('\r');
            if worth_seeing(line) {
                println!("    vm {secs:>4} s: {line}");
            }
        }
        self.read += end + 1;
    }
}

/// libtest's lines (a test's outcome may come on a line of its own when the test's tools
/// wrote in between), the modules loaded, the init script's marks.
fn worth_seeing(line: &str) -> bool {
    line.starts_with("test ")
        || line.starts_with("running ")
        || matches!(line, "ok" | "FAILED")
        || line.contains("test result:")
        || line.contains("insmod")
        || line.contains("VM-TEST")
}

/// Fails unless every suite passed and every named test ran (their lines were printed as
/// they came): a renamed test must not drop out of the VM run unnoticed.
fn report(log: &Path) -> Result<()> {
    let serial = std::fs::read_to_string(log).with_context(|| format!("read {}", log.display()))?;
    if !serial.contains("VM-TEST-EXIT=0") {
        bail!(
            "the tests failed inside the VM:\n{}\nthe whole serial log is {}",
            failures(&serial),
            log.display()
        );
    }
    let named: usize = SUITES.iter().map(|(_, tests)| tests.len()).sum();
    let passed = passed(&serial);
    if passed != named {
        bail!(
            "{passed} tests passed in the VM, {named} are named in SUITES: a name matches no test, or more than one"
        );
    }
    Ok(())
}

/// Lines of each failed test's report: its header, and the first lines of its panic or
/// error (a test's error may carry a daemon's whole log; the serial log has all of it).
/// Without any report (the guest failed before a test did), the log's last lines.
fn failures(serial: &str) -> String {
    const LINES: usize = 25;
    let lines: Vec<&str> = serial.lines().map(|l| l.trim_end_matches('\r')).collect();
    let mut shown = Vec::new();
    let mut until = 0;
    for (i, &line) in lines.iter().enumerate() {
        if line.starts_with("---- ") {
            shown.push(line);
            until = 0;
        } else if line.starts_with("Error: ") || line.contains("panicked at") {
            until = i + 1 + LINES;
            shown.push(line);
        } else if i < until {
            shown.push(line);
        }
    }
    if shown.is_empty() {
        shown = lines[lines.len().saturating_sub(LINES)..].to_vec();
    }
    shown.join("\n")
}

/// The tests passed, summed over the suites' `test result:` lines.
fn passed(serial: &str) -> usize {
    serial
        .lines()
        .filter_map(|l| l.split_once("test result: ok. ")?.1.split_once(" passed"))
        .filter_map(|(n, _)| n.parse::<usize>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::{failures, passed};

    #[test]
    fn a_failed_tests_report_shows_its_error_and_not_the_whole_log() {
        let daemon_log: String = (0..100).map(|i| format!("daemon line {i}\n")).collect();
        let serial = format!(
            "test a ... FAILED\nfailures:\n\n---- a stdout ----\n\
             Error: timed out waiting for records; log of d1:\n{daemon_log}\
             ---- b stdout ----\nthread 'b' panicked at tests/tunnel.rs:9:5:\r\nbytes differ\n"
        );
        let shown = failures(&serial);
        assert!(
            shown.starts_with("---- a stdout ----\nError: timed out"),
            "{shown}"
        );
        assert!(shown.contains("daemon line 24\n---- b stdout"), "{shown}");
        assert!(!shown.contains("daemon line 25"), "{shown}");
        assert!(shown.ends_with("tunnel.rs:9:5:\nbytes differ"), "{shown}");
    }

    #[test]
    fn a_guest_that_failed_before_any_test_shows_the_logs_end() {
        let serial: String = (0..40).map(|i| format!("boot line {i}\n")).collect();
        let serial = serial + "chroot: /host/usr/bin/env: No such file\nVM-TEST-EXIT=1\n";
        let shown = failures(&serial);
        assert!(shown.starts_with("boot line 17\n"), "{shown}");
        assert!(shown.ends_with("No such file\nVM-TEST-EXIT=1"), "{shown}");
    }

    #[test]
    fn passed_tests_are_summed_over_suites_and_failures_count_none() {
        let serial = "running 2 tests\n\
                      test a ... 2026/12/02 socat E write: Broken pipe\nok\n\
                      test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 3 filtered out\n\
                      test result: FAILED. 1 passed; 1 failed; 0 ignored\n\
                      test result: ok. 1 passed; 0 failed; 0 ignored\n";
        assert_eq!(passed(serial), 3);
    }
}
