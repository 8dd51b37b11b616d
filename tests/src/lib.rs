//! A test bed of real network namespaces for hawser's end-to-end tests and demo.
//!
//! A `Node` is a network namespace holding a bridge; each `Pod` is a namespace joined to
//! its node's bridge by a veth pair, with its own IP and its own cgroup v2 directory under
//! the node's. Processes started in a pod run in its namespace and cgroup, exactly where
//! the daemon's eBPF hooks see a pod's processes. Everything a `Testbed` made is removed
//! when it is dropped, also when a test panics.

pub mod copies;
pub mod demo;
pub mod fake_api;
mod host;
pub mod mesh;
pub mod metrics;
pub mod peers;
pub mod pki;
mod process;
mod service;

use std::{
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use anyhow::{Context, Result};

pub use host::raise_fd_limit;
pub use process::{Proc, sh};
pub use service::{CaInfo, Service};

/// True when the test can run; prints a loud reason when it cannot (not root).
pub fn can_run() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    eprintln!("SKIPPED: this end-to-end test needs root (network namespaces, eBPF, cgroups)");
    false
}

/// Where the daemon's TLS runs on this kernel, as the access log names it: `ktls` where
/// the kernel has the `tls` module (e.g. the VM of `cargo xtask vm-test`), else
/// `userspace`.
pub fn expected_tls_path() -> &'static str {
    if Path::new("/proc/net/tls_stat").exists() {
        "ktls"
    } else {
        "userspace"
    }
}

/// The `hawser-cni` plugin built with the `hawser` binary under test.
pub fn cni_bin() -> PathBuf {
    hawser_bin().with_file_name("hawser-cni")
}

/// The `hawser` binary under test: `$HAWSER_BIN`, or the workspace's debug build.
pub fn hawser_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("HAWSER_BIN") {
        return bin.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/hawser");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask build` first",
        bin.display()
    );
    bin
}

