//! The composition root of `hawser node`: two runtimes and the daemon on them. The data
//! plane (every pod's listeners and relayed connections) has its own multi-threaded
//! runtime; the control plane (workload sources, the CA client, reconciling, the admin
//! API) has one thread of its own, so neither can starve the other. `start` returns a
//! handle, so a test can run a whole daemon in its own process and stop it.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    runtime::{Builder, Runtime},
    signal::unix::{SignalKind, signal},
};

use crate::node::{self, AfterHandover, Bound, NodeConfig};

/// How long the runtimes' threads get to end once the drain is over.
const RUNTIME_STOP: Duration = Duration::from_secs(1);

/// A node daemon running on its runtimes.
pub struct Running {
    control: Runtime,
    data: Runtime,
    bound: Bound,
    after_handover: AfterHandover,
}

/// Starts the node daemon; it runs until `Running::stop`.
pub fn start(config: NodeConfig) -> Result<Running> {
    // Before any runtime thread exists, so none can have entered a pod yet.
    crate::netns::record_home().context("record the daemon's network namespace")?;
    let data = runtime("hawser-data", Builder::new_multi_thread())?;
    let mut one = Builder::new_multi_thread();
    one.worker_threads(1);
    let control = runtime("hawser-control", one)?;
    let after_handover = config.after_handover;
    let bound = control.block_on(node::start(config, data.handle().clone()))?;
    Ok(Running {
        control,
        data,
        bound,
        after_handover,
    })
}

impl Running {
    /// Where the admin API listens.
    pub fn admin(&self) -> SocketAddr {
        self.bound.admin
    }

    /// Where the metrics are served.
    pub fn metrics(&self) -> SocketAddr {
        self.bound.metrics
    }

    /// Until SIGTERM or Ctrl-C, or the daemon ended on its own (unless it handed over
    /// and is to wait: then until the signal).
    pub fn until_signalled(&self) -> Result<()> {
        self.control.block_on(async {
            let mut terminate = signal(SignalKind::terminate())?;
            let ended = async {
                self.bound.ended().await;
                if self.bound.handed_over() && self.after_handover == AfterHandover::Wait {
                    tracing::info!("handed over and drained: idle until stopped");
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
                () = ended => {}
            }
            Ok(())
        })
    }

    /// Stops accepting, drains open connections (up to the drain window), then ends
    /// every task of the daemon.
    pub fn stop(self) -> Result<()> {
        self.bound.shutdown();
        let drained = self.control.block_on(self.bound.wait());
        self.data.shutdown_timeout(RUNTIME_STOP);
        self.control.shutdown_timeout(RUNTIME_STOP);
        drained
    }
}

/// `hawser node`: runs until signalled, then drains.
pub fn run_node(config: NodeConfig) -> Result<()> {
    let running = start(config)?;
    running.until_signalled()?;
    running.stop()
}

fn runtime(name: &str, mut builder: Builder) -> Result<Runtime> {
    builder
        .enable_all()
        .thread_name(name)
        .build()
        .with_context(|| format!("start the {name} runtime"))
}
