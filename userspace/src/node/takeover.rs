//! Upgrading a node's daemon without refusing a connection: `hawser node` started while
//! another daemon runs for the same pins takes over from it.
//!
//! The running daemon listens on an abstract Unix socket named after its pin directory
//! (abstract names live in the network namespace, the host's for a node daemon). Both
//! ends check the other by its credentials: the same user and the daemon's own
//! privileges (CAP_NET_ADMIN, CAP_SYS_ADMIN), so neither a root process without them (a
//! host-network pod) nor one that squats the name can stop or impersonate a daemon. A new daemon connects at its start and
//! says `starting`: until it asks to take over (or goes away), the running one reports
//! not ready, so a readiness probe that reaches it on the shared port cannot mark the new
//! one ready early. The new daemon starts beside it: the pinned maps are shared, so
//! enrolling a pod points its steering at the new listeners while the old ones still
//! serve what they accepted. Once ready it says `take over`; the old one answers with its
//! pid, stops serving its admin and metrics ports, drains its open connections for its
//! `--drain-secs` and ends; the new one takes the socket name.
//!
//! Kernel-TLS connections do not drain: right after its answer the old daemon stops each
//! at a safe point and passes its sockets over the same connection (`passing`), and the
//! new one carries them on. Only userspace-TLS and plaintext connections stay behind.

use std::{
    io,
    os::{
        fd::AsFd,
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixListener as StdListener, UnixStream as StdStream},
    },
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

use super::passing;
use crate::context::handoff::{Handed, Handoff};

const STARTING: &str = "starting";
const TAKE_OVER: &str = "take over";
/// How long the new daemon waits for the old one to answer, and to let go of the name.
const PATIENCE: Duration = Duration::from_secs(5);
/// How long the old daemon waits for its kernel-TLS connections to reach a safe point
/// (one that cannot write to a stalled app stays, and drains with the rest).
const PAUSE_AT_MOST: Duration = Duration::from_secs(2);

/// This daemon's place in a succession.
#[derive(Clone)]
pub struct Succession {
    /// Cancelled to shut down (a take-over asks for it too).
    pub shutdown: CancellationToken,
    /// Cancelled when a new daemon took over from this one.
    pub handed_over: CancellationToken,
    /// Whether a new daemon is starting to take over (this one then reports not ready).
    pub successor: watch::Receiver<bool>,
    /// The kernel-TLS connections this daemon passes on when taken over.
    pub handoff: Arc<Handoff>,
}

/// The daemon this one is taking over from: the connection that told it so.
pub struct Previous {
    conn: UnixStream,
    name: SocketAddr,
    successor: watch::Sender<bool>,
}

/// How long a daemon that said it is starting may take to take over before the running
/// one stops waiting for it (and reports ready again).
const STARTING_AT_MOST: Duration = Duration::from_secs(120);

/// The abstract socket name of the daemon owning `pin_dir`.
fn name(pin_dir: &Path) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("hawser-node:{}", pin_dir.display()))
}

/// Serves take-over requests (when this is the only daemon for `pin_dir`), or tells the
/// running daemon that this one is starting and returns it, to be taken over once ready.
pub async fn claim(pin_dir: &Path) -> Result<(Succession, Option<Previous>)> {
    let name = name(pin_dir)?;
    let (successor, watched) = watch::channel(false);
    let succession = Succession {
        shutdown: CancellationToken::new(),
        handed_over: CancellationToken::new(),
        successor: watched,
        handoff: Arc::default(),
    };
    let Ok(conn) = StdStream::connect_addr(&name) else {
        serve(StdListener::bind_addr(&name)?, &succession, successor)?;
        return Ok((succession, None));
    };
    conn.set_nonblocking(true)?;
    let mut conn = UnixStream::from_std(conn)?;
    if !peer_is_a_daemon(&conn) {
        bail!(
            "a process without the daemon's user and privileges holds the take-over socket of {}",
            pin_dir.display()
        );
    }
    conn.write_all(format!("{STARTING}\n").as_bytes()).await?;
    tracing::info!(pin_dir = %pin_dir.display(), "another daemon runs for these pins: taking over once ready");
    let previous = Previous {
        conn,
        name,
        successor,
    };
    Ok((succession, Some(previous)))
}

