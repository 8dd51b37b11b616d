//! `hawser-cni`: the CNI plugin the container runtime runs (CNI environment, JSON on
//! stdin), and `hawser-cni install`, which the DaemonSet's init container runs to put the
//! plugin in place on the host.

use std::{io::Read, path::PathBuf, process::ExitCode};

use clap::Parser;
use hawser::cni::{install::Install, plugin};

/// Installs the plugin on the host: copies this binary into the CNI binary directory
/// and chains it after the cluster's CNI configuration.
#[derive(Parser)]
#[command(name = "hawser-cni install")]
struct InstallArgs {
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The node daemon's CNI socket (`hawser node --cni-socket`).
    #[arg(long, default_value = plugin::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Refuse to start pods while the daemon cannot be reached (default: they start
    /// without hawser).
    #[arg(long)]
    fail_closed: bool,
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("install") {
        return install(InstallArgs::parse_from(std::env::args().skip(1)));
    }
    let invocation = plugin::Invocation::from_env();
    let mut stdin = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut stdin) {
        eprintln!("hawser-cni: read stdin: {e}");
        return ExitCode::FAILURE;
    }
    match plugin::run(&invocation, &stdin) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            print!("{}", e.to_json("1.0.0"));
            ExitCode::FAILURE
        }
    }
}

fn install(args: InstallArgs) -> ExitCode {
    let install = Install {
        bin_dir: args.bin_dir,
        conf_dir: args.conf_dir,
        socket: args.socket,
        fail_closed: args.fail_closed,
    };
    match install.run() {
        Ok(conf) => {
            println!("hawser-cni installed and chained in {}", conf.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hawser-cni install: {e:#}");
            ExitCode::FAILURE
        }
    }
}
