//! The daemon's per-pod listeners and the byte relay behind them.
//!
//! `outbound` serves connections the connect hooks captured in a pod, `inbound` serves
//! connections sk_lookup steered to a pod from the network (`terminate` does the TLS of
//! ports that ask for it, `caller` tells the app who called), `relay` moves the bytes
//! (`copy` in userspace, `framed` for a stream of a serial tunnel session, `splice` under
//! kernel TLS) and logs each connection (`refusal`: why one was refused).

pub mod adopt;
pub mod caller;
pub mod copy;
pub mod framed;
pub mod inbound;
pub mod live;
pub mod outbound;
pub mod refusal;
pub mod relay;
pub mod same_node;
pub mod sockets;
pub mod splice;
pub mod terminate;
pub mod unauthenticated;

#[cfg(test)]
mod tests;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpStream};

use crate::context::pod::PodContext;

/// Accepts until stopped, one task per connection (tracked, for the drain at shutdown). Accept errors (e.g. EMFILE) are logged and
/// retried after a pause rather than ending the listener. The listener is tuned
/// (`sockets::steered_listener`): its connections have their options from the start.
pub async fn accept_loop<F, Fut>(listener: TcpListener, pod: Arc<PodContext>, handle: F)
where
    F: Fn(TcpStream, SocketAddr, Arc<PodContext>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((conn, peer)) => {
                let handled = handle(conn, sockets::canonical(peer), pod.clone());
                pod.shared.drain.spawn(handled);
            }
            Err(e) => {
                tracing::warn!(pod = %pod.key, "accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
