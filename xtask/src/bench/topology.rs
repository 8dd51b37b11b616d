//! The benchmarked network: two nodes joined by a link, client pod a on node1, server
//! pod b on node2 — either plain (no hawser) or the mesh with a daemon on each node.

use std::time::Duration;

use anyhow::{Result, ensure};
use hawser_testbed::{Node, Pod, Service, Testbed, mesh::Mesh};

/// What carries the bytes between the pods.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Plain TCP, pods not enrolled, no daemon: the limit.
    Plain,
    /// hawser's tunnel with rustls encrypting in userspace.
    Userspace,
    /// hawser's tunnel with kernel TLS and splice.
    Kernel,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Plain => "plain",
            Scenario::Userspace => "userspace",
            Scenario::Kernel => "ktls",
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
}

pub struct PlainNet {
    a: Pod,
    b: Pod,
    /// Kept for the pods' lifetime.
    _nodes: (Node, Node),
    /// Last: removes the namespaces after everything in them stopped.
    bed: Testbed,
}

impl Topology {
    pub fn new(scenario: Scenario) -> Result<Self> {
        let topology = match scenario {
            Scenario::Plain => plain()?,
            Scenario::Userspace => mesh(&["--no-ktls"])?,
            Scenario::Kernel => mesh(&[])?,
        };
        for pod in [topology.client(), topology.server()] {
            tune(pod)?;
        }
        Ok(topology)
    }

    pub fn client(&self) -> &Pod {
        match self {
            Topology::Plain(p) => &p.a,
            Topology::Mesh(m) => &m.a,
        }
    }

    pub fn server(&self) -> &Pod {
        match self {
            Topology::Plain(p) => &p.b,
            Topology::Mesh(m) => &m.b,
        }
    }

    /// The test bed: its scratch directory, for peers that need one.
    pub fn bed(&self) -> &Testbed {
        match self {
            Topology::Plain(p) => &p.bed,
            Topology::Mesh(m) => &m.bed,
        }
    }

    /// The node daemons (client side first); none without hawser.
    pub fn daemons(&self) -> Vec<&Service> {
        match self {
            Topology::Plain(_) => vec![],
            Topology::Mesh(m) => vec![&m.d1, &m.d2],
        }
    }

    /// Process ids of the node daemons.
    pub fn daemon_pids(&self) -> Vec<i32> {
        self.daemons().iter().filter_map(|d| d.pid()).collect()
    }

    /// Restarts the daemons, so that a memory measure starts from a heap that no earlier
    /// load has grown.
    pub fn restart_daemons(&mut self) -> Result<()> {
        let Topology::Mesh(m) = self else {
            return Ok(());
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

    /// Checks that the daemons' access log names `path` (`ktls`/`userspace`) for the
    /// connections so far, and no other: a benchmark of the wrong path is worthless.
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

fn plain() -> Result<Topology> {
    let bed = Testbed::new()?;
    let node1 = bed.node("node1", 1)?;
    let node2 = bed.node("node2", 2)?;
    bed.connect_nodes(&node1, &node2)?;
    let a = bed.pod(&node1, "a")?;
    let b = bed.pod(&node2, "b")?;
    Ok(Topology::Plain(Box::new(PlainNet {
        a,
        b,
        _nodes: (node1, node2),
        bed,
    })))
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
