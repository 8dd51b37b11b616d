//! Moving bytes between the two halves of a proxied connection, and the access log line
//! that closes every connection.

use std::{
    net::SocketAddr,
    pin::{Pin, pin},
    sync::Arc,
    time::Instant,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

use super::{
    copy::{self, Endpoint, Outcome},
    framed,
    live::Ticket,
    refusal::Refusal,
    splice::{self, Moved},
};
use crate::{
    context::{
        drain::CUT_AT_DEADLINE,
        handoff::{Handed, HandedMeta, Handoff},
        pod::PodContext,
    },
    metrics::{self, ConnectionLabels, DestinationService, METRICS, Peer},
    tls::{
        kernel_tls::KernelTls,
        offload::{TlsPath, TunnelStream},
    },
};
use hawser_model::egress::{TlsMode, route::Origination};

/// Which listener a connection came through.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    Outbound,
    Inbound,
    Tunnel,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
            Direction::Tunnel => "tunnel",
        }
    }
}

/// One proxied connection: what the access log says about it, and its metric series.
pub struct Connection {
    pub direction: Direction,
    /// `namespace/name` of the enrolled pod whose listener took the connection.
    pub pod: String,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Who encrypted: `ktls` (the kernel), `userspace` (rustls) or `none`.
    pub tls: &'static str,
    /// What crossed the wire: `mtls`, `tls` (server authentication only) or `plaintext`.
    wire: &'static str,
    /// Where the daemon connected, when not `dst` (an external service's target).
    upstream: Option<SocketAddr>,
    /// Boxed: a connection's record moves through several futures, and each would keep
    /// a slot for all of it.
    labels: Box<ConnectionLabels>,
    pub started: Instant,
    /// Its place among the pod's admitted connections, when a change can cut it.
    ticket: Option<Ticket>,
    /// Cancelled when the daemon's drain window ends.
    deadline: CancellationToken,
    /// Where a paused kernel-TLS splice is offered to a successor, when it may be.
    handoff: Option<Arc<Handoff>>,
    /// The client's bytes sent before the relay began (with a tunnel's preamble).
    sent_first: u64,
}

impl Connection {
    /// A connection to or from `pod`: the pod is the source when it dials out, the
    /// destination otherwise; the other side is named from the registry by address.
    pub fn new(direction: Direction, pod: &PodContext, src: SocketAddr, dst: SocketAddr) -> Self {
        let local = local_peer(pod);
        let (reporter, source, destination) = match direction {
            Direction::Outbound => ("source", local, remote_peer(pod, dst, true)),
            Direction::Inbound | Direction::Tunnel => {
                ("destination", remote_peer(pod, src, false), local)
            }
        };
        Self {
            direction,
            pod: pod.key.clone(),
            src,
            dst,
            tls: "none",
            // The tunnel listener speaks nothing else: a refused handshake is one of mTLS.
            wire: match direction {
                Direction::Tunnel => "mtls",
                Direction::Outbound | Direction::Inbound => "plaintext",
            },
            upstream: None,
            labels: Box::new(ConnectionLabels {
                reporter,
                source,
                destination,
                destination_service: service_of(pod, dst),
                security: "none",
            }),
            started: Instant::now(),
            ticket: None,
            deadline: pod.shared.drain.deadline(),
            handoff: None,
            sent_first: 0,
        }
    }

    /// Cut the connection when a change no longer allows it (see `live`).
    pub fn watched(mut self, ticket: Ticket) -> Self {
        self.ticket = Some(ticket);
        self
    }