/// One test's namespaces, cgroups and files.
pub struct Testbed {
    /// Short and unique on the host: prefixes namespace names.
    id: String,
    dir: tempfile::TempDir,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    netns: Mutex<Vec<String>>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Testbed {
    pub fn new() -> Result<Self> {
        let id = format!(
            "hw{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let cgroup = host::cgroup2_root()?.join(&id);
        std::fs::create_dir_all(&cgroup).with_context(|| format!("create {}", cgroup.display()))?;
        let pin_dir = host::bpffs()?.join(&id);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()?;
        std::fs::create_dir(dir.path().join("config"))?;
        Ok(Self {
            id,
            dir,
            cgroup,
            pin_dir,
            netns: Mutex::new(Vec::new()),
        })
    }

    /// A scratch directory removed with the test bed.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's workload configuration directory.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// bpffs directory for the daemon's pins.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// A node: a namespace with a bridge at `10.<index>.0.1/24`.
    pub fn node(&self, name: &str, index: u8) -> Result<Node> {
        let netns = self.add_netns(name)?;
        let node = Node {
            name: name.to_string(),
            netns,
            subnet: index,
            cgroup: self.cgroup.join(name),
            pods: Mutex::new(0),
        };
        std::fs::create_dir_all(&node.cgroup)?;
        host::ip(&["-n", &node.netns, "link", "set", "lo", "up"])?;
        host::ip(&["-n", &node.netns, "link", "add", "br0", "type", "bridge"])?;
        host::ip(&[
            "-n",
            &node.netns,
            "addr",
            "add",
            &format!("{}/24", node.gateway()),
            "dev",
            "br0",
        ])?;
        host::ip(&["-n", &node.netns, "link", "set", "br0", "up"])?;
        Ok(node)
    }

    /// A pod on `node` with the next free address of the node's subnet.
    pub fn pod(&self, node: &Node, name: &str) -> Result<Pod> {
        let index = {
            let mut pods = node.pods.lock().unwrap();
            *pods += 1;
            *pods
        };
        let netns = self.add_netns(name)?;
        let pod = Pod {
            name: name.to_string(),
            node: node.name.clone(),
            ip: format!("10.{}.0.{}", node.subnet, index + 1),
            netns_path: PathBuf::from("/run/netns").join(&netns),
            netns,
            cgroup: node.cgroup.join(name),
        };
        std::fs::create_dir_all(&pod.cgroup)?;
        let host_side = format!("v{index}");
        host::ip(&[
            "-n",
            &node.netns,
            "link",
            "add",
            &host_side,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod.netns,
        ])?;
        host::ip(&[
            "-n",
            &node.netns,
            "link",
            "set",
            &host_side,
            "master",
            "br0",
            "up",
        ])?;
        host::ip(&["-n", &pod.netns, "link", "set", "lo", "up"])?;
        host::ip(&[
            "-n",
            &pod.netns,
            "addr",
            "add",
            &format!("{}/24", pod.ip),
            "dev",
            "eth0",
        ])?;
        host::ip(&["-n", &pod.netns, "link", "set", "eth0", "up"])?;
        host::ip(&[
            "-n",
            &pod.netns,
            "route",
            "add",
            "default",
            "via",
            &node.gateway(),
        ])?;
        Ok(pod)
    }

    /// Writes the workload declarations of `pods` as the daemon's configuration.
    pub fn enroll(&self, pods: &[&Pod]) -> Result<()> {
        let yaml: Vec<String> = pods.iter().map(|p| p.workload_yaml()).collect();
        write_atomically(
            &self.config_dir().join("workloads.yaml"),
            &yaml.join("---\n"),
        )
    }

    /// Starts `hawser node` for `node` inside the node's namespace and cgroup, without a CA.
    pub fn start_daemon(&self, node: &Node) -> Result<Service> {
        Service::node(self, node, None, &[], &[])
    }

    /// Starts `hawser ca` in `node`'s namespace, then `hawser node` getting its
    /// identities from it.
    pub fn start_daemon_with_ca(&self, node: &Node) -> Result<(Service, Service, CaInfo)> {
        let (ca, info) = self.start_ca(node, &[node])?;
        let daemon = self.start_node(node, Some(&info))?;
        Ok((ca, daemon, info))
    }

    /// Starts `hawser ca` on `on`, with credentials for `nodes`.
    pub fn start_ca(&self, on: &Node, nodes: &[&Node]) -> Result<(Service, CaInfo)> {
        Service::ca(self, on, nodes)
    }

    /// Starts a CA like `start_ca`, named `name` (its directory and log) and with `extra`
    /// arguments: several CAs, of several trust domains, can run in one bed.
    pub fn start_ca_named(
        &self,
        on: &Node,
        nodes: &[&Node],
        name: &str,
        extra: &[&str],
    ) -> Result<(Service, CaInfo)> {
        Service::ca_named(self, on, nodes, name, extra)
    }

    /// Starts `hawser node` for `node`, with identities from `ca` when given.
    pub fn start_node(&self, node: &Node, ca: Option<&CaInfo>) -> Result<Service> {
        Service::node(self, node, ca, &[], &[])
    }

    /// Starts `hawser node` for `node` with extra command-line arguments.
    pub fn start_node_with(
        &self,
        node: &Node,
        ca: Option<&CaInfo>,
        extra: &[&str],
    ) -> Result<Service> {
        Service::node(self, node, ca, extra, &[])
    }

    /// Starts another `hawser node` for `node` beside the one running (an upgrade):
    /// `generation` names its log (`hawser-<node>-<generation>.log`).
    pub fn start_node_generation(
        &self,
        node: &Node,
        ca: Option<&CaInfo>,
        extra: &[&str],
        generation: u32,
    ) -> Result<Service> {
        let log = format!("hawser-{}-{generation}.log", node.name);
        Service::node_logged(self, node, ca, extra, &[], &log)
    }

    /// Starts `hawser node` for `node` with the API server of `kubeconfig` as its
    /// workload source, taking CNI hand-offs on `cni_socket`, with identities from `ca`
    /// when given.
    pub fn start_node_in_cluster(
        &self,
        node: &Node,
        kubeconfig: &Path,
        cni_socket: &Path,
        ca: Option<&CaInfo>,
    ) -> Result<Service> {
        let socket = cni_socket.display().to_string();
        let args = ["--workload-source", "kubernetes", "--cni-socket", &socket];
        let env = [format!("KUBECONFIG={}", kubeconfig.display())];
        Service::node(self, node, ca, &args, &env)
    }

    /// Joins two nodes with a veth link and routes each node's pod subnet over it: the
    /// "network" between nodes. Returns the name of `a`'s end of the link.
    pub fn connect_nodes(&self, a: &Node, b: &Node) -> Result<String> {
        let link = 200 + a.subnet.min(b.subnet) * 10 + a.subnet.max(b.subnet);
        let (a_ip, b_ip) = (format!("10.254.{link}.1"), format!("10.254.{link}.2"));
        let (a_end, b_end) = (format!("to-{}", b.name), format!("to-{}", a.name));
        host::ip(&[
            "-n", &a.netns, "link", "add", &a_end, "type", "veth", "peer", "name", &b_end, "netns",
            &b.netns,
        ])?;
        for (node, end, ip, other, via) in
            [(a, &a_end, &a_ip, b, &b_ip), (b, &b_end, &b_ip, a, &a_ip)]
        {
            host::ip(&[
                "-n",
                &node.netns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                end,
            ])?;
            host::ip(&["-n", &node.netns, "link", "set", end, "up"])?;
            host::ip(&[
                "-n",
                &node.netns,
                "route",
                "add",
                &format!("10.{}.0.0/24", other.subnet),
                "via",
                via,
            ])?;
            let forward = process::run(
                &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
                &node.netns_path(),
                &node.cgroup,
            )?;
            anyhow::ensure!(
                forward.status.success(),
                "enable forwarding on {}",
                node.name
            );
        }
        Ok(a_end)
    }

    fn add_netns(&self, name: &str) -> Result<String> {
        let netns = format!("{}-{name}", self.id);
        host::ip(&["netns", "add", &netns])?;
        self.netns.lock().unwrap().push(netns.clone());
        Ok(netns)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        host::kill_cgroup_tree(&self.cgroup);
        let _ = std::process::Command::new(hawser_bin())
            .args(["uninstall", "--pin-dir"])
            .arg(&self.pin_dir)
            .output();
        for netns in self.netns.lock().unwrap().drain(..) {
            let _ = host::ip(&["netns", "del", &netns]);
        }
        host::remove_cgroup_tree(&self.cgroup);
    }
}

/// Replaces `path` in one step, as a ConfigMap update does: readers never see half a file.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub struct Node {
    pub name: String,
    pub netns: String,
    subnet: u8,
    pub cgroup: PathBuf,
    pods: Mutex<u8>,
}

impl Node {
    pub fn gateway(&self) -> String {
        format!("10.{}.0.1", self.subnet)
    }

    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    /// Starts a process in the node's namespace (not in a pod); killed when dropped.
    pub fn spawn(&self, argv: &[&str]) -> Result<Proc> {
        Proc::spawn(argv, &self.netns_path(), &self.cgroup)
    }

