//! One request and one reply per connection on the daemon's CNI socket, as JSON lines.

use std::{net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::check_dns_name;

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

impl Request {
    /// One request line, checked: what the daemon logs and keys hand-offs by must be a
    /// pod's name and namespace, an absolute namespace path and a printable container ID.
    pub fn parse(line: &str) -> Result<Self, String> {
        let request: Self = serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
        match &request {
            Request::Add {
                namespace,
                name,
                container_id,
                netns,
                ips: _,
            } => {
                check_dns_name("namespace", namespace)?;
                check_dns_name("name", name)?;
                check_container_id(container_id)?;
                if !netns.is_absolute() {
                    return Err(format!("netns must be an absolute path, got {netns:?}"));
                }
            }
            Request::Del { container_id } => check_container_id(container_id)?,
        }
        Ok(request)
    }
}

fn check_container_id(id: &str) -> Result<(), String> {
    let printable = id.chars().all(|c| c.is_ascii_graphic());
    match !id.is_empty() && id.len() <= 256 && printable {
        true => Ok(()),
        false => Err(format!(
            "container_id {id:?} is not 1-256 printable characters"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_before_they_are_used() {
        let add = r#"{"command":"ADD","namespace":"shop","name":"cart-1","container_id":"c0ffee","netns":"/var/run/netns/cni-1","ips":["10.1.0.9"]}"#;
        assert!(matches!(Request::parse(add), Ok(Request::Add { .. })));
        for (bad, says) in [
            (add.replace("shop", "../etc"), "namespace"),
            (add.replace("cart-1", ""), "name"),
            (add.replace("c0ffee", "c0 ffee"), "container_id"),
            (add.replace("/var/run/netns/cni-1", "cni-1"), "absolute"),
            (
                r#"{"command":"DEL","container_id":""}"#.into(),
                "container_id",
            ),
            ("{".into(), "bad request"),
        ] {
            let refused = Request::parse(&bad).unwrap_err();
            assert!(refused.contains(says), "{bad}: {refused}");
        }
    }
}
