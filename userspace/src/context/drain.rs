//! Shutting down without cutting what can finish. Every connection is a task of one
//! tracker; on SIGTERM the daemon stops accepting, lets open connections run to their end
//! for the drain window, then cuts the rest (each logs why) and exits.

use std::{future::Future, time::Duration};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Why a connection still open at the deadline was cut (its access log says so).
pub const CUT_AT_DEADLINE: &str = "the daemon is shutting down and its drain window ended";

/// How long cut connections get to reset their sockets and log.
const CUT_GRACE: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Drain {
    connections: TaskTracker,
    deadline: CancellationToken,
}

impl Drain {
    /// Runs one connection's handling as a tracked task.
    pub fn spawn(&self, connection: impl Future<Output = ()> + Send + 'static) {
        self.connections.spawn(connection);
    }

    /// Cancelled when the drain window ends: a connection still open must end now.
    pub fn deadline(&self) -> CancellationToken {
        self.deadline.clone()
    }

    /// Waits for the open connections to finish, up to `window`; then cuts the rest.
    /// Call once the listeners are closed.
    pub async fn finish(&self, window: Duration) {
        self.connections.close();
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
        let drain = Drain::default();
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
