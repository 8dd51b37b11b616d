//! Loading, pinning and attaching the eBPF programs; the maps the daemon fills.
//!
//! Two objects: `hawser` holds the cgroup programs (connect capture, original
//! destination), attached once to the cgroup above the pods; `hawser-steer` holds the
//! sk_lookup program, loaded and attached once per pod with the pod's netns cookie.
//!
//! The daemon's own connects are exempt from capture by its cgroup (`DAEMON_CGROUPS`),
//! which a pod cannot join, never by a socket mark or uid, which a pod can set.
//!
//! Fail closed: the cgroup links, every pod's sk_lookup link and the maps are pinned in
//! bpffs. When the daemon stops, the programs stay attached and keep steering enrolled pods
//! to listeners that no longer exist, so their connections fail instead of bypassing the
//! mesh. A restarted daemon reuses the pinned maps, attaches fresh links, then swaps the
//! pins, so there is no moment without a program attached.
//!
//! The original destination of a captured connection reaches the daemon through a map
//! keyed by (netns cookie, client address), written by `sockops` when the client's port is
//! bound and before its SYN is sent. We chose this over answering `SO_ORIGINAL_DST` from a
//! `cgroup/getsockopt` program: the daemon is the only reader, the lookup is one map read
//! with no ordering race against accept, and it works the same for IPv4 and IPv6.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, SockHash},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SkLookup, SockOps,
        links::{FdLink, PinnedLink},
    },
};
use hawser_common::{
    AF_INET, AF_INET6, ConnKey, DeliveryKey, DeliveryPass, ENROLLED, Enrollment, LISTENER_INBOUND,
    LISTENER_OUTBOUND, LISTENER_TUNNEL, ListenerKey, POD_NETNS_COOKIE, SockAddr, maps,
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hawser"));
static STEER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hawser-steer"));

const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;
const CGROUP_PROGRAMS: [&str; 3] = ["hawser_connect4", "hawser_connect6", "hawser_sockops"];
const SK_LOOKUP: &str = "hawser_sk_lookup";
/// A map update's flag: only a key not in the map yet.
const BPF_NOEXIST: u64 = 1;
/// Pinned maps of earlier layouts (renamed since): unpinned on load, so that each is freed
/// once the daemon and programs of the earlier run that still use it are gone.
const RETIRED_MAPS: [&str; 1] = ["DELIVERIES"];

/// The loaded programs and the maps the daemon writes.
pub struct Dataplane {
    pin_dir: PathBuf,
    enrolled_netns: Mutex<HashMap<MapData, u64, Enrollment>>,
    listeners: Mutex<SockHash<MapData, ListenerKey>>,
    orig_by_client: Mutex<HashMap<MapData, ConnKey, SockAddr>>,
    deliveries: Mutex<HashMap<MapData, DeliveryKey, DeliveryPass>>,
}

impl Dataplane {
    /// Loads the programs (reusing pinned maps under `pin_dir`) and attaches the connect and
    /// sockops programs to the cgroup v2 directory `cgroup`, under which the pods live.
    pub fn load(pin_dir: &Path, cgroup: &Path) -> Result<Self> {
        check_capabilities()?;
        check_fs(
            existing_ancestor(pin_dir),
            BPF_FS_MAGIC,
            "bpffs",
            "mount -t bpf bpf /sys/fs/bpf",
        )?;
        check_fs(
            cgroup,
            CGROUP2_SUPER_MAGIC,
            "a cgroup v2 directory",
            "mount -t cgroup2 none /sys/fs/cgroup",
        )?;
        for dir in [pin_dir.join("maps"), pin_dir.join("links")] {
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir.join("maps"))
            .load(EBPF_OBJECT)
            .context("loading the eBPF programs (needs CAP_BPF and CAP_NET_ADMIN, or root)")?;
        // Exempt before attaching: the hooks must never capture the daemon itself. (The
        // map stays open until the programs that use it are loaded.)
        let mut daemon_cgroups = HashMap::try_from(take_map(&mut ebpf, maps::DAEMON_CGROUPS)?)?;
        exempt_own_cgroup(&mut daemon_cgroups)?;

        let cgroup_fd = std::fs::File::open(cgroup)
            .with_context(|| format!("open cgroup {}", cgroup.display()))?;
        for name in CGROUP_PROGRAMS {
            let link = attach_to_cgroup(&mut ebpf, name, &cgroup_fd)?;
            replace_pin(link, &pin_dir.join("links").join(name))?;
        }
        drop(daemon_cgroups);
        let enrolled_netns = HashMap::try_from(take_map(&mut ebpf, maps::ENROLLED_NETNS)?)?;
        let orig_by_client = HashMap::try_from(take_map(&mut ebpf, maps::ORIG_BY_CLIENT)?)?;
        // The steering object's maps, opened (or created and pinned) without loading its
        // program: each pod gets its own copy of the program (see `attach_steering`).
        let mut steer = load_steer(pin_dir, 0)?;
        let listeners = SockHash::try_from(take_map(&mut steer, maps::LISTENERS)?)?;
        let deliveries = HashMap::try_from(take_map(&mut steer, maps::DELIVERY_PASSES)?)?;
        unpin_retired_maps(&pin_dir.join("maps"));
        tracing::info!(pin_dir = %pin_dir.display(), cgroup = %cgroup.display(), "eBPF programs attached");
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            enrolled_netns: Mutex::new(enrolled_netns),
            listeners: Mutex::new(listeners),
            orig_by_client: Mutex::new(orig_by_client),
            deliveries: Mutex::new(deliveries),
        })
    }

    /// Captures the pod's outbound connects (by its netns).
    pub fn enroll(&self, netns_cookie: u64) -> Result<()> {
        let value = Enrollment { flags: ENROLLED };
        self.enrolled_netns
            .lock()
            .unwrap()
            .insert(netns_cookie, value, 0)?;
        Ok(())
    }

    /// Stops capturing and steering the pod. Missing entries are fine: un-enrollment is
    /// idempotent.
    pub fn unenroll(&self, netns_cookie: u64) {
        let _ = self.enrolled_netns.lock().unwrap().remove(&netns_cookie);
        self.detach_steering(netns_cookie);
        let mut listeners = self.listeners.lock().unwrap();
        for kind in [LISTENER_INBOUND, LISTENER_TUNNEL, LISTENER_OUTBOUND] {
            let _ = listeners.remove(&listener_key(netns_cookie, kind));
        }
    }

    /// Registers one of the pod's listeners for steering. The kernel drops the entry by
    /// itself when the socket closes, so a dead daemon's pods are refused, not bypassed.
    pub fn set_listener(&self, netns_cookie: u64, kind: u32, socket: &impl AsRawFd) -> Result<()> {
        self.listeners.lock().unwrap().insert(
            listener_key(netns_cookie, kind),
            socket.as_raw_fd(),
            0,
        )?;
        Ok(())
    }

    /// Attaches steering to a pod's namespace: a copy of the sk_lookup program that knows
    /// the namespace's cookie, its link pinned per cookie. Until the pod's listeners are
    /// registered, everything it would steer is refused.
    pub fn attach_steering(&self, netns: &impl AsFd, netns_cookie: u64) -> Result<()> {
        let mut steer = load_steer(&self.pin_dir, netns_cookie)?;
        let prog: &mut SkLookup = program(&mut steer, SK_LOOKUP)?.try_into()?;
        prog.load().context("load sk_lookup")?;
        let id = prog.attach(netns).context("attach sk_lookup")?;
        let link: FdLink = prog.take_link(id)?.into();
        replace_pin(link, &self.sk_lookup_pin(netns_cookie))
    }

    /// Removes steering from a pod's namespace.
    pub fn detach_steering(&self, netns_cookie: u64) {
        let _ = std::fs::remove_file(self.sk_lookup_pin(netns_cookie));
    }

    /// Reads (and forgets) where a captured connection was going.
    pub fn take_original_dst(&self, netns_cookie: u64, client: SocketAddr) -> Option<SocketAddr> {
        let key = ConnKey {
            netns_cookie,
            client: sock_addr(client),
            _pad: 0,
        };
        let mut map = self.orig_by_client.lock().unwrap();
        let orig = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(socket_addr(orig))
    }

    /// Tells sk_lookup that the connection `client` -> `app` about to be opened is the
    /// daemon delivering to the app, to be let through for at most `lifetime`. False when
    /// another delivery holds the pass for this 4-tuple (two delivery sockets may take the
    /// same port, see `proxy::sockets::transparent`): the pass is one connection's, never
    /// shared.
    pub fn announce_delivery(
        &self,
        client: SocketAddr,
        app: SocketAddr,
        lifetime: Duration,
    ) -> Result<bool, aya::maps::MapError> {
        let key = delivery_key(client, app);
        let pass = DeliveryPass {
            expires_ns: monotonic_ns()
                .saturating_add(u64::try_from(lifetime.as_nanos()).unwrap_or(u64::MAX)),
        };
        match self
            .deliveries
            .lock()
            .unwrap()
            .insert(key, pass, BPF_NOEXIST)
        {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Once connected (or failed), the delivery needs no pass any more.
    pub fn forget_delivery(&self, client: SocketAddr, app: SocketAddr) {
        let _ = self
            .deliveries
            .lock()
            .unwrap()
            .remove(&delivery_key(client, app));
    }

    /// Forgets every delivery pass: for a cold start, when no daemon is delivering. A pass
    /// outlives its connect only when the daemon that announced it died connecting (its
    /// drop guard never ran); until it expires it lets a connection with that 4-tuple
    /// from the network (a spoofed or borrowed client address) around the mesh to the app.
    pub fn forget_all_deliveries(&self) {
        let mut deliveries = self.deliveries.lock().unwrap();
        let stale: Vec<DeliveryKey> = deliveries.keys().filter_map(Result::ok).collect();
        if !stale.is_empty() {
            tracing::info!(
                passes = stale.len(),
                "forgetting delivery passes of an earlier run"
            );
        }
        for key in stale {
            let _ = deliveries.remove(&key);
        }
    }

    /// Releases pods enrolled by an earlier run that are no longer configured. Pods still
    /// configured stay captured even when enrolling them failed: they stay closed.
    pub fn prune(&self, keep_netns: &[u64]) {
        let stale: Vec<u64> = self
            .enrolled_netns
            .lock()
            .unwrap()
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !keep_netns.contains(k))
            .collect();
        for cookie in stale {
            tracing::info!(
                netns_cookie = cookie,
                "releasing a pod enrolled by an earlier run and no longer configured"
            );
            self.unenroll(cookie);
        }
    }

    /// Whether the cgroup programs are still attached (their link pins exist), or what is
    /// missing.
    pub fn attached(&self) -> Result<(), String> {
        let links = self.pin_dir.join("links");
        match CGROUP_PROGRAMS.iter().find(|p| !links.join(p).exists()) {
            None => Ok(()),
            Some(p) => Err(format!(
                "eBPF program {p} is not attached (pin gone from {})",
                links.display()
            )),
        }
    }

    /// Entries in each of the daemon's maps, by map name.
    pub fn map_entries(&self) -> Vec<(&'static str, usize)> {
        fn count<K>(keys: impl Iterator<Item = Result<K, aya::maps::MapError>>) -> usize {
            keys.filter(Result::is_ok).count()
        }
        vec![
            (
                maps::ENROLLED_NETNS,
                count(self.enrolled_netns.lock().unwrap().keys()),
            ),
            (
                maps::LISTENERS,
                count(self.listeners.lock().unwrap().keys()),
            ),
            (
                maps::ORIG_BY_CLIENT,
                count(self.orig_by_client.lock().unwrap().keys()),
            ),
            (
                maps::DELIVERY_PASSES,
                count(self.deliveries.lock().unwrap().keys()),
            ),
        ]
    }

    fn sk_lookup_pin(&self, netns_cookie: u64) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("sk_lookup-{netns_cookie}"))
    }
}

