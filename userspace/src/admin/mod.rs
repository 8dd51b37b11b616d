//! The daemon's HTTP side: the admin API on localhost (`/status`, `/certs`,
//! `/config_dump`, `/policy/check`, `/logging`, `/healthz/ready`), `/metrics` for
//! Prometheus, and the CLI commands that read the admin API (`peer`: what another
//! daemon's tunnel port presents).

pub mod cli;
pub mod peer;
pub mod server;
pub mod views;
