//! `cargo xtask vm-test`: the tunnel, egress and inbound-ports suites, the hand-off of
//! kernel-TLS connections at an upgrade (and the capture attacks that cross a tunnel) on
//! Debian's stock kernel, which has kernel TLS.
//!
//! This machine's kernel has no `tls` module, and its KVM cannot boot a stock kernel, so
//! QEMU emulates (TCG) a VM running Debian's `linux-image-amd64` (downloaded with
//! `apt-get download`, unpacked, never installed). A small initramfs (busybox + the
//! modules the tests need) mounts the host's root filesystem read-only over 9p, chroots
//! into it and runs the test binaries built here. Results come back on the serial log.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
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
/// names of the tests to run (all when empty): only what crosses a tunnel or originated
/// TLS, where kernel TLS takes over.
const SUITES: &[(&str, &[&str])] = &[
    // The spare sessions' test counts on 5 s windows that emulation stretches, and needs
    // no kernel TLS (spares on kernel TLS are taken in the other tunnel tests here).
    // Serial sessions exist only where tunnels stay in userspace.
    (
        "tunnel",
        &[
            "--skip",
            "a_spare_session_carries_the_next_connection",
            "--skip",
            "a_serial_session_carries",
        ],
    ),
    ("egress", &[]),
    ("inbound_ports", &[]),
    (
        "capture",
        &[
            "a_socket_mark_does_not_exempt_a_pod_from_capture",
            "ports_squatted_while_the_daemon_is_down",
        ],
    ),
    ("upgrade", &["kernel_tls_streams_move_to_the_new_daemons"]),
];

/// Emulation is slow: bulk tests move this much instead of their default.
const VM_BULK_BYTES: &str = "16777216";

/// The tests may take this long under emulation.
const TEST_TIMEOUT: Duration = Duration::from_secs(20 * 60);

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
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("qemu exited with {status}");
            }
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
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

/// Prints the guest's test output and fails unless every suite passed.
fn report(log: &Path) -> Result<()> {
    let serial = std::fs::read_to_string(log).with_context(|| format!("read {}", log.display()))?;
    for line in serial.lines().filter(|l| {
        l.starts_with("test ")
            || l.contains("test result:")
            || l.contains("insmod")
            || l.contains("VM-TEST")
    }) {
        println!("    vm: {line}");
    }
    if serial.contains("VM-TEST-EXIT=0") && serial.contains("test result: ok") {
        return Ok(());
    }
    bail!(
        "the tests failed inside the VM; the whole serial log is {}",
        log.display()
    )
}
