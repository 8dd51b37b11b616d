//! The daemon under test: `hawser node` started in a node's namespace and cgroup.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{Node, Proc, Testbed, hawser_bin};

pub struct Daemon {
    proc: Option<Proc>,
    argv: Vec<String>,
    netns: PathBuf,
    cgroup: PathBuf,
    pub log: PathBuf,
    echo_log_on_drop: bool,
}

impl Daemon {
    /// Starts the daemon and waits until it has enrolled its pods ("node ready").
    pub(crate) fn start(bed: &Testbed, node: &Node) -> Result<Self> {
        let argv: Vec<String> = [
            hawser_bin().display().to_string(),
            "node".into(),
            "--node-name".into(),
            node.name.clone(),
            "--config-dir".into(),
            bed.config_dir().display().to_string(),
            "--pin-dir".into(),
            bed.pin_dir().display().to_string(),
            "--cgroup".into(),
            node.cgroup.display().to_string(),
            "--reload-interval-ms".into(),
            "200".into(),
        ]
        .into();
        let mut daemon = Daemon {
            proc: None,
            argv,
            netns: PathBuf::from("/run/netns").join(&node.netns),
            // The daemon runs inside the cgroup its programs watch, as it does in a
            // cluster: its own connections must still never be captured.
            cgroup: node.cgroup.clone(),
            log: bed.dir().join(format!("hawser-{}.log", node.name)),
            echo_log_on_drop: true,
        };
        daemon.restart()?;
        Ok(daemon)
    }

    /// (Re)starts the process and waits for it to be ready.
    pub fn restart(&mut self) -> Result<()> {
        let readies = self.count("node ready");
        let argv: Vec<&str> = self.argv.iter().map(String::as_str).collect();
        let mut env_argv = vec!["env", "HAWSER_LOG=info,hawser=debug"];
        env_argv.extend(argv);
        self.proc = Some(Proc::spawn_logged(
            &env_argv,
            &self.netns,
            &self.cgroup,
            &self.log,
        )?);
        self.wait_for("daemon ready", Duration::from_secs(20), |log| {
            log.matches("node ready").count() > readies
        })
    }

    /// Whether dropping prints the whole log (the default, for failing tests).
    pub fn echo_log_on_drop(&mut self, echo: bool) {
        self.echo_log_on_drop = echo;
    }

    /// SIGTERM, as a node drain or a DaemonSet rollout does.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut proc) = self.proc.take() {
            proc.terminate()?;
        }
        Ok(())
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Log lines containing every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// Waits until `done(log)` holds, failing with the log after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if done(&log) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}; daemon log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    /// The harness shows a test's output only when it fails: then the log is right there.
    fn drop(&mut self) {
        if !self.echo_log_on_drop {
            return;
        }
        eprintln!(
            "--- hawser daemon log ({}) ---\n{}",
            self.log.display(),
            self.log()
        );
    }
}
