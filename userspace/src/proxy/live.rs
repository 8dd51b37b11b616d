//! Admitted connections, kept while they live so that a change reaches them: when policy,
//! the trust bundle or the revocation list change, each is checked again as if it were
//! arriving now, and those no longer allowed are cut (both ends reset, the reason in the
//! access log). Without this a DENY, a STRICT or a revocation would only apply to
//! connections opened after it. Incoming connections are checked for their caller and
//! policy; tunnels a pod opened, for the server's trust domain and revocation.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::oneshot;

use hawser_model::policy::Principal;

/// What a connection was admitted as.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub port: u16,
    /// Who the other side proved to be: the caller, or the server of a tunnel the pod
    /// opened.
    pub principal: Option<Principal>,
    /// The serial of that side's certificate, when it showed one (for revocation).
    pub serial: Option<String>,
    /// A tunnel the pod opened: only the server's trust is checked again (policy is the
    /// server side's to apply).
    pub opened: bool,
}

/// One pod's admitted connections.
#[derive(Default)]
pub struct Live {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, (Admitted, oneshot::Sender<String>)>>,
}

/// A connection's place in `Live`, released when it ends.
pub struct Ticket {
    live: Arc<Live>,
    id: u64,
    cut: oneshot::Receiver<String>,
}

impl Live {
    pub fn admit(self: &Arc<Self>, admitted: Admitted) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, cut) = oneshot::channel();
        self.conns.lock().unwrap().insert(id, (admitted, tx));
        Ticket {
            live: self.clone(),
            id,
            cut,
        }
    }

    /// Checks every connection again; cuts those `check` refuses, with its reason.
    /// Returns how many were cut.
    pub fn recheck(&self, check: impl Fn(&Admitted) -> Result<(), String>) -> usize {
        let mut conns = self.conns.lock().unwrap();
        let refused: Vec<(u64, String)> = conns
            .iter()
            .filter_map(|(id, (admitted, _))| check(admitted).err().map(|why| (*id, why)))
            .collect();
        for (id, why) in &refused {
            if let Some((_, tx)) = conns.remove(id) {
                let _ = tx.send(why.clone());
            }
        }
        refused.len()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.conns.lock().unwrap().len()
    }
}

impl Ticket {
    /// Resolves with the reason once the connection is no longer allowed; never if it
    /// stays allowed.
    pub async fn cut(&mut self) -> String {
        match (&mut self.cut).await {
            Ok(why) => why,
            Err(_) => std::future::pending().await,
        }
    }

    /// Why the connection was cut, if it was (and the cut not yet awaited).
    pub fn was_cut(&mut self) -> Option<String> {
        self.cut.try_recv().ok()
    }

    /// What the connection was admitted as (None once it was cut).
    pub fn admitted(&self) -> Option<Admitted> {
        let conns = self.live.conns.lock().unwrap();
        conns.get(&self.id).map(|(admitted, _)| admitted.clone())
    }
}

/// The connection ended, however it ended: it leaves `Live`.
impl Drop for Ticket {
    fn drop(&mut self) {
        self.live.conns.lock().unwrap().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_connections_the_check_refuses_are_cut_and_ended_ones_leave() {
        let live = Arc::new(Live::default());
        let on = |port| Admitted {
            port,
            principal: None,
            serial: None,
            opened: false,
        };
        let kept = live.admit(on(80));
        let mut refused = live.admit(on(8080));
        let check = |a: &Admitted| match a.port {
            8080 => Err("no".to_string()),
            _ => Ok(()),
        };
        assert_eq!(live.recheck(check), 1);
        assert_eq!(refused.cut().await, "no");
        assert_eq!(live.len(), 1, "the kept one is still checked");
        assert_eq!(live.recheck(check), 0);
        drop(kept);
        assert_eq!(live.len(), 0, "an ended connection leaves");
    }
}
