//! A node daemon's Prometheus metrics, as an operator's scraper sees them.

use anyhow::Result;

use crate::Node;

const METRICS: &str = "http://127.0.0.1:15020/metrics";

/// The daemon's `/metrics` on `node`.
pub fn scrape(node: &Node) -> Result<String> {
    let (code, body) = node.http_get(METRICS)?;
    anyhow::ensure!(code == 200, "/metrics answered {code}");
    Ok(body)
}

/// The value of the sample of `metric` whose labels include every one of `labels`.
pub fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
