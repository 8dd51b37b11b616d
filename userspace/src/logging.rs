//! Structured logs (tracing): text for people, JSON for collectors.

use tracing_subscriber::{EnvFilter, fmt};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. The level comes from `HAWSER_LOG` (`RUST_LOG` syntax),
/// default `info`. Records of the `log` crate (aya-log's eBPF messages) are included.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("HAWSER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}
