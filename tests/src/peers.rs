//! Real peers in pods: nginx as a web server, socat as an echo server, curl as a client.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{Pod, Proc, Testbed};

/// nginx serving `/hello.txt` on port 80 (and on any TLS servers added), logging per
/// request: client address, port, status, SNI, client certificate subject and check.
pub struct Nginx {
    _proc: Proc,
    access_log: PathBuf,
    pub body: String,
}

/// An nginx TLS server that requires a client certificate (`ssl_verify_client on`) and
/// answers only its `server_name`: any other SNI has its handshake rejected.
pub struct TlsServer<'a> {
    pub port: u16,
    pub server_name: &'a str,
    pub cert: &'a std::path::Path,
    pub key: &'a std::path::Path,
    /// The CA client certificates must chain to.
    pub client_ca: &'a std::path::Path,
    /// Speaks TLS 1.2 only, as some servers outside a mesh still do.
    pub tls12_only: bool,
}

impl TlsServer<'_> {
    fn config(&self, root: &std::path::Path) -> String {
        // Said in every server: nginx took one port's TLS 1.2 only for the other ports
        // too, where they said nothing.
        let protocols = if self.tls12_only {
            "ssl_protocols TLSv1.2;"
        } else {
            "ssl_protocols TLSv1.2 TLSv1.3;"
        };
        format!(
            "server {{ listen {port} ssl default_server; ssl_reject_handshake on; {protocols} }}
             server {{ listen {port} ssl; server_name {name}; root {root}; {protocols}
               ssl_certificate {cert}; ssl_certificate_key {key};
               ssl_client_certificate {ca}; ssl_verify_client on; ssl_verify_depth 3; }}
",
            port = self.port,
            name = self.server_name,
            root = root.display(),
            cert = self.cert.display(),
            key = self.key.display(),
            ca = self.client_ca.display(),
        )
    }
}

impl Nginx {
    pub fn start(bed: &Testbed, pod: &Pod) -> Result<Self> {
        Self::start_with_tls(bed, pod, &[])
    }

    pub fn start_with_tls(bed: &Testbed, pod: &Pod, tls: &[TlsServer]) -> Result<Self> {
        Self::start_with_servers(bed, pod, |html| {
            tls.iter().map(|t| t.config(html)).collect()
        })
    }

    /// nginx with extra `server` blocks, made from the document root. The log format
    /// `proxied` logs what a PROXY protocol header said: `$proxy_protocol_addr
    /// $remote_addr $server_port $status`.
    pub fn start_with_servers(
        bed: &Testbed,
        pod: &Pod,
        servers: impl Fn(&std::path::Path) -> String,
    ) -> Result<Self> {
        let dir = bed.dir().join(format!("nginx-{}", pod.name));
        std::fs::create_dir_all(dir.join("html"))?;
        let body = format!("hello from {}\n", pod.name);
        std::fs::write(dir.join("html/hello.txt"), &body)?;
        let access_log = dir.join("access.log");
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  log_format peer '$remote_addr $server_port $status \"$ssl_server_name\" \"$ssl_client_s_dn\" $ssl_protocol $ssl_client_verify';\n\
               log_format proxied '$proxy_protocol_addr $remote_addr $server_port $status';\n\
               access_log {log} peer;\n\
               client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
               uwsgi_temp_path {d}; scgi_temp_path {d};\n\
               server {{ listen 80; listen [::]:80; root {d}/html; }}\n{tls}}}\n",
            d = dir.display(),
            log = access_log.display(),
            tls = servers(&dir.join("html")),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let proc = pod.spawn(&["nginx", "-c", &conf_path.display().to_string()])?;
        // Loopback inside the pod is never captured, so this probe is direct.
        wait_until(Duration::from_secs(10), "nginx to listen", || {
            curl(pod, "http://127.0.0.1/hello.txt").is_ok_and(|b| b == body)
        })?;
        // nginx logs a request just after answering it: wait for the probe's line before
        // starting from an empty log.
        wait_until(Duration::from_secs(10), "nginx's access log", || {
            std::fs::metadata(&access_log).is_ok_and(|m| m.len() > 0)
        })?;
        std::fs::write(&access_log, "")?;
        Ok(Self {
            _proc: proc,
            access_log,
            body,
        })
    }

    /// Client addresses of the requests served so far.
    pub fn clients(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// The access log's lines so far. nginx logs a request just after answering it, so
    /// this waits until the log has been still for a moment.
    pub fn requests(&self) -> Vec<String> {
        let read = || std::fs::read_to_string(&self.access_log).unwrap_or_default();
        let mut log = read();
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(200));
            let now = read();
            if now == log {
                break;
            }
            log = now;
        }
        log.lines().map(str::to_string).collect()
    }
}