    /// Resolves with the reason when the connection must end: no longer allowed, or the
    /// daemon's drain window ended.
    async fn cut(ticket: &mut Option<Ticket>, deadline: &CancellationToken) -> String {
        let changed = async {
            match ticket {
                Some(ticket) => ticket.cut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            why = changed => why,
            () = deadline.cancelled() => CUT_AT_DEADLINE.into(),
        }
    }

    /// Marks a connection to a port that asks for TLS (client certificate required): what
    /// its log says, even when the handshake is refused.
    pub fn expecting_mtls(mut self) -> Self {
        self.wire = "mtls";
        self
    }

    /// Marks the connection as carried by the mTLS tunnel, the other side having proved
    /// `peer`.
    pub fn mtls(mut self, peer: &impl ToString, path: TlsPath) -> Self {
        self.labels.security = "mutual_tls";
        self.wire = "mtls";
        self.tls = path.as_str();
        let remote = match self.direction {
            Direction::Outbound => &mut self.labels.destination,
            Direction::Inbound | Direction::Tunnel => &mut self.labels.source,
        };
        remote.principal = peer.to_string();
        self
    }

    /// Lets a successor daemon take the connection over when the kernel does its TLS
    /// (a tunnel's two ends only: their record is rebuilt from the registry).
    pub fn handable(mut self, pod: &PodContext) -> Self {
        self.handoff = Some(pod.shared.handoff.clone());
        self
    }

    /// Counts `n` bytes of the client's sent before the relay began.
    pub fn sent_first(&mut self, n: usize) {
        self.sent_first = n as u64;
    }

    /// Names the caller of a same-node connection the daemon proved it opened.
    pub fn same_node(mut self, caller: &impl ToString) -> Self {
        self.labels.source.principal = caller.to_string();
        self
    }

    /// Marks the connection as going to an external service, with TLS originated by the
    /// daemon when `mode` is set.
    pub fn egress(mut self, o: &Origination, tls: Option<(TlsMode, TlsPath)>) -> Self {
        self.upstream = Some(o.upstream);
        self.labels.destination_service = DestinationService {
            host: o.host.clone(),
            name: o.host.clone(),
            namespace: o
                .service_entry
                .split_once('/')
                .map_or(metrics::UNKNOWN, |(ns, _)| ns)
                .into(),
        };
        if let Some((mode, path)) = tls {
            self.tls = path.as_str();
            self.wire = match mode {
                TlsMode::Mutual | TlsMode::IstioMutual => "mtls",
                TlsMode::Simple | TlsMode::Disable => "tls",
            };
            if self.wire == "mtls" {
                self.labels.security = "mutual_tls";
            }
        }
        self
    }

    /// Copies both ways between the connection's client and server until both sides are
    /// done (a half-close is passed on) or it is cut (both reset), then logs.
    pub async fn relay(&mut self, client: impl Endpoint, server: impl Endpoint) {
        let mut ticket = self.ticket.take();
        let cut = Self::cut(&mut ticket, &self.deadline);
        let copying = pin!(copy::bidirectional(client, server, cut));
        let outcome = opened_once_started(copying, Some(&*self.labels)).await;
        self.closed(outcome);
    }

    /// Relays between the app-side socket and a tunnel: spliced when the kernel does the
    /// TLS, copied through rustls otherwise.
    pub async fn relay_tunnel(&mut self, app: TcpStream, tunnel: TunnelStream) {
        // What this connection's TLS ended up on (a session can stay in rustls where
        // the kernel has TLS, see `offload`).
        self.tls = match &tunnel {
            TunnelStream::Kernel(_) => TlsPath::Kernel.as_str(),
            TunnelStream::Userspace(_) => TlsPath::Userspace.as_str(),
        };
        match tunnel {
            // The TLS side is the client's, but for outbound connections.
            TunnelStream::Userspace(stream) => match self.direction {
                Direction::Outbound => self.relay(app, stream).await,
                _ => self.relay(stream, app).await,
            },
            // Boxed: the splice loop's state would make every userspace relay as large.
            TunnelStream::Kernel(stream) => Box::pin(self.splice(app, stream)).await,
        }
    }

    /// Relays between the app-side socket and one stream of a serial tunnel session
    /// (userspace TLS); whether the session may carry the next stream.
    pub async fn relay_stream(
        &mut self,
        app: TcpStream,
        session: &mut (impl AsyncRead + AsyncWrite + Unpin),
    ) -> bool {
        self.tls = TlsPath::Userspace.as_str();
        let mut ticket = self.ticket.take();
        let cut = Self::cut(&mut ticket, &self.deadline);
        let client = matches!(self.direction, Direction::Outbound);
        let relaying = pin!(framed::relay(app, session, cut, client));
        let relayed = opened_once_started(relaying, Some(&*self.labels)).await;
        self.closed(self.outcome(relayed.moved));
        relayed.reusable
    }

    /// Splices between the app and a kernel-TLS socket until done; a tunnel connection
    /// paused for a successor daemon is offered to it, and goes on here if not taken.
    async fn splice(&mut self, mut app: TcpStream, mut tls: KernelTls) {
        let mut ticket = self.ticket.take();
        let handoff = self.handoff.take();
        let mut pause = match &handoff {
            Some(handoff) => handoff.start(),
            None => splice::Pause::default(),
        };
        let mut before = (0, 0);
        let records_per_key = tls.records_per_key();
        // Counted once, by the first relay (not again when resumed after a pause).
        let mut opening = Some(&*self.labels);
        loop {
            let cut = Self::cut(&mut ticket, &self.deadline);
            let budget = tls.send_budget();
            let ended = {
                let splicing = pin!(splice::relay(app, tls, budget, cut, &pause));
                opened_once_started(splicing, opening.take()).await
            };
            let (paused, mut moved) = match ended {
                splice::Ended::Done(moved) => (None, moved),
                splice::Ended::Paused { app, tls, moved } => (Some((app, tls)), moved),
            };
            (moved.to_peer, moved.to_app) = (before.0 + moved.to_peer, before.1 + moved.to_app);
            // Cut while stopping: never passed on, and ended with a reset.
            let cut = ticket.as_mut().and_then(Ticket::was_cut);
            if let (Some((paused_app, _)), Some(_)) = (&paused, &cut) {
                splice::reset(paused_app);
            }
            let (Some(handoff), Some((paused_app, paused_tls)), None) = (&handoff, paused, &cut)
            else {
                if let Some(handoff) = &handoff {
                    handoff.ended();
                }
                if let Some(why) = cut {
                    moved.error = Some(std::io::Error::other(why));
                }
                return self.closed(self.outcome(moved));
            };
            let offered = self
                .handed(&ticket, paused_app, paused_tls)
                .map(|handed| handoff.offer(Box::new(handed)));
            let resumed = match offered {
                Ok(Ok(())) => {
                    handoff.ended();
                    return self.handed_over(self.outcome(moved));
                }
                // Not taken: on here, never paused again.
                Ok(Err(back)) => resume(*back, records_per_key),
                Err(e) => Err(e),
            };
            match resumed {
                Ok((resumed_app, resumed_tls)) => (app, tls) = (resumed_app, resumed_tls),
                Err(e) => {
                    handoff.ended();
                    moved.error = Some(e);
                    return self.closed(self.outcome(moved));
                }
            }
            before = (moved.to_peer, moved.to_app);
            pause = splice::Pause::default();
        }
    }

    /// A paused connection as its successor needs it.
    fn handed(
        &self,
        ticket: &Option<Ticket>,
        app: TcpStream,
        tls: TcpStream,
    ) -> std::io::Result<Handed> {
        let admitted = ticket.as_ref().and_then(Ticket::admitted);
        let meta = HandedMeta {
            pod: self.pod.clone(),
            direction: self.direction.as_str().into(),
            src: self.src,
            dst: self.dst,
            peer: self.remote().principal.clone(),
            admitted_port: admitted.as_ref().map(|a| a.port),
            serial: admitted.and_then(|a| a.serial),
        };
        // Abortive until the successor takes them: dropped on the way, they reset.
        for socket in [&app, &tls] {
            splice::abortive(socket2::SockRef::from(socket), true);
        }
        Ok(Handed {
            meta,
            app: app.into_std()?.into(),
            tls: tls.into_std()?.into(),
        })
    }

    /// The peer on the other side of the tunnel.
    fn remote(&self) -> &Peer {
        match self.direction {
            Direction::Outbound => &self.labels.destination,
            Direction::Inbound | Direction::Tunnel => &self.labels.source,
        }
    }

    /// Counts and logs a connection passed to the successor daemon, which logs its end.
    fn handed_over(&self, outcome: Outcome) {
        let outcome = self.with_first(outcome);
        METRICS.connection_closed(&self.labels, outcome.request, outcome.response);
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let (l, direction) = (&self.labels, self.direction.as_str());
        let (src_identity, dst_identity) = (&l.source.principal, &l.destination.principal);
        tracing::info!(
            target: "hawser::access",
            direction, pod = %self.pod, src = %self.src, src_identity, dst = %self.dst, dst_identity,
            tls = self.tls, bytes_sent = outcome.request, bytes_received = outcome.response, duration_ms,
            "connection handed over"
        );
    }

    /// The byte counts of a splice or a framed stream, client→server first.
    fn outcome(&self, spliced: Moved) -> Outcome {
        // An inbound record counts from the peer.
        let (request, response) = match self.direction {
            Direction::Outbound => (spliced.to_peer, spliced.to_app),
            _ => (spliced.to_app, spliced.to_peer),
        };
        Outcome {
            request,
            response,
            error: spliced.error,
        }
    }

    /// Counts and logs the end of a relayed connection: the bytes that moved (client→
    /// server, server→client), and the error when it was cut short.
    fn closed(&self, outcome: Outcome) {
        let outcome = self.with_first(outcome);
        METRICS.connection_closed(&self.labels, outcome.request, outcome.response);
        let cut = outcome.error.map(|e| format!("cut short: {e}"));
        self.log(outcome.request, outcome.response, cut.as_deref(), None);
    }

    /// What moved, with the client's bytes sent before the relay.
    fn with_first(&self, outcome: Outcome) -> Outcome {
        Outcome {
            request: outcome.request + self.sent_first,
            ..outcome
        }
    }

    /// Counts and logs a connection whose client failed before the relay began.
    pub fn failed_at_start(self, error: std::io::Error) {
        METRICS.connection_opened(&self.labels);
        self.closed(Outcome {
            request: 0,
            response: 0,
            error: Some(error),
        });
    }

    /// Counts and logs a connection that was refused before any byte moved.
    pub fn refuse(self, refusal: Refusal) {
        METRICS.connection_refused(self.direction.as_str(), refusal.reason());
        let details = refusal.to_string();
        self.log(0, 0, Some(&details), Some(refusal.reason()));
    }

    /// Refuses a connection that never authenticated: counted always, logged only within
    /// the pod's rate (anyone can cause these, as fast as they can connect).
    pub fn refuse_unauthenticated(self, refusal: Refusal, pod: &PodContext) {
        if pod.unauthenticated.may_log() {
            self.refuse(refusal);
        } else {
            METRICS.connection_refused(self.direction.as_str(), refusal.reason());
        }
    }

    /// The access log line: `connection closed`; `connection cut` with the reason; or
    /// `connection refused` with the kind of refusal and the reason.
    fn log(&self, sent: u64, received: u64, reason: Option<&str>, refusal: Option<&str>) {
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let direction = self.direction.as_str();
        let (l, security) = (&self.labels, self.wire);
        let upstream = self.upstream.map_or("-".into(), |u| u.to_string());
        let (src_identity, dst_identity) = (&l.source.principal, &l.destination.principal);
        match reason {
            None => tracing::info!(
                target: "hawser::access",
                direction, pod = %self.pod, src = %self.src, src_identity, dst = %self.dst, dst_identity,
                upstream = %upstream, security, tls = self.tls, bytes_sent = sent, bytes_received = received, duration_ms,
                "connection closed"
            ),
            Some(reason) => match refusal {
                None => tracing::warn!(
                    target: "hawser::access",
                    direction, pod = %self.pod, src = %self.src, src_identity, dst = %self.dst, dst_identity,
                    upstream = %upstream, security, tls = self.tls, bytes_sent = sent, bytes_received = received, duration_ms, reason,
                    "connection cut"
                ),
                Some(refusal) => tracing::warn!(
                    target: "hawser::access",
                    direction, pod = %self.pod, src = %self.src, src_identity, dst = %self.dst, dst_identity,
                    upstream = %upstream, security, tls = self.tls, duration_ms, refusal, reason,
                    "connection refused"
                ),
            },
        }
    }
}

/// Runs `relay`, counting the connection as opened with `labels` (when given) once the
/// relay has first run: bytes that came with the connection (a tunnel's first bytes) reach
/// the app before the count's bookkeeping (its series, under a lock), which is then off
/// the exchange's path. The relay is borrowed pinned, so that no second copy of it is kept
/// in the connection's task.
fn opened_once_started<'a, F: Future>(
    mut relay: Pin<&'a mut F>,
    mut labels: Option<&'a ConnectionLabels>,
) -> impl Future<Output = F::Output> + 'a {
    std::future::poll_fn(move |cx| {
        let polled = relay.as_mut().poll(cx);
        if let Some(labels) = labels.take() {
            METRICS.connection_opened(labels);
        }
        polled
    })
}