    /// A TCP listener on the node's loopback (e.g. for a fake API server its daemon
    /// reaches), made on a thread that entered the node's namespace.
    pub fn listen_on_loopback(&self) -> Result<std::net::TcpListener> {
        let netns = std::fs::File::open(self.netns_path())?;
        std::thread::spawn(move || -> Result<std::net::TcpListener> {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the netns thread panicked"))?
    }

    /// Runs a command in the node's namespace to completion.
    pub fn run(&self, argv: &[&str]) -> Result<std::process::Output> {
        process::run(argv, &self.netns_path(), &self.cgroup)
    }

    /// Runs `hawser <args>` on the node (e.g. a CLI command against its daemon) and
    /// returns its standard output; fails with its standard error.
    pub fn hawser(&self, args: &[&str]) -> Result<String> {
        let bin = hawser_bin();
        let mut argv = vec![bin.to_str().context("binary path")?];
        argv.extend(args);
        let out = self.run(&argv)?;
        anyhow::ensure!(
            out.status.success(),
            "hawser {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// GETs `url` from the node's namespace (e.g. the daemon's admin API): status, body.
    pub fn http_get(&self, url: &str) -> Result<(u16, String)> {
        let out = self.run(&["curl", "-sS", "-m", "10", "-w", "\n%{http_code}", url])?;
        anyhow::ensure!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        let (body, code) = text.rsplit_once('\n').context("curl wrote no status")?;
        Ok((code.trim().parse()?, body.to_string()))
    }
}

#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub ip: String,
    pub netns: String,
    pub netns_path: PathBuf,
    pub cgroup: PathBuf,
}

impl Pod {
    /// Starts a long-running process in the pod; it is killed when the guard drops.
    pub fn spawn(&self, argv: &[&str]) -> Result<Proc> {
        Proc::spawn(argv, &self.netns_path, &self.cgroup)
    }

    /// Runs a command in the pod to completion.
    pub fn run(&self, argv: &[&str]) -> Result<std::process::Output> {
        process::run(argv, &self.netns_path, &self.cgroup)
    }

    /// Sets the pod's ephemeral port range, a sysctl any Kubernetes pod may set (a "safe"
    /// one), as "LOW HIGH".
    pub fn port_range(&self, range: &str) -> Result<()> {
        let set = format!("net.ipv4.ip_local_port_range={range}");
        let out = self.run(&["sysctl", "-qw", &set])?;
        anyhow::ensure!(out.status.success(), "{set}: {out:?}");
        Ok(())
    }

    /// The pod as a hawser `Workload` document (service account = label app = pod name).
    pub fn workload_yaml(&self) -> String {
        format!(
            "apiVersion: hawser.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {name}\n  namespace: default\n\
             \x20 labels: {{app: {name}}}\nspec:\n  serviceAccount: {name}\n  podIP: {ip}\n  nodeName: {node}\n  netns: {netns}\n",
            name = self.name,
            ip = self.ip,
            node = self.node,
            netns = self.netns_path.display()
        )
    }
}