/// socat echoing every connection on `port` back to its sender.
pub fn echo_server(pod: &Pod, port: u16) -> Result<Proc> {
    let listen = format!("TCP-LISTEN:{port},fork,reuseaddr,backlog=1024");
    // Once the client half-closes, socat waits only 0.5 s (its default) for cat's last
    // bytes and then drops them: not enough for a bulk echo under emulation.
    let proc = pod.spawn(&["socat", "-t", "30", &listen, "EXEC:cat"])?;
    wait_until(Duration::from_secs(10), "socat to listen", || {
        pod.run(&["socat", "-u", "/dev/null", &format!("TCP:127.0.0.1:{port}")])
            .is_ok_and(|o| o.status.success())
    })?;
    Ok(proc)
}

/// The exchanges that succeeded and those that failed, from `hawser-bench rr`'s report;
/// None when it has no such counts.
pub fn rr_counts(report: &str) -> Option<(u32, u32)> {
    let count = |field: &str| {
        let value = report
            .split_whitespace()
            .find_map(|w| w.strip_prefix(field));
        value?.parse().ok()
    };
    Some((count("requests=")?, count("errors=")?))
}

/// A server on `port` of `pod` that greets each client with `hello` and then holds the
/// connection open, silent, for ten minutes: a long-lived connection to cut or keep.
pub fn quiet_server(pod: &Pod, port: u16) -> Result<Proc> {
    let listen = format!("TCP-LISTEN:{port},reuseaddr,fork");
    let server = pod.spawn(&["socat", &listen, "SYSTEM:echo hello; sleep 600"])?;
    wait_listening(pod, port, "the quiet server")?;
    Ok(server)
}

/// Waits until something in `pod` accepts connections on `port` (probed over the pod's
/// loopback, which is never captured).
pub fn wait_listening(pod: &Pod, port: u16, what: &str) -> Result<()> {
    let target = format!("TCP:127.0.0.1:{port}");
    wait_until(Duration::from_secs(10), what, || {
        pod.run(&["socat", "-u", "/dev/null", &target])
            .is_ok_and(|o| o.status.success())
    })
}