impl Previous {
    /// Asks the previous daemon to go, carries on (`adopt`) the kernel-TLS connections it
    /// passes, then takes its name.
    pub async fn take_over(
        mut self,
        succession: &Succession,
        adopt: impl FnMut(Handed),
    ) -> Result<()> {
        match self.asked().await {
            Ok(answer) => {
                tracing::info!(previous = answer, "took over: the previous daemon drains");
                match self.adopt(adopt).await {
                    Ok(0) => {}
                    Ok(adopted) => tracing::info!(adopted, "kernel-TLS connections carried on"),
                    Err(e) => tracing::warn!("taking the previous daemon's connections: {e:#}"),
                }
            }
            // Gone meanwhile (killed, crashed): the name is free to take all the same, so
            // that the next upgrade finds this daemon.
            Err(e) => tracing::warn!("the previous daemon did not hand over: {e:#}"),
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match StdListener::bind_addr(&self.name) {
                Ok(listener) => return serve(listener, succession, self.successor),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => bail!("the previous daemon kept its socket name: {e}"),
            }
        }
    }

    /// Says `take over`; the previous daemon's answer.
    async fn asked(&mut self) -> Result<String> {
        self.conn
            .write_all(format!("{TAKE_OVER}\n").as_bytes())
            .await?;
        let answer = tokio::time::timeout(PATIENCE, line(&mut self.conn))
            .await
            .context("the previous daemon did not answer")??;
        if answer.is_empty() {
            bail!("the previous daemon closed the connection");
        }
        Ok(answer.trim().to_string())
    }

    /// Carries on each connection the previous daemon passes; how many.
    async fn adopt(&mut self, mut adopt: impl FnMut(Handed)) -> Result<usize> {
        let mut adopted = 0;
        loop {
            let next = tokio::time::timeout(PATIENCE, passing::receive(&mut self.conn)).await;
            match next.context("the previous daemon stopped passing connections")?? {
                Some(handed) => adopt(handed),
                None => return Ok(adopted),
            }
            adopted += 1;
        }
    }
}

/// Answers daemons that come to take over, until this one shuts down (which frees the
/// name).
fn serve(
    listener: StdListener,
    succession: &Succession,
    successor: watch::Sender<bool>,
) -> Result<()> {
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    let (succession, successor) = (succession.clone(), Arc::new(successor));
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                accepted = listener.accept() => accepted,
                () = succession.shutdown.cancelled() => return,
            };
            match conn {
                Ok((conn, _)) if peer_is_a_daemon(&conn) => {
                    let (succession, successor) = (succession.clone(), successor.clone());
                    tokio::spawn(async move {
                        match successor_says(conn, &successor, &succession.handoff).await {
                            Ok(()) => {
                                succession.handed_over.cancel();
                                succession.shutdown.cancel();
                            }
                            Err(e) => {
                                successor.send_replace(false);
                                tracing::info!("the daemon that came to take over did not: {e:#}");
                            }
                        }
                    });
                }
                Ok(_) => tracing::warn!(
                    "take-over request refused: the caller lacks the daemon's user or privileges"
                ),
                Err(e) => tracing::warn!("take-over socket: {e}"),
            }
        }
    });
    Ok(())
}

/// Follows one successor: `starting` (this daemon reports not ready meanwhile), then
/// `take over` (answered with this process's id, then the kernel-TLS connections). Ok
/// once it took over.
async fn successor_says(
    conn: UnixStream,
    successor: &watch::Sender<bool>,
    handoff: &Handoff,
) -> Result<()> {
    let (read, mut write) = conn.into_split();
    let mut lines = BufReader::new(read).lines();
    let said = |line: Option<String>| line.unwrap_or_default();
    let first = tokio::time::timeout(PATIENCE, lines.next_line()).await??;
    if said(first) != STARTING {
        bail!("it did not say it is starting");
    }
    successor.send_replace(true);
    tracing::info!("a new daemon is starting to take over: not ready until it does");
    let next = tokio::time::timeout(STARTING_AT_MOST, lines.next_line()).await;
    if said(next.context("it took too long")??) != TAKE_OVER {
        bail!("it did not ask to take over");
    }
    let answer = format!("pid {}\n", std::process::id());
    write.write_all(answer.as_bytes()).await?;
    tracing::info!("a new daemon takes over: draining, then stopping");
    let passed = pass_connections(write.as_ref(), handoff).await;
    tracing::info!(passed, "kernel-TLS connections passed to the new daemon");
    Ok(())
}

