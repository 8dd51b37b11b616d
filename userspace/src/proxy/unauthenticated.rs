//! Connections that have proven nothing yet (a TLS handshake, a preamble in progress) cost
//! a descriptor and a task each, and anyone who can reach a pod can open thousands without
//! a certificate. They are capped per source address and per pod: beyond the caps a
//! connection is closed at once, so an idle flood cannot starve real traffic, the CA poll
//! or the config reload of descriptors. Refusals before authentication are logged at a
//! bounded rate, so the flood cannot fill the log either.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Handshakes one source address may have in progress with one pod.
pub const PER_SOURCE: usize = 32;
/// Handshakes one pod may have in progress in all.
pub const PER_POD: usize = 256;
/// Refusal lines per second before the rest are only counted.
const LOG_LINES_PER_SECOND: u32 = 20;

/// One pod's connections that are not authenticated yet.
pub struct Unauthenticated {
    by_source: Mutex<HashMap<IpAddr, usize>>,
    per_source: usize,
    per_pod: usize,
    log: Mutex<LogWindow>,
}

/// Holds a connection's place until it has authenticated (or failed).
pub struct Permit {
    table: Arc<Unauthenticated>,
    source: IpAddr,
}

struct LogWindow {
    started: Instant,
    lines: u32,
    suppressed: u64,
}

impl Default for Unauthenticated {
    fn default() -> Self {
        Self::with_caps(PER_SOURCE, PER_POD)
    }
}

impl Unauthenticated {
    pub fn with_caps(per_source: usize, per_pod: usize) -> Self {
        Self {
            by_source: Mutex::default(),
            per_source,
            per_pod,
            log: Mutex::new(LogWindow {
                started: Instant::now(),
                lines: 0,
                suppressed: 0,
            }),
        }
    }

    /// A place for a new connection from `source`, or why there is none.
    pub fn enter(self: &Arc<Self>, source: IpAddr) -> Result<Permit, String> {
        let mut by_source = self.by_source.lock().unwrap();
        let total: usize = by_source.values().sum();
        let mine = by_source.entry(source).or_default();
        if *mine >= self.per_source {
            return Err(format!(
                "{source} already has {} unauthenticated connections",
                self.per_source
            ));
        }
        if total >= self.per_pod {
            return Err(format!(
                "{} unauthenticated connections are in progress already",
                self.per_pod
            ));
        }
        *mine += 1;
        Ok(Permit {
            table: self.clone(),
            source,
        })
    }

    /// Whether a refusal before authentication may be logged now; the lines held back
    /// are summed up in one line when the next second starts.
    pub fn may_log(&self) -> bool {
        let mut window = self.log.lock().unwrap();
        if window.started.elapsed() >= Duration::from_secs(1) {
            if window.suppressed > 0 {
                tracing::warn!(
                    suppressed = window.suppressed,
                    "refusals of unauthenticated connections not logged (rate limit)"
                );
            }
            *window = LogWindow {
                started: Instant::now(),
                lines: 0,
                suppressed: 0,
            };
        }
        if window.lines < LOG_LINES_PER_SECOND {
            window.lines += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut by_source = self.table.by_source.lock().unwrap();
        if let Some(count) = by_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_the_pod_are_capped_and_places_come_back() {
        let table = Arc::new(Unauthenticated::with_caps(2, 3));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = table.enter(a).unwrap();
        let _second = table.enter(a).unwrap();
        let refused = |source| table.enter(source).err().unwrap_or_default();
        assert!(refused(a).contains("10.0.0.1 already has 2"));
        let _third = table.enter(b).unwrap();
        assert!(refused(b).contains("3 unauthenticated connections are in progress"));
        drop(first);
        assert!(
            table.enter(a).is_ok(),
            "a place freed by an ended handshake"
        );
    }

    #[test]
    fn refusals_are_logged_at_a_bounded_rate() {
        let table = Unauthenticated::default();
        let logged = (0..100).filter(|_| table.may_log()).count();
        assert_eq!(logged, LOG_LINES_PER_SECOND as usize);
    }
}
