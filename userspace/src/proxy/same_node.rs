//! Same-node identity: the connections the daemon itself opens from one of this node's
//! pods to another.
//!
//! Between two pods of one node there is no tunnel to prove who is calling, and an address
//! proves nothing (anything on the node's bridge can take a pod's IP). What the daemon
//! knows for certain is the connections it opened on a pod's behalf: it binds the source
//! port before connecting, records the exact 4-tuple with the pod's identity, and the
//! inbound side on arrival looks the 4-tuple up. Anything else is unauthenticated.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use hawser_model::SpiffeId;

/// Who opened a same-node connection: the pod's identity and the serial of the SVID it
/// held then (revocation applies to it as to a tunnel's client certificate).
#[derive(Clone, Debug)]
pub struct Origin {
    pub identity: SpiffeId,
    pub serial: Option<String>,
}

/// The open same-node connections the daemon originated, by (source, destination).
#[derive(Default)]
pub struct Originated {
    conns: Mutex<HashMap<(SocketAddr, SocketAddr), Origin>>,
}

/// Keeps a record for as long as its connection lives.
pub struct Record {
    table: Arc<Originated>,
    key: (SocketAddr, SocketAddr),
}

impl Originated {
    /// Records a connection about to be opened from `src` (bound) to `dst`.
    pub fn record(self: &Arc<Self>, src: SocketAddr, dst: SocketAddr, origin: Origin) -> Record {
        let key = (src, dst);
        self.conns.lock().unwrap().insert(key, origin);
        Record {
            table: self.clone(),
            key,
        }
    }

    /// Who opened the connection `src` → `dst`, if the daemon did.
    pub fn origin(&self, src: SocketAddr, dst: SocketAddr) -> Option<Origin> {
        self.conns.lock().unwrap().get(&(src, dst)).cloned()
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.table.conns.lock().unwrap().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_connection_carries_the_identity_and_only_while_it_lives() {
        let table = Arc::new(Originated::default());
        let (src, dst) = (
            "10.1.0.2:40000".parse().unwrap(),
            "10.1.0.4:80".parse().unwrap(),
        );
        let origin = Origin {
            identity: SpiffeId::new("cluster.local", "default", "a"),
            serial: None,
        };
        let record = table.record(src, dst, origin);
        assert!(table.origin(src, dst).is_some());
        // The same address from another port (a borrowed IP) proves nothing.
        assert!(
            table
                .origin("10.1.0.2:40001".parse().unwrap(), dst)
                .is_none()
        );
        drop(record);
        assert!(table.origin(src, dst).is_none());
    }
}