/// Removes every pin under `pin_dir`: programs detach, maps are freed. Pods stop being
/// steered, so this is for decommissioning a node (and for tests), not for restarts.
pub fn uninstall(pin_dir: &Path) -> Result<()> {
    if pin_dir.exists() {
        std::fs::remove_dir_all(pin_dir)
            .with_context(|| format!("remove {}", pin_dir.display()))?;
    }
    Ok(())
}

fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors().find(|p| p.exists()).unwrap_or(path)
}

/// Capabilities the daemon needs, by bit number (linux/capability.h), and why.
const CAPABILITIES: [(u32, &str, &str); 3] = [
    (39, "CAP_BPF", "load the eBPF programs"),
    (12, "CAP_NET_ADMIN", "attach them and set pods' routing"),
    (21, "CAP_SYS_ADMIN", "enter pods' network namespaces"),
];

/// Says which capabilities are missing before anything fails half-way.
fn check_capabilities() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .context("no CapEff in /proc/self/status")?;
    let missing: Vec<String> = CAPABILITIES
        .iter()
        .filter(|(bit, _, _)| effective & (1 << bit) == 0)
        .map(|(_, name, why)| format!("{name} (to {why})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing capabilities: {}; run as root or grant them (a DaemonSet's securityContext.capabilities.add)",
            missing.join(", ")
        );
    }
    Ok(())
}

