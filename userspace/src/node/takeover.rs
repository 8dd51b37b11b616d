//! Upgrading a node's daemon without refusing a connection: `hawser node` started while
//! another daemon runs for the same pins takes over from it.
//!
//! The running daemon listens on an abstract Unix socket named after its pin directory
//! (abstract names live in the network namespace, the host's for a node daemon; only a
//! caller with the daemon's own user is heard). The new daemon starts beside it: the
//! pinned maps are shared, so enrolling a pod points its steering at the new listeners
//! while the old ones still serve what they accepted. Once the new daemon is ready it
//! asks the old one to go; the old one answers, stops accepting, drains its open
//! connections for its `--drain-secs` and exits, and the new one takes the socket name.

use std::{
    io,
    os::{
        fd::AsFd,
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixListener as StdListener, UnixStream as StdStream},
    },
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tokio_util::sync::CancellationToken;

const REQUEST: &[u8] = b"take over\n";
/// How long the new daemon waits for the old one to answer, and to let go of the name.
const PATIENCE: Duration = Duration::from_secs(5);

/// The daemon this one is taking over from, found at start.
pub struct Previous {
    name: SocketAddr,
}

/// The abstract socket name of the daemon owning `pin_dir`.
fn name(pin_dir: &Path) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("hawser-node:{}", pin_dir.display()))
}

/// Serves take-over requests until one arrives (then cancels `shutdown`) or `shutdown`
/// comes another way; or, when a daemon runs already, returns it to be taken over once
/// this one is ready.
pub fn claim(pin_dir: &Path, shutdown: &CancellationToken) -> Result<Option<Previous>> {
    let name = name(pin_dir)?;
    match StdStream::connect_addr(&name) {
        Ok(_) => {
            tracing::info!(pin_dir = %pin_dir.display(), "another daemon runs for these pins: taking over once ready");
            Ok(Some(Previous { name }))
        }
        Err(_) => {
            serve(StdListener::bind_addr(&name)?, shutdown.clone())?;
            Ok(None)
        }
    }
}

impl Previous {
    /// Asks the previous daemon to go, then takes its name.
    pub async fn take_over(self, shutdown: &CancellationToken) -> Result<()> {
        let conn = StdStream::connect_addr(&self.name).context("the previous daemon is gone")?;
        conn.set_nonblocking(true)?;
        let mut conn = UnixStream::from_std(conn)?;
        conn.write_all(REQUEST).await?;
        let mut answer = String::new();
        let mut reader = BufReader::new(&mut conn);
        tokio::time::timeout(PATIENCE, reader.read_line(&mut answer))
            .await
            .context("the previous daemon did not answer")??;
        tracing::info!(
            previous = answer.trim(),
            "took over: the previous daemon drains and exits"
        );
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match StdListener::bind_addr(&self.name) {
                Ok(listener) => return serve(listener, shutdown.clone()),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => bail!("the previous daemon kept its socket name: {e}"),
            }
        }
    }
}

fn serve(listener: StdListener, shutdown: CancellationToken) -> Result<()> {
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.cancelled() => return,
            };
            match conn {
                Ok((conn, _)) if same_user(&conn) => {
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        if answered(conn).await {
                            // The loop ends with it, which frees the name.
                            shutdown.cancel();
                        }
                    });
                }
                Ok(_) => tracing::warn!("take-over request from another user refused"),
                Err(e) => tracing::warn!("take-over socket: {e}"),
            }
        }
    });
    Ok(())
}

/// Reads one take-over request and answers it with this process's id.
async fn answered(mut conn: UnixStream) -> bool {
    let mut request = String::new();
    let mut reader = BufReader::new(&mut conn);
    let read = tokio::time::timeout(PATIENCE, reader.read_line(&mut request)).await;
    let asked = matches!(read, Ok(Ok(_))) && request.as_bytes() == REQUEST;
    if !asked {
        return false;
    }
    tracing::info!("a new daemon takes over: draining, then exiting");
    let answer = format!("pid {}\n", std::process::id());
    let _ = conn.write_all(answer.as_bytes()).await;
    true
}

fn same_user(conn: &UnixStream) -> bool {
    nix::sys::socket::getsockopt(&conn.as_fd(), nix::sys::socket::sockopt::PeerCredentials)
        .is_ok_and(|peer| peer.uid() == nix::unistd::geteuid().as_raw())
}
