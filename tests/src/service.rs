//! hawser processes under test (`hawser node`, `hawser ca`), started in a node's namespace
//! and cgroup, logging to a file the tests read.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{Node, Proc, Testbed, hawser_bin};

pub struct Service {
    proc: Option<Proc>,
    argv: Vec<String>,
    netns: PathBuf,
    cgroup: PathBuf,
    /// A log line that says the process is ready.
    ready: &'static str,
    pub log: PathBuf,
    echo_log_on_drop: bool,
}

/// The built-in CA of a test bed: where it listens and what a node needs to reach it.
pub struct CaInfo {
    pub address: String,
    pub root: PathBuf,
    pub revocations: PathBuf,
    dir: PathBuf,
}

impl CaInfo {
    /// The file holding `node`'s credential.
    pub fn token_file(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.token"))
    }
}

const CA_PORT: u16 = 15012;

impl Service {
    /// `hawser node` for `node`, with identities from `ca` when given.
    pub(crate) fn node(
        bed: &Testbed,
        node: &Node,
        ca: Option<&CaInfo>,
        extra: &[&str],
        env: &[String],
    ) -> Result<Self> {
        let log = format!("hawser-{}.log", node.name);
        Self::node_logged(bed, node, ca, extra, env, &log)
    }

    /// `node`, logging to `log` in the bed's directory.
    pub(crate) fn node_logged(
        bed: &Testbed,
        node: &Node,
        ca: Option<&CaInfo>,
        extra: &[&str],
        env: &[String],
        log: &str,
    ) -> Result<Self> {
        let mut args = vec![
            "node".to_string(),
            "--node-name".into(),
            node.name.clone(),
            "--config-dir".into(),
            path(&bed.config_dir()),
            "--pin-dir".into(),
            // One daemon per node, as on real hosts: each has its own pins.
            path(&bed.pin_dir().join(&node.name)),
            "--cgroup".into(),
            path(&node.cgroup),
            "--reload-interval-ms".into(),
            "200".into(),
            // The test bed's certificate files live in its scratch directory.
            "--credential-roots".into(),
            path(bed.dir()),
        ];
        if let Some(ca) = ca {
            args.extend([
                "--ca-address".into(),
                format!("https://{}", ca.address),
                "--ca-root".into(),
                path(&ca.root),
                "--node-token-file".into(),
                path(&ca.token_file(&node.name)),
                "--bundle-interval-secs".into(),
                "1".into(),
            ]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        // The daemon runs inside the cgroup its programs watch, as it does in a cluster:
        // its own connections must still never be captured.
        Self::start(bed, node, env, args, log, "node ready")
    }

    /// `hawser ca` in `on`'s namespace, listening on port 15012 of its bridge address
    /// (reachable from every connected node), with a self-signed root, the test bed's
    /// workload directory as its registry, and a credential for each of `nodes`.
    pub(crate) fn ca(bed: &Testbed, on: &Node, nodes: &[&Node]) -> Result<(Self, CaInfo)> {
        Self::ca_named(bed, on, nodes, "ca", &[])
    }

    /// The CA as `ca`, with its files in `name` of the bed's directory, its log in
    /// `hawser-<name>.log` and `extra` arguments (another trust domain, say).
    pub(crate) fn ca_named(
        bed: &Testbed,
        on: &Node,
        nodes: &[&Node],
        name: &str,
        extra: &[&str],
    ) -> Result<(Self, CaInfo)> {
        let dir = bed.dir().join(name);
        std::fs::create_dir_all(&dir)?;
        let info = CaInfo {
            address: format!("{}:{CA_PORT}", on.gateway()),
            root: dir.join("state/root-cert.pem"),
            revocations: dir.join("revoked.yaml"),
            dir: dir.clone(),
        };
        let mut tokens = String::new();
        for node in nodes {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos();
            let token = format!("{}-credential-{nanos:x}", node.name);
            tokens += &format!("{}: {token}\n", node.name);
            std::fs::write(info.token_file(&node.name), token)?;
        }
        std::fs::write(dir.join("tokens.yaml"), tokens)?;
        let args = vec![
            "ca".to_string(),
            "--listen".into(),
            format!("0.0.0.0:{CA_PORT}"),
            "--state-dir".into(),
            path(&dir.join("state")),
            "--config-dir".into(),
            path(&bed.config_dir()),
            "--node-tokens".into(),
            path(&dir.join("tokens.yaml")),
            "--revocations".into(),
            path(&info.revocations),
            "--reload-interval-ms".into(),
            "200".into(),
        ];
        let args = args.into_iter().chain(extra.iter().map(|a| a.to_string()));
        let log = format!("hawser-{name}.log");
        Ok((
            Self::start(bed, on, &[], args.collect(), &log, "CA serving")?,
            info,
        ))
    }

    fn start(
        bed: &Testbed,
        node: &Node,
        env: &[String],
        args: Vec<String>,
        log: &str,
        ready: &'static str,
    ) -> Result<Self> {
        let mut argv = vec!["env".to_string(), "HAWSER_LOG=info,hawser=debug".into()];
        argv.extend(env.iter().cloned());
        argv.push(path(&hawser_bin()));
        argv.extend(args);
        let mut service = Service {
            proc: None,
            argv,
            netns: PathBuf::from("/run/netns").join(&node.netns),
            cgroup: node.cgroup.clone(),
            ready,
            log: bed.dir().join(log),
            echo_log_on_drop: true,
        };
        service.restart()?;
        Ok(service)
    }

    /// Stops the process if it runs (SIGTERM, waiting for it to end), starts it again and
    /// waits for it to be ready. Never two at once: an overlap is an upgrade, which
    /// `Testbed::start_node_generation` makes on purpose.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let readies = self.count(self.ready);
        let argv: Vec<&str> = self.argv.iter().map(String::as_str).collect();
        self.proc = Some(Proc::spawn_logged(
            &argv,
            &self.netns,
            &self.cgroup,
            &self.log,
        )?);
        let ready = self.ready;
        // Generous: under emulation (the kTLS VM) a cold start has taken over 20 s.
        self.wait_for(ready, Duration::from_secs(60), |log| {
            log.matches(ready).count() > readies
        })
    }

    /// The process's id while it runs (to read its counters in /proc).
    pub fn pid(&self) -> Option<i32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Whether dropping prints the whole log (the default, for failing tests).
    pub fn echo_log_on_drop(&mut self, echo: bool) {
        self.echo_log_on_drop = echo;
    }

    /// Whether the process has ended on its own (or was never started).
    pub fn exited(&mut self) -> bool {
        self.proc.as_mut().is_none_or(Proc::exited)
    }

    /// SIGTERM, as a node drain or a DaemonSet rollout does.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut proc) = self.proc.take() {
            proc.terminate()?;
        }
        Ok(())
    }

    /// SIGKILL, as a crash or an OOM kill does: nothing is closed cleanly.
    pub fn kill(&mut self) {
        drop(self.proc.take());
    }

    /// Waits up to `timeout` for a log line that contains every one of `needles`.
    pub fn wait_for_line(&self, timeout: Duration, needles: &[&str]) -> Result<()> {
        let what = format!("a line with {needles:?}");
        self.wait_for(&what, timeout, |log| {
            log.lines().any(|l| needles.iter().all(|n| l.contains(n)))
        })
    }

    /// Everything the process logged so far.
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
                bail!(
                    "timed out waiting for {what}; log of {}:\n{log}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    /// The harness shows a test's output only when it fails: then the log is right there.
    fn drop(&mut self) {
        if self.echo_log_on_drop {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log());
        }
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
