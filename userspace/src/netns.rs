//! Doing things inside a pod's network namespace.
//!
//! A socket belongs to the network namespace of the thread that created it, for life. Each
//! enrolled pod gets one worker thread that has entered the pod's namespace and creates
//! sockets (and does other namespace-bound set-up) on request; the sockets are then used
//! from the tokio runtime like any other. Only socket creation pays the thread hop.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::mpsc,
};

use nix::sched::{CloneFlags, setns};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// A handle on a worker thread living in one network namespace.
pub struct Netns {
    path: PathBuf,
    file: File,
    jobs: mpsc::Sender<Job>,
}

impl Netns {
    /// Opens the namespace at `path` and starts its worker thread.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("open netns {}: {e}", path.display())))?;
        let thread_file = file.try_clone()?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("netns:{}", path.display()))
            .spawn(move || {
                let entered = setns(thread_file.as_fd(), CloneFlags::CLONE_NEWNET);
                let failed = entered.is_err();
                let _ = ready_tx.send(entered);
                if failed {
                    return;
                }
                for job in rx {
                    job();
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("netns worker died"))?
            .map_err(|e| {
                io::Error::other(format!(
                    "setns into {}: {e} (needs CAP_SYS_ADMIN)",
                    path.display()
                ))
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            jobs,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the worker thread, inside the namespace.
    pub async fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> io::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| io::Error::other("netns worker is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("netns worker dropped the job"))?
    }

    /// The kernel's cookie for this namespace, as `bpf_get_netns_cookie` reports it.
    pub async fn cookie(&self) -> io::Result<u64> {
        self.run(|| {
            let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
            netns_cookie(&probe)
        })
        .await
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
