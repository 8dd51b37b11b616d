use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use hawser::{
    logging::{self, LogFormat},
    node::{self, NodeConfig},
    redirect::dataplane,
};

/// hawser: sidecar-less mTLS for every pod on the node.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "HAWSER_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node daemon: capture enrolled pods' TCP traffic and relay it.
    Node {
        /// This node's name; only workloads with this `spec.nodeName` are enrolled.
        #[arg(long, env = "HAWSER_NODE_NAME")]
        node_name: String,
        /// Directory of workload YAML, reloaded when it changes.
        #[arg(long, env = "HAWSER_CONFIG_DIR")]
        config_dir: PathBuf,
        #[command(flatten)]
        bpf: BpfArgs,
        /// cgroup v2 directory under which the pods' cgroups live.
        #[arg(long, default_value = "/sys/fs/cgroup", env = "HAWSER_CGROUP")]
        cgroup: PathBuf,
        /// How often to look for configuration changes, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        reload_interval_ms: u64,
    },
    /// Detach every program and remove every map pinned by `hawser node`. Enrolled pods
    /// are no longer captured afterwards: use it to decommission a node.
    Uninstall {
        #[command(flatten)]
        bpf: BpfArgs,
    },
}

#[derive(clap::Args)]
struct BpfArgs {
    /// Directory in bpffs for hawser's pinned programs and maps.
    #[arg(long, default_value = "/sys/fs/bpf/hawser", env = "HAWSER_PIN_DIR")]
    pin_dir: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        Command::Node {
            node_name,
            config_dir,
            bpf,
            cgroup,
            reload_interval_ms,
        } => {
            node::run(NodeConfig {
                node_name,
                config_dir,
                pin_dir: bpf.pin_dir,
                cgroup,
                reload_interval: Duration::from_millis(reload_interval_ms),
            })
            .await
        }
        Command::Uninstall { bpf } => dataplane::uninstall(&bpf.pin_dir),
    }
}
