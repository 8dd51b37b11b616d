//! Doing things inside a pod's network namespace.
//!
//! A socket belongs to the network namespace of the thread that created it, for life. The
//! daemon makes a pod's sockets by switching the calling thread into the pod's namespace
//! (setns), creating them, and switching back: two setns calls cost about 3 µs here, where
//! handing the work to a thread living in the pod and waking the caller again cost about
//! 26 µs (p50) on every new connection. The sockets are then used from the tokio runtime
//! like any other. A thread that cannot switch back aborts the daemon: it must never make
//! the daemon's own sockets inside a pod.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use nix::sched::{CloneFlags, setns};

/// The daemon's own network namespace, where every thread returns.
static HOME: OnceLock<File> = OnceLock::new();

/// A pod's network namespace, entered by the thread that has work to do there.
pub struct Netns {
    path: PathBuf,
    file: Arc<File>,
}

/// Records the calling thread's namespace as the daemon's own, where every thread
/// returns after `enter`. Called once at start-up, before any thread can have entered a
/// pod; later calls change nothing.
pub fn record_home() -> io::Result<()> {
    if HOME.get().is_none() {
        let _ = HOME.set(File::open("/proc/thread-self/ns/net")?);
    }
    Ok(())
}

impl Netns {
    /// Opens the namespace at `path` and checks that the daemon may enter it.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("open netns {}: {e}", path.display())))?;
        let netns = Self {
            path: path.to_path_buf(),
            file: Arc::new(file),
        };
        netns.enter(|| Ok(()))?;
        Ok(netns)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the calling thread inside the namespace. For short work that does not
    /// block (making sockets): the thread is the pod's until `f` returns.
    pub fn enter<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        enter(&self.file, &self.path, f)
    }

    /// Runs `f` inside the namespace on a thread of the blocking pool: for set-up that
    /// may block (netlink requests, sysctl writes).
    pub async fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> io::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (file, path) = (self.file.clone(), self.path.clone());
        let done = tokio::task::spawn_blocking(move || enter(&file, &path, f)).await;
        done.map_err(|e| io::Error::other(format!("work in netns {}: {e}", self.path.display())))?
    }

    /// The kernel's cookie for this namespace, as `bpf_get_netns_cookie` reports it.
    pub fn cookie(&self) -> io::Result<u64> {
        self.enter(|| {
            let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
            netns_cookie(&probe)
        })
    }
}

fn enter<T>(netns: &File, path: &Path, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let home = HOME
        .get()
        .ok_or_else(|| io::Error::other("the daemon's own netns was not recorded at start-up"))?;
    setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
        io::Error::other(format!(
            "setns into {}: {e} (needs CAP_SYS_ADMIN)",
            path.display()
        ))
    })?;
    // Back home also when `f` panics.
    let _home = Home(home);
    f()
}

/// Returns the thread to the daemon's namespace when dropped.
struct Home(&'static File);

impl Drop for Home {
    fn drop(&mut self) {
        if let Err(e) = setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Left in the pod, this thread would make the daemon's sockets there.
            tracing::error!(error = %e, "cannot return a thread to the daemon's netns");
            std::process::abort();
        }
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// `SO_NETNS_COOKIE` (Linux 5.14+) of the namespace a socket lives in.
pub fn netns_cookie(socket: &impl AsRawFd) -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the buffer and its length describe a valid u64.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Namespaces for tests of code that runs inside them.
#[cfg(test)]
pub mod testing {
    use super::*;

    /// A fresh network namespace (root only), alive while the `Netns` is.
    pub fn new_netns() -> Netns {
        record_home().expect("the test thread's netns");
        let unshared = std::thread::spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
            File::open("/proc/thread-self/ns/net").expect("own netns")
        });
        let file = unshared.join().expect("the unsharing thread");
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Netns::open(&path).expect("open the namespace")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket_cookie() -> io::Result<u64> {
        let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        netns_cookie(&probe)
    }

    #[test]
    fn entering_makes_sockets_in_the_pod_and_the_thread_returns_home_whatever_happens() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: needs root to create a network namespace");
            return;
        }
        let pod = testing::new_netns();
        let home = socket_cookie().unwrap();
        let inside = pod.enter(socket_cookie).unwrap();
        assert_ne!(inside, home);
        assert_eq!(pod.cookie().unwrap(), inside);
        assert_eq!(socket_cookie().unwrap(), home, "back home after a socket");

        let failed: io::Result<()> = pod.enter(|| Err(io::Error::other("refused")));
        assert!(failed.is_err());
        assert_eq!(socket_cookie().unwrap(), home, "back home after an error");

        let panicked = std::panic::catch_unwind(|| pod.enter(|| -> io::Result<()> { panic!() }));
        assert!(panicked.is_err());
        assert_eq!(socket_cookie().unwrap(), home, "back home after a panic");
    }
}
