use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hawser::{
    admin::cli::{self, AdminClient},
    app,
    ca::{self, CaConfig},
    credentials::CredentialRoots,
    identity::{
        certs,
        pki::{self, CaSpec, KeyType},
        spiffe_bundle,
    },
    logging::{self, LogFormat},
    node::{AfterHandover, CaSettings, NodeConfig},
    proxy::sockets::Keepalive,
    redirect::dataplane,
    svid::SvidConfig,
    workload,
};
use hawser_model::egress::OutboundPolicy;

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
    Node(NodeArgs),
    /// Run the built-in CA (Istio's certificate API over gRPC/TLS).
    Ca(CaArgs),
    /// Create CA certificates (replaces Istio's openssl Makefiles).
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Detach every program and remove every map pinned by `hawser node`. Enrolled pods
    /// are no longer captured afterwards: use it to decommission a node.
    Uninstall {
        #[command(flatten)]
        bpf: BpfArgs,
    },
    /// Is the daemon ready; its pods and their SVIDs.
    Status(AdminArgs),
    /// The certificates the daemon holds, per identity, and the trust roots; with
    /// `--peer`, what another daemon's tunnel port presents, checked against them.
    Certs(CertsArgs),
    /// The workloads the daemon knows, and which are enrolled on this node.
    Workloads(AdminArgs),
    /// Policy questions to the daemon.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(clap::Args)]
struct CertsArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// A peer daemon's tunnel port (a pod's IP and 15008).
    #[arg(long)]
    peer: Option<SocketAddr>,
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The daemon's admin API.
    #[arg(long, default_value = "http://127.0.0.1:15000", env = "HAWSER_ADMIN")]
    admin: String,
    /// JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Would a connection be admitted, and which rule decides.
    Check {
        /// The caller: a SPIFFE ID, a workload (`namespace/name`, or `name` in `default`),
        /// or `none` for a caller without a mesh identity.
        #[arg(long)]
        from: String,
        /// The destination: `workload:port`.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SourceKind {
    Local,
    Kubernetes,
}

#[derive(clap::Args)]
struct NodeArgs {
    /// This node's name; only workloads with this `spec.nodeName` are enrolled.
    #[arg(long, env = "HAWSER_NODE_NAME")]
    node_name: String,
    /// Where workloads and policies come from: `local` (`--config-dir`) or
    /// `kubernetes` (the API server; pods' namespaces from `hawser-cni`).
    #[arg(
        long,
        value_enum,
        default_value = "local",
        env = "HAWSER_WORKLOAD_SOURCE"
    )]
    workload_source: SourceKind,
    /// Directory of workload YAML, reloaded when it changes (the local source).
    #[arg(
        long,
        env = "HAWSER_CONFIG_DIR",
        required_if_eq("workload_source", "local")
    )]
    config_dir: Option<PathBuf>,
    #[command(flatten)]
    bpf: BpfArgs,
    /// cgroup v2 directory under which the pods' cgroups live.
    #[arg(long, default_value = "/sys/fs/cgroup", env = "HAWSER_CGROUP")]
    cgroup: PathBuf,
    /// How often to look for configuration changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    reload_interval_ms: u64,
    #[command(flatten)]
    ca: CaClientArgs,
    /// The admin API; keep it on localhost.
    #[arg(long, default_value = "127.0.0.1:15000", env = "HAWSER_ADMIN_ADDR")]
    admin_addr: SocketAddr,
    /// Where Prometheus scrapes `/metrics` (and kubelet probes `/healthz/ready`).
    #[arg(long, default_value = "0.0.0.0:15020", env = "HAWSER_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// Where `credentialName`s are: `<namespace>/<name>/` with `tls.crt`, `tls.key` and
    /// `ca.crt` (a mounted Secret), for resources of that namespace only.
    #[arg(
        long,
        default_value = "/etc/hawser/credentials",
        env = "HAWSER_CREDENTIALS_DIR"
    )]
    credentials_dir: PathBuf,
    /// The only directories certificate and key file paths in DestinationRules and
    /// InboundPorts may point into (comma-separated). Unset: no file paths, only
    /// `credentialName`s (tenants write those resources; the daemon reads the files).
    #[arg(long, value_delimiter = ',', env = "HAWSER_CREDENTIAL_ROOTS")]
    credential_roots: Vec<PathBuf>,
    /// Istio's outbound traffic policy for destinations no ServiceEntry declares: ALLOW_ANY
    /// or REGISTRY_ONLY.
    #[arg(
        long,
        default_value = "ALLOW_ANY",
        env = "HAWSER_OUTBOUND_TRAFFIC_POLICY"
    )]
    outbound_traffic_policy: OutboundPolicy,
    /// The Unix socket where `hawser-cni` hands over new pods' network namespaces
    /// (their `Workload` then needs no `netns`); hand-offs are kept next to it in
    /// `cni-pods.json` for a restarted daemon.
    #[arg(long, env = "HAWSER_CNI_SOCKET")]
    cni_socket: Option<PathBuf>,
    /// The name server (ip:port) that resolves `resolution: DNS` ServiceEntry hosts;
    /// default: the system's (`/etc/resolv.conf`, `/etc/hosts`).
    #[arg(long, env = "HAWSER_DNS_SERVER")]
    dns_server: Option<SocketAddr>,
    /// Seconds the metric series of a workload that left stay before they are dropped.
    #[arg(long, default_value_t = 300)]
    metrics_grace_secs: u64,
    /// Keep tunnel TLS in userspace even where the kernel has kTLS (to compare the two).
    #[arg(long, env = "HAWSER_NO_KTLS")]
    no_ktls: bool,
    /// The most TLS records a TLS 1.3 connection out of rustls (in the kernel's TLS, or
    /// the daemon's record layer) may send under one key; the connection is cut before.
    /// Keys are not updated out of rustls, so a cipher's own limit always applies too:
    /// 2^24 records for AES-GCM (rustls' figure, below RFC 8446 section 5.5's 2^24.5).
    /// Default: that limit.
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
    tls_records_per_key: Option<u64>,
    /// Reuse a tunnel session for a pod's next connection to the same destination and
    /// identity once a connection on it ended cleanly (no handshake, no new tunnel
    /// connection); only where tunnels use userspace TLS. Off by default while it is new.
    #[arg(long, env = "HAWSER_TUNNEL_REUSE")]
    tunnel_reuse: bool,
    /// Seconds a relayed connection may be silent before the kernel probes its peer (4
    /// probes, a quarter of this apart); a peer that stopped answering ends the connection
    /// with a reset to the app.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    keepalive_secs: u64,
    /// On SIGTERM: seconds open connections may run on (no new ones are accepted) before
    /// the rest are cut; keep it below the pod's terminationGracePeriodSeconds.
    #[arg(long, default_value_t = 30, env = "HAWSER_DRAIN_SECS")]
    drain_secs: u64,
    /// Once a new daemon took over from this one (an upgrade) and the drain is over:
    /// exit, or wait idle for SIGTERM (in a DaemonSet, where an exited container would be
    /// restarted).
    #[arg(long, value_enum, default_value = "exit")]
    after_handover: AfterHandover,
}

