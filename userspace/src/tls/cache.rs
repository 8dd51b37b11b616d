//! The tunnel's TLS configurations of one pod, built once per SVID and trust bundle
//! rather than per connection: building one parses the certificates and loads the key
//! (a signature check of its own), which cost as much as a good part of the handshake.
//!
//! A renewed SVID or a new bundle (new roots, new revocations) is a new `Arc`, which
//! rebuilds everything on the next connection: with it the server's ticket key and the
//! clients' session stores, so no session resumes past such a change.

use std::{collections::HashMap, sync::Arc, sync::Mutex};

use rustls::{ClientConfig, ServerConfig};

use super::{
    configs,
    offload::{Offload, TlsPath},
    verify::Anchors,
};
use crate::{
    failure::Result,
    svid::{bundle::TrustBundle, held::Svid},
};
use hawser_model::SpiffeId;

/// Client configurations kept per peer identity, at most (a pod talks to a bounded set
/// of services; past this the map starts over).
const MAX_PEERS: usize = 1024;

#[derive(Default)]
pub struct TlsConfigs {
    built: Mutex<Option<Built>>,
}

struct Built {
    svid: Arc<Svid>,
    bundle: Arc<TrustBundle>,
    anchors: Option<Arc<Anchors>>,
    server: Option<Arc<ServerConfig>>,
    clients: HashMap<SpiffeId, Arc<ClientConfig>>,
}

impl TlsConfigs {
    /// The server side's configuration for `svid` and `bundle`.
    pub fn server(
        &self,
        svid: &Arc<Svid>,
        bundle: &Arc<TrustBundle>,
        offload: &Offload,
    ) -> Result<Arc<ServerConfig>> {
        let mut built = self.current(svid, bundle);
        let built = built.as_mut().expect("current() fills it");
        if let Some(server) = &built.server {
            return Ok(server.clone());
        }
        let anchors = built.anchors()?;
        let serial = offload.path() == TlsPath::Userspace;
        let server = configs::mesh_server(svid, &anchors, offload.provider(), serial)?;
        let server = Arc::new(server);
        built.server = Some(server.clone());
        Ok(server)
    }

    /// The client side's configuration towards `peer`, offering serial sessions when
    /// `serial` (a pod's every call passes the same).
    pub fn client(
        &self,
        svid: &Arc<Svid>,
        bundle: &Arc<TrustBundle>,
        peer: &SpiffeId,
        offload: &Offload,
        serial: bool,
    ) -> Result<Arc<ClientConfig>> {
        let mut built = self.current(svid, bundle);
        let built = built.as_mut().expect("current() fills it");
        if let Some(client) = built.clients.get(peer) {
            return Ok(client.clone());
        }
        let anchors = built.anchors()?;
        let provider = offload.provider();
        let client = configs::mesh_client(svid, &anchors, peer.clone(), provider, serial)?;
        let client = Arc::new(client);
        if built.clients.len() >= MAX_PEERS {
            built.clients.clear();
        }
        built.clients.insert(peer.clone(), client.clone());
        Ok(client)
    }

    /// The cache, emptied when the SVID or the bundle changed.
    fn current(
        &self,
        svid: &Arc<Svid>,
        bundle: &Arc<TrustBundle>,
    ) -> std::sync::MutexGuard<'_, Option<Built>> {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = built
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(&b.svid, svid) && Arc::ptr_eq(&b.bundle, bundle));
        if !fresh {
            *built = Some(Built {
                svid: svid.clone(),
                bundle: bundle.clone(),
                anchors: None,
                server: None,
                clients: HashMap::new(),
            });
        }
        built
    }
}

impl Built {
    /// The bundle's roots by trust domain, read once per bundle.
    fn anchors(&mut self) -> Result<Arc<Anchors>> {
        if let Some(anchors) = &self.anchors {
            return Ok(anchors.clone());
        }
        let anchors = Arc::new(Anchors::of(&self.bundle)?);
        self.anchors = Some(anchors.clone());
        Ok(anchors)
    }
}
