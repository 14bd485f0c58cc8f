//! Whether a local client has read everything the broker wrote to it, as the kernel can tell.
//! This is the best evidence that a client took its reply while it keeps the connection open.
//!
//! - Loopback TCP: the client's socket is on this machine, so its receive queue can be asked
//!   for (sock_diag netlink, one exact lookup by address). Bytes still there are unread. The
//!   broker's own socket must also have had everything acknowledged, or the reply may still be
//!   on its way into that queue.
//! - Unix socket: what the broker sent stays charged to its socket until the client reads it
//!   (`SIOCOUTQ`).

use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::os::sock_diag::SockDiag;

/// Whether the loopback TCP client at `peer`, connected to the broker's `local`, has read all
/// the broker wrote on the socket `ours`. `None` when the kernel cannot say (no such socket
/// here, not loopback, or sock_diag unavailable).
pub fn tcp_peer_read_all(ours: RawFd, local: SocketAddr, peer: SocketAddr) -> Option<bool> {
    if unacknowledged(ours)? > 0 {
        return Some(false);
    }
    // The client's socket, seen from its side: its source is the peer, its destination us.
    // A sock_diag socket reads its answers in turn, so each question opens its own rather
    // than every connection sharing one behind a lock.
    let diag = SockDiag::open().ok()?;
    let client = diag.lookup(peer, local).ok().flatten()?;
    Some(client.rqueue == 0)
}

/// Whether the Unix socket client has consumed all the broker sent on `ours`.
pub fn unix_peer_read_all(ours: RawFd) -> Option<bool> {
    unacknowledged(ours).map(|pending| pending == 0)
}

/// `SIOCOUTQ`: on TCP, bytes the peer's kernel has not acknowledged; on a Unix socket, bytes
/// the peer has not read.
fn unacknowledged(fd: RawFd) -> Option<u32> {
    let mut pending: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int through the pointer, which outlives the call.
    let done = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut pending) };
    (done == 0).then(|| pending.max(0) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn a_loopback_peer_that_has_not_read_is_seen_and_then_one_that_has() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, peer) = listener.accept().unwrap();
        let local = server.local_addr().unwrap();
        server.write_all(b"a reply\n").unwrap();
        let read_all = || tcp_peer_read_all(server.as_raw_fd(), local, peer);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while read_all() != Some(false) {
            if read_all().is_none() {
                eprintln!("note: sock_diag is not available here; nothing to check");
                return;
            }
            assert!(std::time::Instant::now() < deadline, "never saw it unread");
        }
        let mut reply = [0u8; 8];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(read_all(), Some(true));
    }

    #[test]
    fn a_unix_peer_that_has_not_read_is_seen_and_then_one_that_has() {
        let (mut server, mut client) = std::os::unix::net::UnixStream::pair().unwrap();
        server.write_all(b"a reply\n").unwrap();
        assert_eq!(unix_peer_read_all(server.as_raw_fd()), Some(false));
        let mut reply = [0u8; 8];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(unix_peer_read_all(server.as_raw_fd()), Some(true));
    }
}
