//! The benchmarked network: two nodes joined by a link, client pod a on node1, server
//! pod b on node2 — plain (no hawser), the mesh with a daemon on each node (with a CA, or
//! without one: relays only), or a pair of HAProxy mTLS relays in the pods.

use std::time::Duration;

use anyhow::{Result, ensure};
use hawser_testbed::{Node, Pod, Service, Testbed, mesh::Mesh};

use super::relays::{self, Relays};

/// What carries the bytes between the pods.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Plain TCP, pods not enrolled, no daemon: the limit.
    Plain,
    /// hawser's tunnel with rustls encrypting in userspace.
    Userspace,
    /// The same with `--tunnel-reuse`: a pod's connections follow one another on a session.
    Serial,
    /// hawser's tunnel with kernel TLS and splice.
    Kernel,
    /// hawser without a CA: the same capture and the same relays through both daemons,
    /// plaintext between them. What the relays cost, TLS aside.
    Relay,
    /// A pair of HAProxy relays: mTLS (TLS 1.3, OpenSSL) between the pods.
    Haproxy,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Plain => "plain",
            Scenario::Userspace => "userspace",
            Scenario::Serial => "serial",
            Scenario::Kernel => "ktls",
            Scenario::Relay => "relay",
            Scenario::Haproxy => "haproxy",
        }
    }

    /// Descriptors to budget per relayed connection in a daemon: the app's and the
    /// tunnel's sockets (and with splice a pipe, two ends, per direction), plus headroom:
    /// near the limit connections get reset.
    pub fn descriptors_per_connection(self) -> usize {
        match self {
            Scenario::Kernel => 7,
            _ => 3,
        }
    }
}

pub enum Topology {
    Plain(Box<PlainNet>),
    Mesh(Box<Mesh>),
    /// The plain network with a daemon on each node and no CA (client side first); they
    /// stop before the network goes.
    Relayed(Box<[Service; 2]>, Box<PlainNet>),
    /// The plain network with the relays in its pods (client side first); they stop
    /// before the network goes.
    Relays(Box<Relays>, Box<PlainNet>),
}

pub struct PlainNet {
    a: Pod,
    b: Pod,
    /// Kept for the pods' lifetime.
    nodes: (Node, Node),
    /// Last: removes the namespaces after everything in them stopped.
    bed: Testbed,
}

impl Topology {
    /// The network for `scenario`, relaying `ports` where it has relays.
    pub fn new(scenario: Scenario, ports: &[u16]) -> Result<Self> {
        let topology = match scenario {
            Scenario::Plain => Topology::Plain(plain()?),
            Scenario::Userspace => mesh(&["--no-ktls"])?,
            Scenario::Serial => mesh(&["--no-ktls", "--tunnel-reuse"])?,
            Scenario::Kernel => mesh(&[])?,
            Scenario::Relay => relayed()?,
            Scenario::Haproxy => {
                let net = plain()?;
                let relays = relays::start(&net.bed, &net.a, &net.b, ports)?;
                Topology::Relays(Box::new(relays), net)
            }
        };
        for pod in [topology.client(), topology.server()] {
            tune(pod)?;
        }
        Ok(topology)
    }

    pub fn client(&self) -> &Pod {
        match self {
            Topology::Plain(p) | Topology::Relays(_, p) | Topology::Relayed(_, p) => &p.a,
            Topology::Mesh(m) => &m.a,
        }
    }

    pub fn server(&self) -> &Pod {
        match self {
            Topology::Plain(p) | Topology::Relays(_, p) | Topology::Relayed(_, p) => &p.b,
            Topology::Mesh(m) => &m.b,
        }
    }

    /// Where the client dials the server's `port`: its own relay, or the server pod.
    pub fn address(&self, port: u16) -> (String, u16) {
        match self {
            Topology::Relays(..) => ("127.0.0.1".into(), port),
            _ => (self.server().ip.clone(), port),
        }
    }

    /// The test bed: its scratch directory, for peers that need one.
    pub fn bed(&self) -> &Testbed {
        match self {
            Topology::Plain(p) | Topology::Relays(_, p) | Topology::Relayed(_, p) => &p.bed,
            Topology::Mesh(m) => &m.bed,
        }
    }

