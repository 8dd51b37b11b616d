//! Structured logs (tracing): text for people, JSON for collectors. The level can be
//! changed at run time (the admin API's `/logging`).

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tracing_subscriber::{
    EnvFilter, Registry, fmt, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Reads and changes the log filter in force.
#[derive(Clone)]
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The directives in force (EnvFilter does not give them back verbatim).
    current: Arc<Mutex<String>>,
}

impl LogLevel {
    pub fn current(&self) -> String {
        self.current.lock().unwrap().clone()
    }

    /// Replaces the filter with `directives` (`RUST_LOG` syntax, e.g. `debug` or
    /// `info,hawser::access=warn`); a malformed one changes nothing.
    pub fn set(&self, directives: &str) -> Result<()> {
        let filter = EnvFilter::try_new(directives)
            .with_context(|| format!("invalid log level {directives:?}"))?;
        self.handle
            .reload(filter)
            .context("replace the log filter")?;
        *self.current.lock().unwrap() = directives.to_string();
        tracing::info!(level = directives, "log level changed");
        Ok(())
    }
}

/// Installs the global subscriber. The level comes from `HAWSER_LOG` (`RUST_LOG` syntax),
/// default `info`.
pub fn init(format: LogFormat) -> LogLevel {
    let directives = std::env::var("HAWSER_LOG").unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let base = tracing_subscriber::registry().with(filter);
    let writer = std::io::stderr;
    match format {
        LogFormat::Text => base
            .with(fmt::layer().with_ansi(false).with_writer(writer))
            .init(),
        LogFormat::Json => base.with(fmt::layer().json().with_writer(writer)).init(),
    }
    LogLevel {
        handle,
        current: Arc::new(Mutex::new(directives)),
    }
}
