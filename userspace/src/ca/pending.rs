//! The CA's TLS handshakes in progress, capped per source address and in all. Over a cap
//! the oldest handshake (of that source, or of all) makes room for the newest: a handshake
//! a node daemon starts completes in milliseconds, so holding sockets open silently, from
//! the node's own address or from many, cannot keep a daemon out; it only costs the holder
//! its oldest sockets.

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tokio_util::sync::CancellationToken;

pub struct Pending {
    per_source: usize,
    all: usize,
    started: Mutex<Started>,
}

/// The next id, and the handshakes in the order they started: (id, source, cancelled to
/// end it).
type Started = (u64, VecDeque<(u64, IpAddr, CancellationToken)>);

/// A handshake's place, given up when dropped; `evicted` fires if a newer one took it.
pub struct Place {
    pending: Arc<Pending>,
    id: u64,
    pub evicted: CancellationToken,
}

impl Pending {
    pub fn new(per_source: usize, all: usize) -> Arc<Self> {
        Arc::new(Self {
            per_source,
            all,
            started: Mutex::default(),
        })
    }

    /// A place for a handshake from `source`, evicting the oldest one over a cap.
    pub fn enter(self: &Arc<Self>, source: IpAddr) -> Place {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let (next, queue) = &mut *started;
        let from_source = queue.iter().filter(|(_, ip, _)| *ip == source).count();
        let oldest = match (from_source >= self.per_source, queue.len() >= self.all) {
            (true, _) => queue.iter().position(|(_, ip, _)| *ip == source),
            (false, true) => Some(0),
            (false, false) => None,
        };
        if let Some((_, ip, evicted)) = oldest.and_then(|i| queue.remove(i)) {
            tracing::debug!(source = %ip, "CA handshake evicted by a newer one");
            evicted.cancel();
        }
        let (id, evicted) = (*next, CancellationToken::new());
        *next += 1;
        queue.push_back((id, source, evicted.clone()));
        Place {
            pending: self.clone(),
            id,
            evicted,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.started.lock().unwrap().1.len()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut started = self
            .pending
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        started.1.retain(|(id, _, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_of_a_source_then_of_all_makes_room() {
        let pending = Pending::new(2, 3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = pending.enter(a);
        let a2 = pending.enter(a);
        let a3 = pending.enter(a);
        assert!(a1.evicted.is_cancelled(), "the source's oldest made room");
        assert!(!a2.evicted.is_cancelled() && !a3.evicted.is_cancelled());
        let b1 = pending.enter(b);
        let b2 = pending.enter(b);
        assert!(a2.evicted.is_cancelled(), "the oldest of all made room");
        assert!(!b1.evicted.is_cancelled() && !b2.evicted.is_cancelled());
        drop((a1, a2));
        assert_eq!(pending.len(), 3);
        drop((a3, b1, b2));
        assert_eq!(pending.len(), 0, "places are given back");
    }
}
