//! Carrying on a kernel-TLS connection a predecessor daemon handed over: its record is
//! rebuilt from the registry, an incoming one is admitted again (policy and revocation
//! as they are now), and splicing goes on.

use std::sync::Arc;

use super::{
    live::Admitted,
    outbound,
    refusal::Refusal,
    relay::{self, Connection, Direction},
};
use crate::{
    context::{handoff::Handed, pod::PodContext},
    failure::Failure,
    tls::{
        kernel_tls::KernelTls,
        offload::{self, TlsPath, TunnelStream},
    },
};
use hawser_model::{SpiffeId, policy::Principal};

/// Takes `handed` on for `pod`, as a tracked connection of this daemon.
pub fn adopt(pod: Arc<PodContext>, handed: Handed) {
    let drain = &pod.shared.drain;
    drain.spawn(carry_on(pod.clone(), handed));
}

async fn carry_on(pod: Arc<PodContext>, handed: Handed) {
    let meta = handed.meta.clone();
    let direction = match meta.direction.as_str() {
        "outbound" => Direction::Outbound,
        _ => Direction::Tunnel,
    };
    let record = Connection::new(direction, &pod, meta.src, meta.dst);
    let (app, tls) = match relay::sockets(handed) {
        Ok(sockets) => sockets,
        Err(e) => {
            let failure = Failure::io("a handed-over socket", e);
            return record.refuse(Refusal::Connect(failure));
        }
    };
    // Splicing a socket the kernel does not encrypt would put plaintext on the wire.
    if !offload::has_tls_ulp(std::os::fd::AsRawFd::as_raw_fd(&tls)) {
        let why = Failure::Peer("a handed-over tunnel socket without kernel TLS".into());
        return refuse(record, &app, Refusal::Tunnel(why));
    }
    let peer: SpiffeId = match meta.peer.parse() {
        Ok(peer) => peer,
        Err(e) => {
            return refuse(record, &app, Refusal::Tunnel(Failure::Peer(e)));
        }
    };
    let record = record.mtls(&peer, TlsPath::Kernel).handable(&pod);
    // Admitted as it was, checked as now: the other side always showed a certificate.
    let (Some(port), Some(serial)) = (meta.admitted_port, meta.serial.clone()) else {
        let why = Failure::Peer("handed over without its admission".into());
        return refuse(record, &app, Refusal::Tunnel(why));
    };
    let admitted = match direction {
        Direction::Outbound => outbound::opened(&peer, meta.dst, serial),
        _ => Admitted {
            port,
            principal: Some(Principal::Spiffe(peer)),
            serial: Some(serial),
            opened: false,
        },
    };
    let mut record = match pod.admit_live(admitted) {
        Ok(ticket) => record.watched(ticket),
        Err(refusal) => return refuse(record, &app, refusal),
    };
    relay::closing_normally(&app, &tls);
    tracing::info!(pod = %meta.pod, src = %meta.src, dst = %meta.dst, "connection adopted from the previous daemon");
    let tls = KernelTls::new(tls, None, pod.shared.offload.records_per_key());
    record.relay_tunnel(app, TunnelStream::Kernel(tls)).await;
}

/// Ends an adopted connection that may not go on (a reset, never a clean close).
fn refuse(record: Connection, app: &tokio::net::TcpStream, refusal: Refusal) {
    super::splice::reset(app);
    record.refuse(refusal);
}
