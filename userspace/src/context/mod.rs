//! What the data path and the daemon's readers know, below the daemon that builds it:
//! `shared` (the node's state every pod's handlers share), `pod` (the pod a handler
//! serves), `status` (the enrolled set the daemon publishes), `drain` (the connections
//! a shutdown lets finish), `handoff` (the kernel-TLS connections a successor daemon
//! takes), `steering` (the handlers' seam to the kernel).

pub mod drain;
pub mod handoff;
pub mod pod;
pub mod shared;
pub mod status;
pub mod steering;
#[cfg(test)]
pub mod testing;
