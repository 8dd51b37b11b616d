//! Kernel-TLS connections passed to a successor daemon at a take-over. The kernel holds
//! such a connection's whole TLS state (keys, sequence numbers) in its socket, so the
//! socket pair (the app's side and the TLS side) is all a new process needs to go on
//! splicing. When a successor takes over, every handable splice stops at its next safe
//! point (nothing read and not yet written) and is offered here; the take-over protocol
//! passes the sockets on. A connection that stops after the offers closed goes on where
//! it is (and is drained with the rest).

use std::{
    net::SocketAddr,
    os::fd::OwnedFd,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::proxy::splice::Pause;

/// What the successor needs to carry a connection on: its record and its admission.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HandedMeta {
    /// `namespace/name` of the pod whose listener took it.
    pub pod: String,
    /// `outbound` (the pod dialed out through a tunnel) or `tunnel` (it came in by one).
    pub direction: String,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The SPIFFE ID the other end proved.
    pub peer: String,
    /// For an incoming connection: the port and certificate serial it was admitted with,
    /// so that the successor checks policy and revocation as it would for a new one.
    pub admitted_port: Option<u16>,
    pub serial: Option<String>,
}

/// A connection stopped at a safe point, with its two sockets.
pub struct Handed {
    pub meta: HandedMeta,
    pub app: OwnedFd,
    pub tls: OwnedFd,
}

impl Handed {
    /// Ends a connection no daemon can carry on. Its sockets were made abortive before they
    /// left the relay (and stay so until a successor adopts them): dropped, both reset, so
    /// the app never reads the cut as a complete stream.
    pub fn abort(self) {
        tracing::warn!(pod = %self.meta.pod, src = %self.meta.src, dst = %self.meta.dst, "a handed-over connection could not be carried on: reset");
    }
}

#[derive(Default)]
pub struct Handoff {
    pause: Pause,
    offers: Mutex<Option<mpsc::UnboundedSender<Box<Handed>>>>,
    /// Handable splices running now (an offer ends one).
    splicing: AtomicUsize,
}

impl Handoff {
    /// Counts a handable splice (until `ended`); its pause asks it to stop at a safe point
    /// when a successor takes over, and gives up when the offers close.
    pub fn start(&self) -> Pause {
        self.splicing.fetch_add(1, Ordering::AcqRel);
        self.pause.clone()
    }

    /// A handable splice ended, or was offered.
    pub fn ended(&self) {
        self.splicing.fetch_sub(1, Ordering::AcqRel);
    }

    /// How many handable splices have not stopped yet.
    pub fn splicing(&self) -> usize {
        self.splicing.load(Ordering::Acquire)
    }

    /// Offers a stopped connection to the successor; gives it back when none takes
    /// offers (any more), for it to go on here.
    pub fn offer(&self, handed: Box<Handed>) -> Result<(), Box<Handed>> {
        let offers = self.offers.lock().unwrap_or_else(|p| p.into_inner());
        match offers.as_ref() {
            Some(tx) => tx.send(handed).map_err(|e| e.0),
            None => Err(handed),
        }
    }

    /// Opens the offers and stops every handable splice.
    pub fn begin(&self) -> mpsc::UnboundedReceiver<Box<Handed>> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.offers.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        self.pause.stop.cancel();
        rx
    }

    /// Closes the offers: what has not stopped goes on here.
    pub fn close(&self) {
        self.offers.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.pause.resume.cancel();
    }
}