/// Stops every kernel-TLS connection at a safe point and passes it on; how many went.
/// One that cannot be passed (the successor went away) is reset, never left half-open.
async fn pass_connections(conn: &UnixStream, handoff: &Handoff) -> usize {
    let mut offers = handoff.begin();
    let stopped = async {
        while handoff.splicing() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let _ = tokio::time::timeout(PAUSE_AT_MOST, stopped).await;
    handoff.close();
    let (mut passed, mut broken) = (0, false);
    while let Some(handed) = offers.recv().await {
        if !broken && let Err(e) = passing::send(conn, &handed).await {
            tracing::warn!("passing a connection to the new daemon: {e:#}");
            broken = true;
        }
        match broken {
            true => handed.abort(),
            false => passed += 1,
        }
    }
    if !broken && let Err(e) = passing::send_end(conn).await {
        tracing::warn!("ending the hand-over: {e:#}");
    }
    passed
}

/// One line, read a byte at a time: what follows it carries sockets, which a buffered
/// read would swallow.
async fn line(conn: &mut UnixStream) -> Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while conn.read(&mut byte).await? == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// The capabilities that make a daemon (bits of `CapEff`): CAP_NET_ADMIN, CAP_SYS_ADMIN.
const DAEMON_CAPS: u64 = (1 << 12) | (1 << 21);

/// Whether the process at the other end runs as this user with the daemon's privileges
/// (those of them this process has).
fn peer_is_a_daemon(conn: &UnixStream) -> bool {
    let sockopt = nix::sys::socket::sockopt::PeerCredentials;
    let Ok(peer) = nix::sys::socket::getsockopt(&conn.as_fd(), sockopt) else {
        return false;
    };
    let required = effective_caps("self").unwrap_or(0) & DAEMON_CAPS;
    let held = effective_caps(&peer.pid().to_string()).unwrap_or(0);
    peer.uid() == nix::unistd::geteuid().as_raw() && held & required == required
}

/// A process's effective capabilities, from `/proc/<pid>/status`.
fn effective_caps(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn a_starting_daemon_makes_the_running_one_not_ready_then_takes_over() {
        let pins = Path::new("/test/takeover").join(std::process::id().to_string());
        let (old, none) = claim(&pins).await.unwrap();
        assert!(none.is_none(), "the first daemon owns the name");

        // A new daemon that starts and goes away again changes nothing in the end.
        let (_, gone) = claim(&pins).await.unwrap();
        until("the successor flag", || *old.successor.borrow()).await;
        drop(gone);
        until("the flag cleared", || !*old.successor.borrow()).await;
        assert!(!old.shutdown.is_cancelled());

        // One that takes over: the old one hands over and shuts down, the new owns the name.
        let (new, previous) = claim(&pins).await.unwrap();
        previous
            .expect("the old daemon")
            .take_over(&new, |_| panic!("no connection to pass"))
            .await
            .unwrap();
        assert!(old.handed_over.is_cancelled() && old.shutdown.is_cancelled());
        assert!(!new.shutdown.is_cancelled());
        let (_, next) = claim(&pins).await.unwrap();
        assert!(next.is_some(), "the new daemon now answers for the pins");
    }

    #[tokio::test]
    async fn a_previous_daemon_that_vanished_leaves_its_name_to_the_new_one() {
        let pins = Path::new("/test/takeover-vanished").join(std::process::id().to_string());
        // A daemon that hears `starting`, then dies before the hand-over.
        let old = StdListener::bind_addr(&name(&pins).unwrap()).unwrap();
        let dying = std::thread::spawn(move || {
            let (conn, _) = old.accept().unwrap();
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(&conn), &mut line).unwrap();
            assert_eq!(line, "starting\n");
        });
        let (new, previous) = claim(&pins).await.unwrap();
        dying.join().unwrap();
        previous
            .expect("the old daemon")
            .take_over(&new, |_| panic!("no connection to pass"))
            .await
            .unwrap();
        let (_, next) = claim(&pins).await.unwrap();
        assert!(next.is_some(), "the new daemon answers for the pins");
    }
}

#[cfg(test)]
mod privileges {
    use super::*;

    /// A root process that lacks the daemon's capabilities, as in a host-network pod.
    #[tokio::test]
    async fn a_root_process_without_the_daemons_privileges_cannot_stop_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root (to drop capabilities from a root process)");
            return;
        }
        let pins = Path::new("/test/takeover-privileges").join(std::process::id().to_string());
        let (old, _) = claim(&pins).await.unwrap();
        let script = format!(
            "import socket\ns = socket.socket(socket.AF_UNIX)\n\
             s.connect('\\0hawser-node:{}')\n\
             try:\n    s.sendall(b'starting\\ntake over\\n')\n    print(s.recv(100))\n\
             except OSError:\n    print('reset')",
            pins.display()
        );
        let out = tokio::process::Command::new("setpriv")
            .args([
                "--bounding-set=-net_admin,-sys_admin",
                "python3",
                "-c",
                &script,
            ])
            .output()
            .await
            .expect("setpriv and python3 run");
        assert!(out.status.success(), "{out:?}");
        // Refused: the connection closed unanswered, or reset with the request unread.
        let answer = String::from_utf8_lossy(&out.stdout);
        assert!(
            ["b''", "reset"].contains(&answer.trim()),
            "answered {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!old.shutdown.is_cancelled() && !*old.successor.borrow());
    }
}