fn check_fs(path: &Path, magic: i64, what: &str, fix: &str) -> Result<()> {
    let stat = nix::sys::statfs::statfs(path).with_context(|| {
        format!(
            "{} does not exist; it must be {what} (try: {fix})",
            path.display()
        )
    })?;
    if stat.filesystem_type().0 as i64 != magic {
        bail!("{} is not {what} (try: {fix})", path.display());
    }
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("eBPF object has no program {name}"))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("eBPF object has no map {name}"))
}

fn attach_to_cgroup(ebpf: &mut Ebpf, name: &str, cgroup: &std::fs::File) -> Result<FdLink> {
    let prog = program(ebpf, name)?;
    // `Single` still stacks links; aya's AllowMultiple makes link_create fail (EINVAL).
    let mode = CgroupAttachMode::Single;
    let link = match prog {
        aya::programs::Program::CgroupSockAddr(p) => attach_sock_addr(p, cgroup, mode)?,
        aya::programs::Program::SockOps(p) => attach_sock_ops(p, cgroup, mode)?,
        _ => bail!("{name} is not a cgroup program"),
    };
    Ok(link)
}

fn attach_sock_addr(
    p: &mut CgroupSockAddr,
    cgroup: &std::fs::File,
    mode: CgroupAttachMode,
) -> Result<FdLink> {
    p.load()?;
    let id = p.attach(cgroup, mode)?;
    Ok(p.take_link(id)?.try_into()?)
}

