//! One request and one reply per connection on the daemon's CNI socket, as JSON lines.

use std::{net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "UPPERCASE")]
pub enum Request {
    /// A pod's sandbox was created: its network namespace is `netns`, its addresses the
    /// ones the cluster's CNI plugin gave it (the API server learns them later).
    Add {
        namespace: String,
        name: String,
        container_id: String,
        netns: PathBuf,
        #[serde(default)]
        ips: Vec<IpAddr>,
    },
    /// The sandbox `container_id` is going away.
    Del { container_id: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    /// The pod is enrolled: its traffic flows through the daemon from now on.
    Enrolled,
    /// The pod is not part of the mesh; it starts as it would without hawser.
    NotInMesh,
    /// Done (a deletion).
    Ok,
    /// The pod is in the mesh but could not be enrolled: it must not start.
    Failed { reason: String },
}
