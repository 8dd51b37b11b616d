//! The data plane's tasks, and shutting down without cutting what can finish. Listeners
//! and connections run on the data-plane runtime (the control runtime keeps sources, the
//! CA client, reconciling and the admin API, so a busy relay never delays a policy
//! change or a probe). Every connection is a task of one tracker; on SIGTERM the daemon
//! stops accepting, lets open connections run to their end for the drain window, then
//! cuts the rest (each logs why) and exits.

use std::{future::Future, io, time::Duration};

use tokio::{net::TcpListener, runtime::Handle, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Why a connection still open at the deadline was cut (its access log says so).
pub const CUT_AT_DEADLINE: &str = "the daemon is shutting down and its drain window ended";

/// How long cut connections get to reset their sockets and log.
const CUT_GRACE: Duration = Duration::from_secs(5);

pub struct Drain {
    /// The data-plane runtime.
    runtime: Handle,
    connections: TaskTracker,
    /// Cancelled when the drain starts.
    stopping: CancellationToken,
    deadline: CancellationToken,
}

impl Drain {
    pub fn new(runtime: Handle) -> Self {
        Self {
            runtime,
            connections: TaskTracker::new(),
            stopping: CancellationToken::new(),
            deadline: CancellationToken::new(),
        }
    }

    /// A listener whose readiness the data-plane runtime watches.
    pub fn listener(&self, listener: std::net::TcpListener) -> io::Result<TcpListener> {
        let _data = self.runtime.enter();
        TcpListener::from_std(listener)
    }

    /// Runs a listener's accept loop on the data-plane runtime (stopped by aborting it).
    pub fn serve(&self, accepting: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        self.runtime.spawn(accepting)
    }

    /// Runs one connection's handling as a tracked task on the data-plane runtime.
    pub fn spawn(&self, connection: impl Future<Output = ()> + Send + 'static) {
        self.connections.spawn_on(connection, &self.runtime);
    }

    /// Cancelled when the drain starts (serial tunnel sessions then take no new streams).
    pub fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// Cancelled when the drain window ends: a connection still open must end now.
    pub fn deadline(&self) -> CancellationToken {
        self.deadline.clone()
    }

    /// Waits for the open connections to finish, up to `window`; then cuts the rest.
    /// Call once the listeners are closed.
    pub async fn finish(&self, window: Duration) {
        self.connections.close();
        self.stopping.cancel();
        let open = self.connections.len();
        if open > 0 {
            tracing::info!(
                open,
                window_secs = window.as_secs(),
                "draining: no new connections; open ones may finish"
            );
        }
        if tokio::time::timeout(window, self.connections.wait())
            .await
            .is_ok()
        {
            return;
        }
        tracing::warn!(
            open = self.connections.len(),
            "drain window ended: cutting the connections still open"
        );
        self.deadline.cancel();
        let _ = tokio::time::timeout(CUT_GRACE, self.connections.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_connections_finish_within_the_window_and_the_rest_are_cut() {
        let drain = Drain::new(Handle::current());
        let (finished_tx, finished) = tokio::sync::oneshot::channel();
        drain.spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = finished_tx.send(());
        });
        let deadline = drain.deadline();
        let (cut_tx, cut) = tokio::sync::oneshot::channel();
        drain.spawn(async move {
            deadline.cancelled().await;
            let _ = cut_tx.send(());
        });
        drain.finish(Duration::from_millis(500)).await;
        assert!(finished.await.is_ok(), "the short one ran to its end");
        assert!(cut.await.is_ok(), "the endless one was cut at the deadline");
    }
}
