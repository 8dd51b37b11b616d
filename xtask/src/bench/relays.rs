//! The off-the-shelf way to tunnel mTLS between two pods: a pair of HAProxy relays (Debian's).
//! In the client pod HAProxy listens on 127.0.0.1 and originates TLS 1.3 with a client
//! certificate, checking the server's chain and name; in the server pod HAProxy terminates
//! mutual TLS and forwards to the app on 127.0.0.1. TLS sessions are resumed (HAProxy's
//! default), as between hawser's daemons.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hawser_testbed::{Pod, Proc, Testbed, peers::wait_listening, pki};

/// The relayed ports: the client dials 127.0.0.1:PORT in its own pod, which reaches
/// PORT + `TLS_OFFSET` on the server pod's address over mTLS.
const TLS_OFFSET: u16 = 10_000;

/// Connections each relay takes: the idle measure's, with room (two descriptors each).
const MAX_CONNECTIONS: u32 = 9_000;

/// The two relays, client side first; they stop when dropped.
pub struct Relays {
    relays: [Relay; 2],
}

/// One HAProxy, and how to start it again.
struct Relay {
    proc: Proc,
    pod: Pod,
    config: PathBuf,
    log: PathBuf,
    /// The port it listens on last: listening there, it listens on all.
    port: u16,
}

impl Relays {
    pub fn pids(&self) -> Vec<i32> {
        self.relays.iter().map(|r| r.proc.pid()).collect()
    }

    /// Starts both again with fresh heaps (for a memory measure).
    pub fn restart(&mut self) -> Result<()> {
        for relay in &mut self.relays {
            relay.proc.terminate()?;
            relay.proc = spawn(&relay.pod, &relay.config, &relay.log)?;
        }
        self.wait()
    }

    fn wait(&self) -> Result<()> {
        for relay in &self.relays {
            wait_listening(&relay.pod, relay.port, "haproxy")?;
        }
        Ok(())
    }
}

/// Starts the two relays for `ports`.
pub fn start(bed: &Testbed, client: &Pod, server: &Pod, ports: &[u16]) -> Result<Relays> {
    let dir = bed.dir().join("haproxy");
    let ca = pki::ca(&dir, "relay-ca")?;
    let server_pem = combined(
        &dir,
        &pki::leaf(&dir, "server", "/CN=b", "subjectAltName=DNS:b", &ca)?,
    )?;
    let client_pem = combined(
        &dir,
        &pki::leaf(&dir, "client", "/CN=a", "subjectAltName=DNS:a", &ca)?,
    )?;
    let ca = ca.cert.display().to_string();
    let originating = proxies(ports, |port| {
        format!(
            "frontend app{port}\n  bind 127.0.0.1:{port}\n  default_backend tls{port}\n\
             backend tls{port}\n  server b {ip}:{tls} ssl crt {client_pem} ca-file {ca} \
             verify required verifyhost b ssl-min-ver TLSv1.3\n",
            ip = server.ip,
            tls = port + TLS_OFFSET,
        )
    });
    let terminating = proxies(ports, |port| {
        format!(
            "frontend tls{port}\n  bind :{tls} ssl crt {server_pem} ca-file {ca} \
             verify required ssl-min-ver TLSv1.3\n  default_backend app{port}\n\
             backend app{port}\n  server app 127.0.0.1:{port}\n",
            tls = port + TLS_OFFSET,
        )
    });
    let last = *ports.last().context("no port to relay")?;
    let relays = Relays {
        relays: [
            relay(&dir, client, "client", &originating, last)?,
            relay(&dir, server, "server", &terminating, last + TLS_OFFSET)?,
        ],
    };
    relays.wait()?;
    Ok(relays)
}

/// The configuration: TCP mode, long idle timeouts, one proxy pair per port.
fn proxies(ports: &[u16], proxy: impl Fn(u16) -> String) -> String {
    let mut config = format!(
        "global\n  maxconn {MAX_CONNECTIONS}\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n"
    );
    for &port in ports {
        config += &proxy(port);
    }
    config
}

/// A relay named `name` in `pod` with its `config` written beside its log.
fn relay(dir: &Path, pod: &Pod, name: &str, config: &str, port: u16) -> Result<Relay> {
    let config_path = dir.join(format!("{name}.cfg"));
    std::fs::write(&config_path, config)?;
    let log = dir.join(format!("{name}.log"));
    Ok(Relay {
        proc: spawn(pod, &config_path, &log)?,
        pod: pod.clone(),
        config: config_path,
        log,
        port,
    })
}

/// HAProxy in the foreground in `pod`.
fn spawn(pod: &Pod, config: &Path, log: &Path) -> Result<Proc> {
    let config = config.display().to_string();
    Proc::spawn_logged(
        &["haproxy", "-db", "-f", &config],
        &pod.netns_path,
        &pod.cgroup,
        log,
    )
}

/// HAProxy's `crt` file: the certificate followed by its key.
fn combined(dir: &Path, pair: &pki::Pair) -> Result<String> {
    let name = pair.cert.file_stem().unwrap_or_default().to_string_lossy();
    let path = dir.join(format!("{name}.pem"));
    let pem = std::fs::read_to_string(&pair.cert)? + &std::fs::read_to_string(&pair.key)?;
    std::fs::write(&path, pem)?;
    Ok(path.display().to_string())
}