    /// The node daemons (client side first); none without hawser.
    pub fn daemons(&self) -> Vec<&Service> {
        match self {
            Topology::Mesh(m) => vec![&m.d1, &m.d2],
            Topology::Relayed(daemons, _) => daemons.iter().collect(),
            _ => vec![],
        }
    }

    /// Process ids of what carries the mTLS (client side first): the node daemons, or
    /// the relays; none for plain TCP.
    pub fn proxy_pids(&self) -> Vec<i32> {
        match self {
            Topology::Relays(relays, _) => relays.pids(),
            _ => self.daemons().iter().filter_map(|d| d.pid()).collect(),
        }
    }

    /// Restarts the daemons or relays, so that a memory measure starts from a heap that
    /// no earlier load has grown.
    pub fn restart_proxies(&mut self) -> Result<()> {
        let m = match self {
            Topology::Mesh(m) => m,
            Topology::Relays(relays, _) => return relays.restart(),
            Topology::Relayed(daemons, _) => {
                return daemons.iter_mut().try_for_each(Service::restart);
            }
            Topology::Plain(_) => return Ok(()),
        };
        for d in [&mut m.d1, &mut m.d2] {
            let issued = d.count("SVID issued");
            d.stop()?;
            d.restart()?;
            d.wait_for("the SVID again", Duration::from_secs(30), |log| {
                log.matches("SVID issued").count() > issued
            })?;
        }
        Ok(())
    }

    /// Checks that the daemons' access log names `path` (`ktls`/`userspace`, `none`
    /// without a CA) for the connections so far, and no other: a benchmark of the wrong
    /// path is worthless.
    pub fn expect_tls_path(&self, path: &str) -> Result<()> {
        for d in self.daemons() {
            let expected = format!("tls=\"{path}\"");
            d.wait_for(
                &format!("a {path} tunnel"),
                Duration::from_secs(10),
                |log| log.contains(&expected),
            )?;
            let other = d
                .lines_with(&["connection closed", "security=\"mtls\""])
                .into_iter()
                .find(|l| !l.contains(&expected));
            ensure!(other.is_none(), "a tunnel took another path: {other:?}");
        }
        Ok(())
    }
}

fn plain() -> Result<Box<PlainNet>> {
    let bed = Testbed::new()?;
    let node1 = bed.node("node1", 1)?;
    let node2 = bed.node("node2", 2)?;
    bed.connect_nodes(&node1, &node2)?;
    let a = bed.pod(&node1, "a")?;
    let b = bed.pod(&node2, "b")?;
    Ok(Box::new(PlainNet {
        a,
        b,
        nodes: (node1, node2),
        bed,
    }))
}

/// The plain network, its pods enrolled, a daemon without a CA on each node.
fn relayed() -> Result<Topology> {
    let net = plain()?;
    net.bed.enroll(&[&net.a, &net.b])?;
    let start = |node| -> Result<Service> {
        let mut daemon = net.bed.start_node_with(node, None, &[])?;
        // Thousands of connections make long logs: not worth printing at the end.
        daemon.echo_log_on_drop(false);
        Ok(daemon)
    };
    let daemons = [start(&net.nodes.0)?, start(&net.nodes.1)?];
    Ok(Topology::Relayed(Box::new(daemons), net))
}

fn mesh(node_args: &[&str]) -> Result<Topology> {
    let mut m = Mesh::with_node_args(node_args)?;
    // Thousands of connections make long logs: not worth printing at the end.
    for s in [&mut m.ca_service, &mut m.d1, &mut m.d2] {
        s.echo_log_on_drop(false);
    }
    Ok(Topology::Mesh(Box::new(m)))
}

/// Lets a pod open connections back to back (new-connection load leaves many sockets in
/// TIME_WAIT) — for the apps and for the daemon's sockets in the pod alike. Ephemeral
/// ports stay above the servers' ports (80, 5201, 7000), or a daemon's socket could
/// take one before its server binds it.
fn tune(pod: &Pod) -> Result<()> {
    for setting in [
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=10000 65000",
    ] {
        let out = pod.run(&["sysctl", "-qw", setting])?;
        ensure!(out.status.success(), "sysctl {setting} in {}", pod.name);
    }
    Ok(())
}