#[derive(clap::Args)]
struct CaClientArgs {
    /// The CA, `https://host:port`. Without it the daemon holds no identities.
    #[arg(long, env = "HAWSER_CA_ADDRESS", requires_all = ["ca_root", "node_token_file"])]
    ca_address: Option<String>,
    /// PEM root(s) the CA's serving certificate chains to.
    #[arg(long, env = "HAWSER_CA_ROOT")]
    ca_root: Option<PathBuf>,
    /// Name checked in the CA's serving certificate.
    #[arg(long, default_value = "hawser-ca", env = "HAWSER_CA_SERVER_NAME")]
    ca_server_name: String,
    /// File holding this node's credential for the CA.
    #[arg(long, env = "HAWSER_NODE_TOKEN_FILE")]
    node_token_file: Option<PathBuf>,
    #[arg(long, default_value = "cluster.local", env = "HAWSER_TRUST_DOMAIN")]
    trust_domain: String,
    /// Lifetime asked for each SVID, in seconds (Istio's SECRET_TTL).
    #[arg(long, default_value_t = 24 * 3600, env = "SECRET_TTL_SECONDS")]
    svid_ttl_secs: u64,
    /// How often to poll the trust bundle and revocation list, in seconds.
    #[arg(long, default_value_t = 30)]
    bundle_interval_secs: u64,
}

