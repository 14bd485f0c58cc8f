//! One exact lookup of a TCP socket on this machine through the kernel's sock_diag netlink
//! interface: which user owns it and how many bytes wait unread in its receive queue.
//!
//! The kernel answers a lookup by the socket's 4-tuple in constant time and works
//! unprivileged, so it is cheap enough to ask once per accepted connection (who is the peer)
//! and again while a reply is waiting to be read (has the peer read it).
//!
//! The lookup is from the socket's own point of view: for the peer of a connection we
//! accepted, `local` is the peer's address and `remote` is ours. For a listening socket,
//! `remote` is the unspecified address with port 0.
//!
//! The kernel handles the request inside `sendto` and queues its answer before that call
//! returns, so the answer is read without waiting: the lookup never blocks the thread that
//! asks, which is an async executor's.

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SOCK_DIAG_BY_FAMILY` from `<linux/sock_diag.h>`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Every TCP state: the lookup is exact, so the state filter only has to let it through.
const ALL_STATES: u32 = u32::MAX;
/// `INET_DIAG_NOCOOKIE`: match by address, not by a cookie from an earlier answer.
const NO_COOKIE: u32 = u32::MAX;
/// `struct nlmsghdr`: length, type, flags, sequence, port id.
const NLMSG_HEADER: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then the 48-byte sockid.
const REQUEST_BODY: usize = 56;
/// Offsets in `struct inet_diag_msg`: 4 bytes of family, state, timer and retransmits, the
/// 48-byte sockid, then `idiag_expires`, `idiag_rqueue`, `idiag_wqueue`, `idiag_uid`.
const STATE_OFFSET: usize = 1;
const RQUEUE_OFFSET: usize = 4 + 48 + 4;
const UID_OFFSET: usize = 4 + 48 + 12;
/// Room for one answer: the 72-byte `inet_diag_msg` after its header, and no extensions
/// (none are asked for).
const ANSWER_ROOM: usize = 1024;
/// How many answers to skip looking for the one to this request. Only an answer to an
/// earlier request that failed half-way can be left over, so a handful is plenty.
const STALE_ANSWERS: usize = 8;

/// What the kernel says about one TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocketInfo {
    /// The uid that created the socket (its filesystem uid at the time).
    pub uid: u32,
    /// For a connected socket, bytes received but not yet read by its owner.
    pub rqueue: u32,
    /// The TCP state, as numbered in the kernel's `include/net/tcp_states.h`.
    pub state: u8,
}

/// `TCP_SYN_RECV` and `TCP_NEW_SYN_RECV`: a connection whose handshake the kernel has not
/// finished on this side. It is only a request hanging off its listener, and sock_diag reports
/// its uid as 0 whoever owns the listener.
const HANDSHAKE_STATES: [u8; 2] = [3, 12];

/// `TCP_TIME_WAIT`: what is left of a closed connection; no process owns it, and sock_diag
/// reports its uid as 0.
const TIME_WAIT: u8 = 6;

impl TcpSocketInfo {
    /// Whether this is the remnant of a closed connection, whose `uid` means nothing.
    pub fn is_time_wait(&self) -> bool {
        self.state == TIME_WAIT
    }

    /// Whether this is a half-open connection, whose `uid` means nothing (see
    /// [`HANDSHAKE_STATES`]).
    pub fn is_handshake(&self) -> bool {
        HANDSHAKE_STATES.contains(&self.state)
    }
}

/// An open NETLINK_SOCK_DIAG socket, good for any number of lookups (the accept loop keeps
/// one open for the broker's life). Not shared between threads: answers are read in turn.
pub struct SockDiag {
    socket: OwnedFd,
    /// The last request's sequence number, so an answer left over from an earlier request is
    /// never taken for this one's.
    sequence: Cell<u32>,
}

impl SockDiag {
    /// Opens the netlink socket; fails on a kernel without sock_diag (or out of descriptors).
    pub fn open() -> io::Result<SockDiag> {
        // SAFETY: socket(2) with constant arguments touches no memory of ours; the result is
        // checked before it is used.
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
        // SAFETY: `fd` was just returned by socket(2), is open, and nothing else owns it.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SockDiag {
            socket,
            sequence: Cell::new(0),
        })
    }

    /// The TCP socket whose local address is `local` and remote address is `remote`; `None`
    /// if there is no such socket on this machine (or the two addresses are of different
    /// families, which no socket has).
    pub fn lookup(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> io::Result<Option<TcpSocketInfo>> {
        let sequence = self.sequence.get().wrapping_add(1);
        self.sequence.set(sequence);
        let Some(request) = lookup_request(local, remote, sequence) else {
            return Ok(None);
        };
        self.send(&request)?;
        let mut buffer = [0u8; ANSWER_ROOM];
        for _ in 0..STALE_ANSWERS {
            let length = self.receive(&mut buffer)?;
            let answer = &buffer[..length];
            if answer_sequence(answer) == Some(sequence) {
                return parse_answer(answer);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no sock_diag answer to this request",
        ))
    }

    fn send(&self, message: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain data, for which all zeros is a valid value; with port
        // id 0 it addresses the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `message` is readable for `message.len()` bytes and `kernel` for the size
        // passed; both outlive the call, and the kernel only reads them.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                std::ptr::addr_of!(kernel).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One queued answer into `buffer`, without waiting (see the module notes); its length.
    fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buffer` is writable for its whole length, which is the length passed, and
        // is borrowed mutably for the whole call.
        let received = unsafe {
            libc::recv(
                self.socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        // A datagram longer than the buffer is cut to it, so this is at most `buffer.len()`.
        Ok(received as usize)
    }
}

