//! The two-node mesh most end-to-end tests start from.

use std::time::Duration;

use anyhow::Result;

use crate::{CaInfo, Node, Pod, Service, Testbed};

/// Two nodes joined by a link; pod a on node1, pod b on node2; the CA on node1; a daemon
/// on each node holding its pod's SVID.
pub struct Mesh {
    pub node1: Node,
    pub node2: Node,
    pub link: String,
    pub a: Pod,
    pub b: Pod,
    pub ca_service: Service,
    pub ca: CaInfo,
    pub d1: Service,
    pub d2: Service,
    /// Last, so that it outlives the processes above (fields drop in order): a failing
    /// test then prints their logs before the bed's files go.
    pub bed: Testbed,
}

impl Mesh {
    pub fn new() -> Result<Self> {
        Self::with_node_args(&[])
    }

    /// The mesh with `extra` arguments for both node daemons.
    pub fn with_node_args(extra: &[&str]) -> Result<Self> {
        Self::with_args(extra, extra)
    }

    /// The mesh with extra arguments for each node's daemon.
    pub fn with_args(node1_extra: &[&str], node2_extra: &[&str]) -> Result<Self> {
        let bed = Testbed::new()?;
        let node1 = bed.node("node1", 1)?;
        let node2 = bed.node("node2", 2)?;
        let link = bed.connect_nodes(&node1, &node2)?;
        let a = bed.pod(&node1, "a")?;
        let b = bed.pod(&node2, "b")?;
        bed.enroll(&[&a, &b])?;
        let (ca_service, ca) = bed.start_ca(&node1, &[&node1, &node2])?;
        let d1 = bed.start_node_with(&node1, Some(&ca), node1_extra)?;
        let d2 = bed.start_node_with(&node2, Some(&ca), node2_extra)?;
        for d in [&d1, &d2] {
            d.wait_for(
                "the pod's SVID and the bundle",
                Duration::from_secs(15),
                |log| log.contains("SVID issued") && log.contains("trust bundle updated"),
            )?;
        }
        Ok(Mesh {
            bed,
            node1,
            node2,
            link,
            a,
            b,
            ca_service,
            ca,
            d1,
            d2,
        })
    }
}
