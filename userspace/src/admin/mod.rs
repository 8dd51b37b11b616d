//! The daemon's HTTP side: the admin API on localhost (`/status`, `/certs`,
//! `/config_dump`, `/policy/check`, `/logging`, `/healthz/ready`), `/metrics` for
//! Prometheus, and the CLI commands that read the admin API.

pub mod cli;
pub mod server;
pub mod views;
