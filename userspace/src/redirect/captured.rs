//! A captured pod as its connection handlers see it (`context::steering`): the eBPF maps
//! that record and steer its connections, and sockets made inside its namespace.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use super::dataplane::Dataplane;
use crate::{
    context::steering::{DeliveryPort, Steering},
    failure::Failure,
    netns::Netns,
    proxy::sockets,
};

pub struct Captured {
    pub dataplane: Arc<Dataplane>,
    pub netns: Netns,
    pub netns_cookie: u64,
}

impl Steering for Captured {
    fn original_dst(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.dataplane.take_original_dst(self.netns_cookie, peer)
    }

    /// sk_lookup keeps the address the client dialed as the socket's local address; one
    /// to the listener's own loopback address is a process in the pod dialing the daemon.
    fn dialed(&self, local: SocketAddr, _peer: SocketAddr) -> Option<SocketAddr> {
        (!local.ip().is_loopback()).then_some(local)
    }

    fn outbound_socket(
        &self,
        dst: SocketAddr,
        source: Option<IpAddr>,
    ) -> io::Result<std::net::TcpStream> {
        self.netns.enter(|| sockets::outbound(dst, source))
    }

    fn delivery_socket(
        &self,
        client: SocketAddr,
        port: DeliveryPort,
    ) -> io::Result<std::net::TcpStream> {
        self.netns.enter(|| sockets::transparent(client, port))
    }

    fn announce_delivery(
        &self,
        bound: SocketAddr,
        dst: SocketAddr,
        lifetime: Duration,
    ) -> Result<bool, Failure> {
        let announced = self.dataplane.announce_delivery(bound, dst, lifetime);
        announced.map_err(|e| Failure::Steering(format!("the delivery pass: {e}")))
    }

    fn forget_delivery(&self, bound: SocketAddr, dst: SocketAddr) {
        self.dataplane.forget_delivery(bound, dst);
    }
}
