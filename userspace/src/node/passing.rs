//! Passing handed-over connections from one daemon to the next over the take-over socket:
//! one frame per connection (a 4-byte length, then its description in JSON) sent in one
//! `sendmsg` with its two sockets attached (SCM_RIGHTS), and an empty frame to end. The
//! receiver reads each frame's length with `recvmsg`, which yields the sockets that came
//! with it, then the rest as plain bytes.

use std::{
    io::{IoSlice, IoSliceMut},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use anyhow::{Context, Result, bail};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use tokio::{
    io::{AsyncReadExt, Interest},
    net::UnixStream,
};

use crate::context::handoff::{Handed, HandedMeta};

/// Sends one connection, its sockets with it.
pub async fn send(conn: &UnixStream, handed: &Handed) -> Result<()> {
    let meta = serde_json::to_vec(&handed.meta)?;
    let fds = [handed.app.as_raw_fd(), handed.tls.as_raw_fd()];
    send_frame(conn, &meta, &fds).await
}

/// Says that no connection follows.
pub async fn send_end(conn: &UnixStream) -> Result<()> {
    send_frame(conn, &[], &[]).await
}

async fn send_frame(conn: &UnixStream, payload: &[u8], fds: &[RawFd]) -> Result<()> {
    let len = u32::try_from(payload.len()).context("a frame too long")?;
    let frame = [&len.to_be_bytes()[..], payload].concat();
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs = if fds.is_empty() { &[][..] } else { &rights[..] };
    loop {
        conn.writable().await?;
        let sent = conn.try_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(&frame)];
            sendmsg::<()>(conn.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                .map_err(std::io::Error::from)
        });
        match sent {
            Ok(n) if n == frame.len() => return Ok(()),
            Ok(n) => bail!("a frame went out short ({n} of {} bytes)", frame.len()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The longest description a frame may carry.
const MAX_FRAME: u32 = 64 * 1024;

/// The next connection, or None at the end. The sockets of a frame refused here close
/// abortively (the sender made them so).
pub async fn receive(conn: &mut UnixStream) -> Result<Option<Handed>> {
    let (len, fds) = receive_len(conn).await?;
    if len == 0 {
        return Ok(None);
    }
    if len > MAX_FRAME {
        bail!("a frame of {len} bytes");
    }
    let mut meta = vec![0; len as usize];
    conn.read_exact(&mut meta).await?;
    let meta: HandedMeta = serde_json::from_slice(&meta).context("a handed-over connection")?;
    let [app, tls]: [OwnedFd; 2] = fds.try_into().map_err(|fds: Vec<OwnedFd>| {
        anyhow::anyhow!("a handed-over connection came with {} sockets", fds.len())
    })?;
    Ok(Some(Handed { meta, app, tls }))
}

/// A frame's length, with the sockets that came with the frame.
async fn receive_len(conn: &UnixStream) -> Result<(u32, Vec<OwnedFd>)> {
    let (mut len, mut got, mut fds) = ([0u8; 4], 0, Vec::new());
    while got < len.len() {
        conn.readable().await?;
        let read = conn.try_io(Interest::READABLE, || {
            let mut cmsg = nix::cmsg_space!([RawFd; 2]);
            let mut iov = [IoSliceMut::new(&mut len[got..])];
            let flags = MsgFlags::MSG_CMSG_CLOEXEC;
            let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut cmsg), flags)
                .map_err(std::io::Error::from)?;
            let mut received = Vec::new();
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(rights) = c {
                    received.extend(rights);
                }
            }
            Ok((msg.bytes, received))
        });
        match read {
            Ok((n, received)) => {
                // SAFETY: the kernel just installed these descriptors for this process.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
                if n == 0 {
                    bail!("the previous daemon closed the connection");
                }
                got += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok((u32::from_be_bytes(len), fds))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// A connected loopback pair: (ours, the far end).
    fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let far = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener.accept().unwrap().0, far)
    }

    #[tokio::test]
    async fn connections_cross_with_their_sockets_and_the_end_is_said() {
        let (old, mut new) = UnixStream::pair().unwrap();
        let ((app, mut app_far), (tls, mut tls_far)) = (tcp_pair(), tcp_pair());
        let meta = HandedMeta {
            pod: "default/a".into(),
            direction: "outbound".into(),
            src: "10.1.0.2:40000".parse().unwrap(),
            dst: "10.2.0.2:80".parse().unwrap(),
            peer: "spiffe://cluster.local/ns/default/sa/b".into(),
            admitted_port: None,
            serial: None,
        };
        let handed = Handed {
            meta: meta.clone(),
            app: app.into(),
            tls: tls.into(),
        };
        send(&old, &handed).await.unwrap();
        drop(handed); // the sender's copies close; the sockets live on in flight
        send_end(&old).await.unwrap();
        drop(old);

        let got = receive(&mut new).await.unwrap().expect("one connection");
        assert_eq!(got.meta.peer, meta.peer);
        assert_eq!(got.meta.dst, meta.dst);
        // The very sockets: what is written on them reaches their far ends.
        std::net::TcpStream::from(got.app)
            .write_all(b"app")
            .unwrap();
        std::net::TcpStream::from(got.tls)
            .write_all(b"tls")
            .unwrap();
        let mut buf = [0u8; 3];
        app_far.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"app");
        tls_far.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"tls");
        assert!(receive(&mut new).await.unwrap().is_none(), "the end");
    }
}