/// A netlink message asking for the one TCP socket with this 4-tuple, built byte by byte so no
/// struct layout is assumed; `None` if the addresses are of different families. Netlink
/// headers are in host order; ports and addresses in network order, as in
/// `struct inet_diag_sockid`.
fn lookup_request(local: SocketAddr, remote: SocketAddr, sequence: u32) -> Option<Vec<u8>> {
    let family = match (local, remote) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => libc::AF_INET,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => libc::AF_INET6,
        _ => return None,
    };
    let total = NLMSG_HEADER + REQUEST_BODY;
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&(total as u32).to_ne_bytes());
    message.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    message.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    message.extend_from_slice(&sequence.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    message.push(family as u8);
    message.push(libc::IPPROTO_TCP as u8);
    message.push(0); // no extensions: the base answer has the uid and the queues
    message.push(0);
    message.extend_from_slice(&ALL_STATES.to_ne_bytes());
    message.extend_from_slice(&local.port().to_be_bytes());
    message.extend_from_slice(&remote.port().to_be_bytes());
    message.extend_from_slice(&address_words(local.ip()));
    message.extend_from_slice(&address_words(remote.ip()));
    message.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    message.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    message.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    debug_assert_eq!(message.len(), total);
    Some(message)
}

/// An address as the 16 bytes of `__be32 idiag_src[4]`: IPv4 in the first word.
fn address_words(ip: IpAddr) -> [u8; 16] {
    let mut words = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => words[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => words.copy_from_slice(&v6.octets()),
    }
    words
}

/// The sequence number a netlink answer echoes from its request.
fn answer_sequence(answer: &[u8]) -> Option<u32> {
    u32_at(answer, 8)
}

/// The socket described by a sock_diag answer; `None` when the kernel says there is no such
/// socket.
fn parse_answer(answer: &[u8]) -> io::Result<Option<TcpSocketInfo>> {
    let short = || io::Error::new(io::ErrorKind::InvalidData, "short sock_diag answer");
    let header = answer.get(..NLMSG_HEADER).ok_or_else(short)?;
    let kind = u16::from_ne_bytes([header[4], header[5]]);
    let body = &answer[NLMSG_HEADER..];
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = (u32_at(body, 0).ok_or_else(short)? as i32).wrapping_neg();
        return match errno {
            libc::ENOENT => Ok(None),
            errno => Err(io::Error::from_raw_os_error(errno)),
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected sock_diag answer type {kind}"),
        ));
    }
    Ok(Some(TcpSocketInfo {
        uid: u32_at(body, UID_OFFSET).ok_or_else(short)?,
        rqueue: u32_at(body, RQUEUE_OFFSET).ok_or_else(short)?,
        state: *body.get(STATE_OFFSET).ok_or_else(short)?,
    }))
}

/// The host-order `u32` at `offset` in `bytes`, if it is all there.
fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let word = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_ne_bytes(word.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    fn my_uid() -> u32 {
        // SAFETY: getuid has no preconditions and cannot fail.
        unsafe { libc::getuid() }
    }

    /// One answer carries both what the accept loop needs (the uid) and what the reply check
    /// needs (the receive queue), for the right socket of the pair, over v4 and v6.
    #[test]
    fn one_lookup_tells_the_owner_and_the_unread_bytes_of_the_right_socket() {
        let diag = SockDiag::open().unwrap();
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let listener = TcpListener::bind(bind).unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            let (ours, peer) = (server.local_addr().unwrap(), server.peer_addr().unwrap());
            server.write_all(b"seven b").unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let client_socket = loop {
                let found = diag.lookup(peer, ours).unwrap().unwrap();
                if found.rqueue != 0 || Instant::now() > deadline {
                    break found;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            let expected = TcpSocketInfo {
                uid: my_uid(),
                rqueue: 7,
                state: 1, // TCP_ESTABLISHED
            };
            assert_eq!(client_socket, expected);
            // The broker's own side of the pair has nothing waiting.
            assert_eq!(diag.lookup(ours, peer).unwrap().unwrap().rqueue, 0);
            client.read_exact(&mut [0u8; 7]).unwrap();
            assert_eq!(diag.lookup(peer, ours).unwrap().unwrap().rqueue, 0);
        }
    }

    #[test]
    fn addresses_of_two_families_name_no_socket() {
        let diag = SockDiag::open().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let v6_nobody: SocketAddr = "[::]:0".parse().unwrap();
        let found = diag.lookup(listener.local_addr().unwrap(), v6_nobody);
        assert_eq!(found.unwrap(), None);
    }

    #[test]
    fn a_short_or_foreign_answer_is_an_error_not_a_socket() {
        assert!(parse_answer(&[0u8; 8]).is_err());
        let mut answer = vec![0u8; NLMSG_HEADER + 72];
        answer[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        answer.truncate(NLMSG_HEADER + UID_OFFSET + 3);
        assert!(parse_answer(&answer).is_err());
        let mut other = vec![0u8; NLMSG_HEADER + 72];
        other[4..6].copy_from_slice(&3u16.to_ne_bytes()); // NLMSG_DONE
        assert!(parse_answer(&other).is_err());
    }
}