fn attach_sock_ops(
    p: &mut SockOps,
    cgroup: &std::fs::File,
    mode: CgroupAttachMode,
) -> Result<FdLink> {
    p.load()?;
    let id = p.attach(cgroup, mode)?;
    Ok(p.take_link(id)?.try_into()?)
}

/// Pins `link` at `path`, replacing (and so detaching) a link pinned there before. The new
/// link is attached before the old one goes, so steering never lapses.
fn replace_pin(link: FdLink, path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::debug!(pin = %path.display(), "replaced a link pinned by an earlier run")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
    }
    let _: PinnedLink = link
        .pin(path)
        .with_context(|| format!("pin {}", path.display()))?;
    Ok(())
}

/// Now on the clock sk_lookup reads (`bpf_ktime_get_ns`). The daemon runs in the initial
/// time namespace, as a DaemonSet does: a namespace's offset would shift every deadline.
fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always there");
    Duration::from(now).as_nanos() as u64
}

fn unpin_retired_maps(maps_dir: &Path) {
    for name in RETIRED_MAPS {
        match std::fs::remove_file(maps_dir.join(name)) {
            Ok(()) => tracing::info!(map = name, "unpinned a map of an earlier layout"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(map = name, error = %e, "cannot unpin a retired map"),
        }
    }
}

fn delivery_key(client: SocketAddr, app: SocketAddr) -> DeliveryKey {
    // sk_lookup sees the plain IPv4 form of v4-mapped addresses.
    let plain = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    DeliveryKey {
        client: sock_addr(plain(client)),
        app: sock_addr(plain(app)),
    }
}

fn listener_key(netns_cookie: u64, kind: u32) -> ListenerKey {
    ListenerKey {
        netns_cookie,
        kind,
        _pad: 0,
    }
}

/// Loads the steering object for one pod: its maps are the pinned ones, its global the
/// pod's netns cookie. Its program is not loaded into the kernel yet.
fn load_steer(pin_dir: &Path, netns_cookie: u64) -> Result<Ebpf> {
    EbpfLoader::new()
        .default_map_pin_directory(pin_dir.join("maps"))
        .override_global(POD_NETNS_COOKIE, &netns_cookie, true)
        .load(STEER_OBJECT)
        .context("loading the steering object")
}

/// Records the daemon's cgroup as exempt from capture, and forgets earlier daemons'
/// (cgroup ids are never reused, so a stale entry exempts nothing; this bounds the map).
fn exempt_own_cgroup(cgroups: &mut HashMap<MapData, u64, u8>) -> Result<()> {
    let own = own_cgroup_id()?;
    let stale: Vec<u64> = cgroups
        .keys()
        .filter_map(|k| k.ok())
        .filter(|id| *id != own)
        .collect();
    for id in stale {
        let _ = cgroups.remove(&id);
    }
    cgroups.insert(own, 1, 0)?;
    tracing::debug!(
        cgroup_id = own,
        "the daemon's cgroup is exempt from capture"
    );
    Ok(())
}

/// The cgroup v2 id of this process's cgroup: the inode of its directory in cgroup2fs,
/// which is what `bpf_get_current_cgroup_id` returns.
fn own_cgroup_id() -> Result<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").context("read /proc/self/cgroup")?;
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("this process is in no cgroup v2 (no 0:: line in /proc/self/cgroup)")?;
    let mounts =
        std::fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    let dir = cgroup2_dir(&mounts, path).with_context(|| {
        format!("cgroup {path} is under no mounted cgroup2 (mount -t cgroup2 none /sys/fs/cgroup)")
    })?;
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(&dir)
        .with_context(|| format!("stat {}", dir.display()))?
        .ino())
}