/// `curl` from `pod`; the body on success, curl's error otherwise.
pub fn curl(pod: &Pod, url: &str) -> Result<String> {
    let out = pod.run(&["curl", "-sS", "--max-time", "10", url])?;
    if !out.status.success() {
        bail!(
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// tcpdump writing what crosses an interface of a node's namespace to a file.
pub struct Capture {
    proc: Proc,
    file: PathBuf,
}

impl Capture {
    pub fn start(bed: &Testbed, node: &crate::Node, iface: &str) -> Result<Self> {
        let file = bed.dir().join(format!("{}-{iface}.pcap", node.name));
        Self::spawn(file, iface, |argv| node.spawn(argv))
    }

    /// A capture inside a pod's namespace (e.g. its `lo`, where the daemon delivers).
    pub fn in_pod(bed: &Testbed, pod: &Pod, iface: &str) -> Result<Self> {
        let file = bed.dir().join(format!("{}-{iface}.pcap", pod.name));
        Self::spawn(file, iface, |argv| pod.spawn(argv))
    }

    fn spawn(file: PathBuf, iface: &str, spawn: impl Fn(&[&str]) -> Result<Proc>) -> Result<Self> {
        // Its closing statistics (on standard error) say nothing the capture does not.
        let tcpdump = format!(
            "exec tcpdump -i {iface} --immediate-mode -U -n -s 0 -w {} tcp 2>/dev/null",
            file.display()
        );
        let proc = spawn(&["sh", "-c", &tcpdump])?;
        // tcpdump creates the file once it is capturing.
        wait_until(Duration::from_secs(10), "tcpdump to start", || {
            file.exists()
        })?;
        std::thread::sleep(Duration::from_millis(200));
        Ok(Self { proc, file })
    }

    /// Everything captured so far, headers and payload as text.
    pub fn read(&self) -> String {
        let out = std::process::Command::new("tcpdump")
            .args(["-n", "-A", "-r"])
            .arg(&self.file)
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// tshark's dissection of the capture so far: one line per packet that has `field`
    /// (e.g. `proxy.v2.tlv.ssl.cn`), with the values of `fields`, tab-separated. The
    /// tunnel port is dissected as TLS.
    pub fn fields(&self, field: &str, fields: &[&str]) -> Result<Vec<String>> {
        let file = self.file.to_str().unwrap_or("");
        let mut args = vec!["-r", file, "-d", "tcp.port==15008,tls", "-Y", field];
        args.extend(["-T", "fields"]);
        for f in fields {
            args.extend(["-e", f]);
        }
        let out = std::process::Command::new("tshark").args(&args).output()?;
        if !out.status.success() {
            bail!("tshark: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// Waits until the capture shows what `done` looks for (tcpdump can lag behind on a
    /// busy or emulated machine).
    pub fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> Result<()> {
        wait_until(Duration::from_secs(30), what, || done(&self.read()))
    }

    /// `wait_for`, then stops the capture and returns all of it.
    pub fn stop_once(mut self, what: &str, done: impl Fn(&str) -> bool) -> Result<String> {
        self.wait_for(what, done)?;
        self.proc.terminate()?;
        Ok(self.read())
    }
}

/// A client that connects, sends its text at once (the same process, no pipe to wait
/// for), half-closes and prints the echo; with a fourth argument, it marks its socket
/// before connecting (socat sets its options after). Debian's python3.
const ECHO_CLIENT: &str = "
import socket, sys
host, port, text = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket()
if len(sys.argv) > 4:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(sys.argv[4]))
s.settimeout(10)
s.connect((host, port))
s.sendall(text.encode())
s.shutdown(socket.SHUT_WR)
echo = b''
while chunk := s.recv(4096):
    echo += chunk
sys.stdout.write(echo.decode())
";

/// Sends `text` from `pod` to `host:port` and returns what came back (`ECHO_CLIENT`), run
/// under `wrapper` (e.g. `setpriv ... --`) and with the socket `mark`, when given.
pub fn echo_once(
    pod: &Pod,
    (host, port): (&str, u16),
    text: &str,
    wrapper: &[&str],
    mark: Option<u32>,
) -> Result<String> {
    let (port, mark) = (port.to_string(), mark.map(|m| m.to_string()));
    let mut argv = wrapper.to_vec();
    argv.extend(["/usr/bin/python3", "-c", ECHO_CLIENT, host, &port, text]);
    argv.extend(mark.as_deref());
    let out = pod.run(&argv)?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// A client reading from a server until the end or an error, which says which at the end
/// (`EOF n` or `ERROR ECONNRESET n`): a truncated stream must not look like `EOF`.
pub struct Reader {
    started: PathBuf,
    run: std::thread::JoinHandle<Result<std::process::Output>>,
}

const READER: &str = "
import errno, socket, sys
host, port, started = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=120)
total = 0
try:
    while chunk := s.recv(65536):
        if not total:
            open(started, 'a').close()
        total += len(chunk)
    print(f'EOF {total}')
except OSError as e:
    print(f'ERROR {errno.errorcode.get(e.errno, e.errno)} {total}')
";

impl Reader {
    /// Connects from `pod` to `dst` (`host:port`) with Debian's python3.
    pub fn start(bed: &Testbed, pod: &Pod, host: &str, port: u16) -> Result<Self> {
        let started = bed.dir().join(format!("reader-{}-{host}-{port}", pod.name));
        let _ = std::fs::remove_file(&started);
        let (pod, host, flag) = (pod.clone(), host.to_string(), started.display().to_string());
        let run = std::thread::spawn(move || {
            pod.run(&[
                "/usr/bin/python3",
                "-c",
                READER,
                &host,
                &port.to_string(),
                &flag,
            ])
        });
        Ok(Self { started, run })
    }

    /// Waits until the first bytes have arrived.
    pub fn wait_started(&self, what: &str) -> Result<()> {
        wait_until(Duration::from_secs(20), what, || self.started.exists())
    }

    /// Waits for the end: what the reader saw.
    pub fn outcome(self) -> Result<String> {
        let out = self
            .run
            .join()
            .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// HTTP requests from a pod every 50 ms, each on a new connection, until finished: what
/// "no failed request" means across a rotation or an upgrade.
pub struct RequestLoop {
    _proc: Proc,
    stop: PathBuf,
    out: PathBuf,
}

const REQUEST_LOOP: &str = r#"
import os, socket, sys, time
host, stop, out = sys.argv[1:4]
ok, fails = 0, []
while not os.path.exists(stop):
    began = time.time()
    try:
        s = socket.create_connection((host, 80), timeout=5)
        s.sendall(b"GET /hello.txt HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        if data.startswith(b"HTTP/1.1 200"):
            ok += 1
        else:
            fails.append(f"{began:.3f} {data[:60]!r}")
    except Exception as e:
        fails.append(f"{began:.3f} {e}")
    time.sleep(max(0.0, 0.05 - (time.time() - began)))
with open(out + ".tmp", "w") as f:
    f.write(f"{ok}\n" + "\n".join(fails))
os.rename(out + ".tmp", out)
"#;

impl RequestLoop {
    /// Requests `http://<host>/hello.txt` (nginx) from `pod`.
    pub fn start(bed: &Testbed, pod: &Pod, host: &str) -> Result<Self> {
        let (stop, out) = (bed.dir().join("loop.stop"), bed.dir().join("loop.out"));
        let (stop_arg, out_arg) = (stop.display().to_string(), out.display().to_string());
        let proc = pod.spawn(&["python3", "-c", REQUEST_LOOP, host, &stop_arg, &out_arg])?;
        Ok(Self {
            _proc: proc,
            stop,
            out,
        })
    }

    /// Stops the loop; fails unless none failed and at least `at_least` ran `during` it.
    pub fn finish_all_ok(self, during: &str, at_least: usize) -> Result<()> {
        let (ok, failed) = self.finish()?;
        if !failed.is_empty() {
            bail!("requests failed during {during}: {failed:#?}");
        }
        if ok < at_least {
            bail!("the loop ran {ok} requests through {during}, fewer than {at_least}");
        }
        Ok(())
    }

    /// Stops the loop: how many requests succeeded, and each failure with its time.
    pub fn finish(self) -> Result<(usize, Vec<String>)> {
        std::fs::write(&self.stop, "")?;
        wait_until(
            Duration::from_secs(10),
            "the request loop's results",
            || self.out.exists(),
        )?;
        let text = std::fs::read_to_string(&self.out)?;
        let mut lines = text.lines();
        let ok = lines.next().unwrap_or_default().parse()?;
        Ok((ok, lines.map(str::to_string).collect()))
    }
}
