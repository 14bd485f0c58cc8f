//! Whether a local client has read everything the broker wrote to it, as the kernel can tell.
//! This is the best evidence that a client took its reply while it keeps the connection open.
//!
//! - Loopback TCP: the client's socket is on this machine, so its receive queue can be asked
//!   for (sock_diag netlink, one exact lookup by address). Bytes still there are unread. The
//!   broker's own socket must also have had everything acknowledged, or the reply may still be
//!   on its way into that queue.
//! - Unix socket: what the broker sent stays charged to its socket until the client reads it
//!   (`SIOCOUTQ`).

use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `SOCK_DIAG_BY_FAMILY` from `linux/sock_diag.h`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Matches any socket cookie in a lookup.
const ANY_COOKIE: [u32; 2] = [u32::MAX, u32::MAX];

/// `struct inet_diag_sockid`: ports and addresses in network byte order.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// A netlink header and `struct inet_diag_req_v2`.
#[repr(C)]
struct Request {
    header: libc::nlmsghdr,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// The start of `struct inet_diag_msg`, up to the queue sizes.
#[repr(C)]
#[derive(Clone, Copy)]
struct Answer {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
}

/// Whether the loopback TCP client at `peer`, connected to the broker's `local`, has read all
/// the broker wrote on the socket `ours`. `None` when the kernel cannot say (no such socket
/// here, not loopback, or sock_diag unavailable).
pub fn tcp_peer_read_all(ours: RawFd, local: SocketAddr, peer: SocketAddr) -> Option<bool> {
    if unacknowledged(ours)? > 0 {
        return Some(false);
    }
    peer_receive_queue(local, peer)
        .ok()?
        .map(|unread| unread == 0)
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

/// Bytes waiting unread in the receive queue of the client socket `peer` → `local`, or
/// `None` if there is no such socket on this machine.
fn peer_receive_queue(local: SocketAddr, peer: SocketAddr) -> io::Result<Option<u32>> {
    let Some(request) = lookup_request(local, peer) else {
        return Ok(None);
    };
    let netlink = open_netlink()?;
    send_request(&netlink, &request)?;
    let mut reply = [0u8; 512];
    // SAFETY: the buffer is valid for its length; the kernel answers a lookup before
    // `sendto` returns, so a non-blocking read finds the answer or nothing.
    let got = unsafe {
        libc::recv(
            netlink.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_answer(&reply[..got as usize])
}

/// The lookup of the client's socket: its source is the peer's address, its destination ours.
fn lookup_request(local: SocketAddr, peer: SocketAddr) -> Option<Request> {
    let (family, src, dst) = match (peer, local) {
        (SocketAddr::V4(peer), SocketAddr::V4(local)) => (
            libc::AF_INET,
            padded(&peer.ip().octets()),
            padded(&local.ip().octets()),
        ),
        (SocketAddr::V6(peer), SocketAddr::V6(local)) => {
            (libc::AF_INET6, peer.ip().octets(), local.ip().octets())
        }
        _ => return None,
    };
    Some(Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: libc::NLM_F_REQUEST as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        family: family as u8,
        protocol: libc::IPPROTO_TCP as u8,
        ext: 0,
        pad: 0,
        states: u32::MAX,
        id: SockId {
            sport: peer.port().to_be_bytes(),
            dport: local.port().to_be_bytes(),
            src,
            dst,
            interface: 0,
            cookie: ANY_COOKIE,
        },
    })
}

fn padded(v4: &[u8; 4]) -> [u8; 16] {
    let mut address = [0u8; 16];
    address[..4].copy_from_slice(v4);
    address
}

fn open_netlink() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the result is checked before it is owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send_request(netlink: &OwnedFd, request: &Request) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_nl is valid; it addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: both pointers are valid for the sizes given and outlive the call.
    let sent = unsafe {
        libc::sendto(
            netlink.as_raw_fd(),
            (request as *const Request).cast(),
            size_of::<Request>(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The receive queue from a sock_diag answer; `None` if the kernel found no such socket.
fn parse_answer(reply: &[u8]) -> io::Result<Option<u32>> {
    let header_len = size_of::<libc::nlmsghdr>();
    if reply.len() < header_len {
        return Err(io::Error::other("short sock_diag answer"));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    let body = &reply[header_len..];
    if kind == libc::NLMSG_ERROR as u16 {
        return Ok(None);
    }
    if kind != SOCK_DIAG_BY_FAMILY || body.len() < size_of::<Answer>() {
        return Err(io::Error::other("unexpected sock_diag answer"));
    }
    // SAFETY: `body` holds at least one `Answer`, a plain-old-data struct; the read is
    // unaligned because the buffer is a byte array.
    let answer: Answer = unsafe { std::ptr::read_unaligned(body.as_ptr().cast()) };
    Ok(Some(answer.rqueue))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

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