#[derive(clap::Args)]
struct CaArgs {
    #[arg(long, default_value = "0.0.0.0:15012", env = "HAWSER_CA_LISTEN")]
    listen: SocketAddr,
    /// Where Prometheus scrapes the CA's `/metrics` (istiod's monitoring port).
    #[arg(long, default_value = "0.0.0.0:15014", env = "HAWSER_CA_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    #[arg(long, default_value = "cluster.local", env = "HAWSER_TRUST_DOMAIN")]
    trust_domain: String,
    /// Plug-in CA directory (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem).
    #[arg(long, env = "HAWSER_CACERTS")]
    cacerts: Option<PathBuf>,
    /// Where the self-signed root lives when no plug-in CA is given.
    #[arg(
        long,
        default_value = "/var/lib/hawser/ca",
        env = "HAWSER_CA_STATE_DIR"
    )]
    state_dir: PathBuf,
    /// Directory of workload YAML: which identities run on which node.
    #[arg(
        long,
        env = "HAWSER_CONFIG_DIR",
        required_unless_present = "kubernetes"
    )]
    config_dir: Option<PathBuf>,
    /// YAML map of node name to node credential.
    #[arg(
        long,
        env = "HAWSER_NODE_TOKENS",
        required_unless_present = "kubernetes"
    )]
    node_tokens: Option<PathBuf>,
    /// On Kubernetes: identities from the pods the API server schedules on each node,
    /// node daemons authenticated by their ServiceAccount token (TokenReview).
    #[arg(long, env = "HAWSER_CA_KUBERNETES", conflicts_with_all = ["config_dir", "node_tokens"])]
    kubernetes: bool,
    /// The audience of the node daemons' projected ServiceAccount tokens.
    #[arg(long, default_value = "hawser-ca", env = "HAWSER_TOKEN_AUDIENCE")]
    token_audience: String,
    /// `namespace/name` of the node daemons' ServiceAccount.
    #[arg(
        long,
        default_value = "hawser-system/hawser-node",
        env = "HAWSER_NODE_SERVICE_ACCOUNT"
    )]
    node_service_account: String,
    /// Revocation list YAML (`serials: [...]`, `identities: [...]`), followed.
    #[arg(long, env = "HAWSER_REVOCATIONS")]
    revocations: Option<PathBuf>,
    /// `TRUST_DOMAIN=FILE`: trust that domain's identities when they chain to the roots in
    /// FILE (a SPIFFE bundle or PEM), followed; an absent file withdraws it. Repeatable.
    #[arg(long = "federated-bundle", value_parser = federated_bundle)]
    federated_bundles: Vec<(String, PathBuf)>,
    /// Longest SVID lifetime the CA grants, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    max_ttl_secs: u64,
    /// Names (DNS or IP) in the CA's serving certificate.
    #[arg(long = "server-name", default_values = ["hawser-ca", "localhost", "127.0.0.1"])]
    server_names: Vec<String>,
    #[arg(long, default_value_t = 1000)]
    reload_interval_ms: u64,
}

