//! Bounded fuzzing of the parsers that take bytes from the network or from tenants: the
//! `cargo fuzz` targets in `fuzz/`, built with the nightly toolchain (libFuzzer, address
//! sanitizer). New inputs go to `target/fuzz/corpus/<target>` (kept between runs), crashes
//! to `target/fuzz/artifacts/`; `fuzz/seeds/<target>` holds the committed starting points.

use anyhow::{Result, bail};

use crate::cmd::{self, step, workspace};

/// Each target and what it takes.
pub const TARGETS: [(&str, &str); 4] = [
    ("preamble", "the tunnel preamble a peer sends"),
    (
        "proxy_v2",
        "the PROXY v2 header written for an app, read back",
    ),
    ("cni_request", "a request line on the CNI socket"),
    (
        "config_yaml",
        "tenants' Workload, InboundPorts and Istio YAML",
    ),
];

/// Fuzzes each target (or `only`) for `seconds`.
pub fn run(seconds: u64, only: Option<&str>) -> Result<()> {
    if let Some(name) = only.filter(|n| !TARGETS.iter().any(|(t, _)| t == n)) {
        let names: Vec<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
        bail!("no fuzz target {name:?} (there are {names:?})");
    }
    for (target, what) in TARGETS.iter().filter(|(t, _)| only.is_none_or(|o| o == *t)) {
        let corpus = workspace().join("target/fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(workspace().join("target/fuzz/artifacts"))?;
        let (corpus, seeds) = (corpus.display().to_string(), format!("fuzz/seeds/{target}"));
        step(&format!("fuzzing {target} ({what}) for {seconds} s"));
        cmd::run_quietly(
            "rustup",
            &[
                "run",
                "nightly",
                "cargo",
                "fuzz",
                "run",
                "--target-dir",
                "target/fuzz",
                target,
                &corpus,
                &seeds,
                "--",
                &format!("-max_total_time={seconds}"),
                &format!("-artifact_prefix=target/fuzz/artifacts/{target}-"),
            ],
            "Done",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libFuzzer exits when a corpus directory is missing, and git does not keep an
    /// empty one: every target needs a committed seed file, or a fresh clone cannot fuzz.
    #[test]
    fn every_target_has_a_committed_seed() {
        let tracked = std::process::Command::new("git")
            .args(["ls-files", "fuzz/seeds"])
            .current_dir(workspace())
            .output()
            .expect("git runs");
        assert!(tracked.status.success(), "git ls-files failed");
        let tracked = String::from_utf8_lossy(&tracked.stdout);
        for (target, _) in TARGETS {
            let prefix = format!("fuzz/seeds/{target}/");
            assert!(
                tracked.lines().any(|f| f.starts_with(&prefix)),
                "no committed seed under {prefix}"
            );
        }
    }
}