/// The Kubernetes Service a connection to `dst` is for: the Service at that virtual
/// address, or the one `dst` is a ready endpoint of.
fn service_of(pod: &PodContext, dst: SocketAddr) -> DestinationService {
    let registry = pod.shared.registry.borrow();
    registry
        .service_for(dst)
        .map_or_else(DestinationService::unknown, |s| {
            DestinationService::kubernetes(&s.name, &s.namespace)
        })
}

/// The enrolled pod itself. Its principal is known when the daemon holds identities.
fn local_peer(pod: &PodContext) -> Peer {
    let w = &pod.workload;
    Peer {
        workload_key: Some(pod.key.clone()),
        workload: w.name.clone(),
        namespace: w.namespace.clone(),
        principal: match pod.shared.svids {
            Some(_) => pod.identity.to_string(),
            None => metrics::UNKNOWN.into(),
        },
    }
}

/// The other side, by address: a workload of the registry, or unknown. A destination the
/// daemon sends to on this node is named with its principal; a caller's principal is only
/// ever what was proven (the tunnel, a certificate, `same_node`), set later.
fn remote_peer(pod: &PodContext, addr: SocketAddr, destination: bool) -> Peer {
    let known = {
        let registry = pod.shared.registry.borrow();
        registry
            .by_ip(addr.ip())
            .map(|w| (w.key(), w.name.clone(), w.namespace.clone()))
    };
    let Some((key, workload, namespace)) = known else {
        return Peer::unknown();
    };
    Peer {
        workload_key: Some(key),
        workload,
        namespace,
        principal: destination
            .then(|| pod.shared.local_workload_identity(addr.ip()))
            .flatten()
            .map_or(metrics::UNKNOWN.into(), |id| id.to_string()),
    }
}

/// A connection no successor took: its sockets, back on this runtime.
fn resume(handed: Handed, records_per_key: u64) -> std::io::Result<(TcpStream, KernelTls)> {
    let (app, tls) = sockets(handed)?;
    closing_normally(&app, &tls);
    Ok((app, KernelTls::new(tls, None, records_per_key)))
}

/// A handed connection's two sockets, registered with the current runtime (still
/// abortive: see `closing_normally`).
pub fn sockets(handed: Handed) -> std::io::Result<(TcpStream, TcpStream)> {
    let open = |fd: std::os::fd::OwnedFd| {
        let socket = std::net::TcpStream::from(fd);
        socket.set_nonblocking(true)?;
        TcpStream::from_std(socket)
    };
    Ok((open(handed.app)?, open(handed.tls)?))
}

/// A handed connection taken on: its sockets close normally again.
pub fn closing_normally(app: &TcpStream, tls: &TcpStream) {
    for socket in [app, tls] {
        splice::abortive(socket2::SockRef::from(socket), false);
    }
}