#[derive(Subcommand)]
enum PkiCommand {
    /// A self-signed root CA: DIR/root-cert.pem and DIR/root-key.pem (0600).
    RootCa {
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// An intermediate CA signed by DIR's root, in Istio's cacerts layout in DIR/NAME.
    Intermediate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// The roots in a PEM file (a CA's root-cert.pem) as a SPIFFE trust bundle, on
    /// stdout: what another trust domain's `hawser ca --federated-bundle` reads.
    SpiffeBundle {
        #[arg(long)]
        roots: PathBuf,
        /// The bundle's `spiffe_sequence`: raise it with every change.
        #[arg(long, default_value_t = 1)]
        sequence: u64,
    },
}

#[derive(clap::Args)]
struct SpecArgs {
    /// Subject common name (default: "Root CA <date> <random tag>", so that no two roots
    /// share a subject, or "Intermediate CA <name>").
    #[arg(long)]
    common_name: Option<String>,
    #[arg(long, default_value = "hawser")]
    organization: String,
    /// Validity in days (default: 3650 for a root, 730 for an intermediate).
    #[arg(long)]
    days: Option<u64>,
    #[arg(long, value_enum, default_value = "ecdsa-p256")]
    key_type: KeyType,
}

impl SpecArgs {
    fn spec(self, default_name: String, default_days: u64) -> CaSpec {
        CaSpec {
            common_name: self.common_name.unwrap_or(default_name),
            organization: self.organization,
            validity: Duration::from_secs(self.days.unwrap_or(default_days) * 24 * 3600),
            key_type: self.key_type,
        }
    }
}

#[derive(clap::Args)]
struct BpfArgs {
    /// Directory in bpffs for hawser's pinned programs and maps.
    #[arg(long, default_value = "/sys/fs/bpf/hawser", env = "HAWSER_PIN_DIR")]
    pin_dir: PathBuf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let log_level = logging::init(cli.log_format);
    match cli.command {
        Command::Node(args) => app::run_node(node_config(args, log_level)?),
        command => tokio::runtime::Runtime::new()?.block_on(run(command)),
    }
}

/// Every command but `node`, which has runtimes of its own (`app`).
async fn run(command: Command) -> Result<()> {
    match command {
        Command::Node(_) => unreachable!("`hawser node` runs in app::run_node"),
        Command::Ca(args) => ca::run(ca_config(args)).await,
        Command::Pki(PkiCommand::RootCa { dir, spec }) => {
            pki::write_root_ca(&dir, &spec.spec(pki::distinct_root_name("Root CA"), 3650))
        }
        Command::Pki(PkiCommand::Intermediate { dir, name, spec }) => {
            let spec = spec.spec(format!("Intermediate CA {name}"), 730);
            pki::write_intermediate(&dir, &name, &spec)
        }
        Command::Pki(PkiCommand::SpiffeBundle { roots, sequence }) => {
            let pems = spiffe_bundle::roots(&certs::read(&roots)?)
                .with_context(|| format!("the roots in {}", roots.display()))?;
            println!("{}", spiffe_bundle::to_json(&pems, sequence)?);
            Ok(())
        }
        Command::Uninstall { bpf } => dataplane::uninstall(&bpf.pin_dir),
        Command::Status(a) => cli::status(&AdminClient::new(&a.admin), a.json).await,
        Command::Certs(CertsArgs {
            admin: a,
            peer: None,
        }) => cli::certs(&AdminClient::new(&a.admin), a.json).await,
        Command::Certs(CertsArgs {
            admin: a,
            peer: Some(peer),
        }) => cli::peer_certs(&AdminClient::new(&a.admin), peer, a.json).await,
        Command::Workloads(a) => cli::workloads(&AdminClient::new(&a.admin), a.json).await,
        Command::Policy(PolicyCommand::Check { from, to, admin }) => {
            let client = AdminClient::new(&admin.admin);
            cli::policy_check(&client, &from, &to, admin.json).await
        }
    }
}

fn node_config(args: NodeArgs, log_level: logging::LogLevel) -> Result<NodeConfig> {
    let roots = CredentialRoots::new(args.credential_roots);
    let ca = match (
        &args.ca.ca_address,
        &args.ca.ca_root,
        &args.ca.node_token_file,
    ) {
        (Some(address), Some(root), Some(token)) => Some(CaSettings {
            address: address.clone(),
            root_pem: std::fs::read_to_string(root)
                .with_context(|| format!("read {}", root.display()))?,
            server_name: args.ca.ca_server_name.clone(),
            token_file: token.clone(),
            trust_domain: args.ca.trust_domain.clone(),
            svid: SvidConfig {
                ttl: Duration::from_secs(args.ca.svid_ttl_secs),
                bundle_interval: Duration::from_secs(args.ca.bundle_interval_secs),
                ..SvidConfig::default()
            },
        }),
        _ => None,
    };
    Ok(NodeConfig {
        node_name: args.node_name,
        admin_addr: args.admin_addr,
        metrics_addr: args.metrics_addr,
        series_grace: Duration::from_secs(args.metrics_grace_secs),
        credentials_dir: args.credentials_dir,
        credential_roots: roots.clone(),
        outbound_policy: args.outbound_traffic_policy,
        dns_server: args.dns_server,
        cni_socket: args.cni_socket,
        log_level,
        source: match (args.workload_source, args.config_dir) {
            (SourceKind::Local, Some(dir)) => workload::Source::Directory {
                dir,
                interval: Duration::from_millis(args.reload_interval_ms),
                credential_roots: Some(roots),
            },
            (SourceKind::Local, None) => anyhow::bail!("--config-dir is required"),
            (SourceKind::Kubernetes, _) => workload::Source::Kubernetes,
        },
        pin_dir: args.bpf.pin_dir,
        cgroup: args.cgroup,
        kernel_tls: !args.no_ktls,
        tls_records_per_key: args.tls_records_per_key.unwrap_or(u64::MAX),
        tunnel_reuse: args.tunnel_reuse,
        keepalive: Keepalive {
            idle: Duration::from_secs(args.keepalive_secs),
        },
        drain: Duration::from_secs(args.drain_secs),
        after_handover: args.after_handover,
        ca,
    })
}

/// `TRUST_DOMAIN=FILE` of `--federated-bundle`.
fn federated_bundle(arg: &str) -> Result<(String, PathBuf), String> {
    let (domain, file) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?} is not TRUST_DOMAIN=FILE"))?;
    hawser_model::config::check_dns_name("the trust domain", domain)?;
    Ok((domain.to_string(), PathBuf::from(file)))
}

fn ca_config(args: CaArgs) -> CaConfig {
    CaConfig {
        listen: args.listen,
        metrics_addr: Some(args.metrics_addr),
        trust_domain: args.trust_domain,
        cacerts: args.cacerts,
        state_dir: args.state_dir,
        nodes: match (args.config_dir, args.node_tokens) {
            (Some(config_dir), Some(node_tokens)) if !args.kubernetes => ca::Nodes::Files {
                config_dir,
                node_tokens,
            },
            _ => ca::Nodes::Kubernetes {
                audience: args.token_audience,
                service_account: args.node_service_account,
            },
        },
        revocations: args.revocations,
        federated: args.federated_bundles,
        max_ttl: Duration::from_secs(args.max_ttl_secs),
        server_names: args.server_names,
        reload_interval: Duration::from_millis(args.reload_interval_ms),
    }
}