/// Where cgroup `path` (as /proc/self/cgroup names it) is in this mount namespace.
fn cgroup2_dir(mountinfo: &str, path: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        let fields: Vec<&str> = mount.split_whitespace().collect();
        let (root, point) = (fields.get(3)?, fields.get(4)?);
        let rest = path.strip_prefix(root.trim_end_matches('/'))?;
        Some(Path::new(point).join(rest.trim_start_matches('/')))
    })
}

fn sock_addr(addr: SocketAddr) -> SockAddr {
    match addr {
        SocketAddr::V4(v4) => SockAddr {
            addr: [u32::from_ne_bytes(v4.ip().octets()), 0, 0, 0],
            port: v4.port(),
            family: AF_INET,
        },
        SocketAddr::V6(v6) => {
            let o = v6.ip().octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            SockAddr {
                addr: [word(0), word(4), word(8), word(12)],
                port: v6.port(),
                family: AF_INET6,
            }
        }
    }
}

fn socket_addr(s: SockAddr) -> SocketAddr {
    let ip = if s.family == AF_INET {
        IpAddr::V4(Ipv4Addr::from(s.addr[0].to_ne_bytes()))
    } else {
        let mut o = [0u8; 16];
        for (i, word) in s.addr.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o)).to_canonical()
    };
    SocketAddr::new(ip, s.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_of_an_earlier_layout_is_unpinned_and_the_current_ones_stay() {
        let maps = tempfile::tempdir().unwrap();
        for name in RETIRED_MAPS
            .iter()
            .chain(&[maps::DELIVERY_PASSES, maps::LISTENERS])
        {
            std::fs::write(maps.path().join(name), b"").unwrap();
        }
        unpin_retired_maps(maps.path());
        let mut left: Vec<String> = std::fs::read_dir(maps.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [maps::DELIVERY_PASSES, maps::LISTENERS]);
        // Again, with nothing to unpin: no error, nothing else touched.
        unpin_retired_maps(maps.path());
        assert_eq!(std::fs::read_dir(maps.path()).unwrap().count(), 2);
    }

    #[test]
    fn addresses_round_trip_through_map_layout() {
        for text in ["10.1.2.3:80", "[fd00::1]:443", "[::1]:15001"] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(socket_addr(sock_addr(addr)), addr);
        }
        // The kernel's view: IPv4 in network byte order in the first word.
        let s = sock_addr("1.2.3.4:5".parse().unwrap());
        assert_eq!(s.addr[0].to_ne_bytes(), [1, 2, 3, 4]);
    }

    #[test]
    fn the_own_cgroup_is_found_under_the_cgroup2_mount() {
        let mountinfo = "\
22 1 0:21 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw
30 22 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_dir(mountinfo, "/kubepods/pod1"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/kubepods/pod1"))
        );
        // In a cgroup namespace (a DaemonSet pod): the mount's root is the pod's cgroup.
        let namespaced = "40 22 0:26 /kubepods/hawser /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_dir(namespaced, "/kubepods/hawser"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_dir("22 1 0:21 / /sys rw - sysfs sysfs rw\n", "/"),
            None
        );
    }

    #[test]
    fn v4_mapped_destinations_come_back_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:8080".parse().unwrap();
        assert_eq!(
            socket_addr(sock_addr(mapped)),
            "10.0.0.7:8080".parse::<SocketAddr>().unwrap()
        );
    }
}
