//! `hawser-cni` as a container runtime runs it: the command and the pod in the CNI
//! environment variables, the network configuration (with the previous plugin's result)
//! as JSON on stdin, the result or a CNI error as JSON on stdout.
//!
//! ADD asks the daemon to enroll the pod and passes the previous result on. When the
//! daemon cannot be reached the pod starts as it would without hawser (a node without a
//! running daemon must still start pods), unless the configuration says `failClosed`;
//! when the daemon says the pod is in the mesh but could not be enrolled, ADD fails and
//! the runtime retries, so a mesh pod never starts unprotected. DEL never fails.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{Value, json};

use hawser_model::cni::{Reply, Request};

/// Where the daemon listens unless the configuration says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/hawser/cni.sock";

/// CNI versions this plugin speaks (its result is the previous plugin's, unchanged).
const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// How long ADD waits for the daemon to enroll the pod.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// The network configuration hawser's entry adds to the chain.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetConf {
    cni_version: Option<String>,
    socket: Option<PathBuf>,
    #[serde(default)]
    fail_closed: bool,
    prev_result: Option<Value>,
}

/// The CNI environment of one invocation.
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    /// `CNI_ARGS` (`K8S_POD_NAMESPACE=…;K8S_POD_NAME=…`).
    pub args: String,
}

impl Invocation {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            args: var("CNI_ARGS"),
        }
    }

    fn pod(&self) -> Option<(String, String)> {
        let args: BTreeMap<&str, &str> = self
            .args
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        Some((
            args.get("K8S_POD_NAMESPACE")?.to_string(),
            args.get("K8S_POD_NAME")?.to_string(),
        ))
    }
}

/// A CNI error: what the runtime shows for a failed sandbox.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
}

impl CniError {
    /// Plugin-specific codes start at 100.
    fn new(msg: impl Into<String>) -> Self {
        Self {
            code: 100,
            msg: msg.into(),
        }
    }

    pub fn to_json(&self, version: &str) -> String {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg}).to_string()
    }
}

/// Runs one invocation; the text for stdout on success.
pub fn run(inv: &Invocation, stdin: &str) -> Result<String, CniError> {
    if inv.command == "VERSION" {
        return Ok(json!({"cniVersion": "1.0.0", "supportedVersions": VERSIONS}).to_string());
    }
    let conf: NetConf = serde_json::from_str(stdin)
        .map_err(|e| CniError::new(format!("network configuration: {e}")))?;
    let version = conf.cni_version.clone().unwrap_or_else(|| "1.0.0".into());
    let socket = conf.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into());
    let passed_on = || {
        let mut result = conf
            .prev_result
            .clone()
            .unwrap_or_else(|| json!({"interfaces": [], "ips": []}));
        result["cniVersion"] = json!(version);
        result.to_string()
    };
    match inv.command.as_str() {
        "ADD" => add(inv, &socket, &conf).map(|()| passed_on()),
        "DEL" => {
            let request = Request::Del {
                container_id: inv.container_id.clone(),
            };
            if let Err(e) = ask(&socket, &request, Duration::from_secs(10)) {
                eprintln!("hawser-cni: DEL {}: {e:#} (ignored)", inv.container_id);
            }
            Ok(String::new())
        }
        "CHECK" => Ok(String::new()),
        other => Err(CniError::new(format!("unknown CNI_COMMAND {other:?}"))),
    }
}

fn add(inv: &Invocation, socket: &Path, conf: &NetConf) -> Result<(), CniError> {
    // Not a Kubernetes pod (no pod name): nothing to enroll.
    let Some((namespace, name)) = inv.pod() else {
        return Ok(());
    };
    let request = Request::Add {
        namespace: namespace.clone(),
        name: name.clone(),
        container_id: inv.container_id.clone(),
        netns: inv.netns.clone().into(),
        ips: conf.prev_result.as_ref().map(addresses).unwrap_or_default(),
    };
    match ask(socket, &request, ENROLL_TIMEOUT) {
        Ok(Reply::Failed { reason }) => Err(CniError::new(format!(
            "hawser could not enroll {namespace}/{name}: {reason}"
        ))),
        Ok(_) => Ok(()),
        Err(e) if conf.fail_closed => Err(CniError::new(format!(
            "hawser node daemon unreachable at {} and failClosed is set: {e:#}",
            socket.display()
        ))),
        Err(e) => {
            eprintln!(
                "hawser-cni: {namespace}/{name} starts without hawser: daemon unreachable at {}: {e:#}",
                socket.display()
            );
            Ok(())
        }
    }
}

/// The addresses of a CNI result (`ips[].address`, CIDR notation).
fn addresses(result: &Value) -> Vec<std::net::IpAddr> {
    let ips = result["ips"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    ips.iter()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect()
}

/// One request to the daemon, one reply.
fn ask(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply> {
    let mut stream =
        UnixStream::connect(socket).with_context(|| format!("connect {}", socket.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .context("no reply from the daemon")?;
    serde_json::from_str(&reply).with_context(|| format!("bad reply {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(command: &str, args: &str) -> Invocation {
        Invocation {
            command: command.into(),
            container_id: "c0ffee".into(),
            netns: "/var/run/netns/cni-1".into(),
            args: args.into(),
        }
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"k8s","type":"hawser-cni",
        "socket":"/nonexistent/hawser.sock",
        "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.2/24"}]}}"#;
    const POD: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1";

    #[test]
    fn without_a_daemon_add_passes_the_previous_result_on() {
        let out = run(&invocation("ADD", POD), CONF).unwrap();
        let result: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(result["ips"][0]["address"], "10.1.0.2/24");
        assert_eq!(result["cniVersion"], "1.0.0");
    }

    #[test]
    fn the_previous_results_addresses_go_to_the_daemon() {
        let result = json!({"ips": [{"address": "10.1.0.2/24"}, {"address": "fd00::2/64"},
            {"address": "junk"}]});
        let ips: Vec<String> = addresses(&result).iter().map(|ip| ip.to_string()).collect();
        assert_eq!(ips, ["10.1.0.2", "fd00::2"]);
    }

    #[test]
    fn fail_closed_refuses_a_pod_the_daemon_cannot_take() {
        let conf = CONF.replace("\"type\"", "\"failClosed\":true,\"type\"");
        let err = run(&invocation("ADD", POD), &conf).unwrap_err();
        assert!(err.msg.contains("failClosed"), "{}", err.msg);
        assert!(err.to_json("1.0.0").contains("\"code\":100"));
    }

    #[test]
    fn del_and_version_never_fail_and_junk_is_a_clear_error() {
        assert_eq!(run(&invocation("DEL", POD), CONF).unwrap(), "");
        assert!(
            run(&invocation("VERSION", ""), "")
                .unwrap()
                .contains("supportedVersions")
        );
        let err = run(&invocation("ADD", POD), "{not json").unwrap_err();
        assert!(err.msg.starts_with("network configuration"), "{}", err.msg);
    }
}
