//! Which local user owns a TCP socket, found by its address: the uid behind a loopback peer
//! (for per-user connection quotas), or behind a listening socket.
//!
//! The kernel's sock_diag netlink interface answers an exact lookup by the socket's 4-tuple in
//! constant time and works unprivileged. Scanning `/proc/net/tcp{,6}` costs time in the number
//! of sockets on the machine, so during a flood of connections a scan per accept grows
//! quadratically; it is only the fallback for a kernel without sock_diag.
//!
//! The lookup is from the socket's own point of view: for the peer of a connection we
//! accepted, `local` is the peer's address and `remote` is ours. For a listening socket,
//! `remote` is the unspecified address with port 0.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `SOCK_DIAG_BY_FAMILY` from `<linux/sock_diag.h>`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR` from `<linux/netlink.h>`.
const NLMSG_ERROR: u16 = 2;
/// Every TCP state: the lookup is exact, so the state filter only has to let it through.
const ALL_STATES: u32 = u32::MAX;
/// `INET_DIAG_NOCOOKIE`: match by address, not by a cookie from an earlier answer.
const NO_COOKIE: u32 = u32::MAX;
/// `struct nlmsghdr`.
const NLMSG_HEADER: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then the 48-byte sockid.
const REQUEST_BODY: usize = 56;
/// Offset of `idiag_uid` in `struct inet_diag_msg`: 4 bytes of flags, the 48-byte sockid,
/// then expires, rqueue and wqueue.
const UID_OFFSET: usize = 4 + 48 + 12;
/// How long to wait for the kernel's answer; it answers at once, so this only guards a bug.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(200);

/// The uid owning the TCP socket whose local address is `local` and remote address is
/// `remote`; `None` if there is no such socket. Uses sock_diag, or `/proc/net/tcp{,6}` if the
/// kernel refuses it.
pub fn tcp_socket_owner(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<u32>> {
    match SockDiag::open().and_then(|diag| diag.tcp_socket_owner(local, remote)) {
        Ok(uid) => Ok(uid),
        Err(e) => {
            tracing::debug!("sock_diag lookup failed ({e}); reading /proc/net/tcp instead");
            proc_net_tcp_owner(local, remote)
        }
    }
}

/// An open NETLINK_SOCK_DIAG socket, kept for many lookups (the accept loop keeps one).
pub struct SockDiag {
    socket: OwnedFd,
    /// The last request's sequence number, so an answer to an earlier, abandoned request is
    /// never taken for this one's.
    sequence: std::cell::Cell<u32>,
}

impl SockDiag {
    pub fn open() -> io::Result<SockDiag> {
        // SAFETY: plain socket creation with constant arguments; the result is checked.
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
        // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        set_receive_timeout(&socket, ANSWER_TIMEOUT)?;
        Ok(SockDiag {
            socket,
            sequence: std::cell::Cell::new(0),
        })
    }

    /// See [`tcp_socket_owner`]; this one never falls back to `/proc`.
    pub fn tcp_socket_owner(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> io::Result<Option<u32>> {
        let sequence = self.sequence.get().wrapping_add(1);
        self.sequence.set(sequence);
        self.send(&diag_request(local, remote, sequence))?;
        let mut answer = [0u8; 1024];
        // Stale answers are few (one per abandoned request), so a handful of reads suffices.
        for _ in 0..8 {
            let length = self.receive(&mut answer)?;
            let answer = &answer[..length];
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
        // SAFETY: an all-zero sockaddr_nl is valid; the kernel (pid 0) is the destination.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `message` and `kernel` are valid for the lengths passed, for the whole call.
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

    fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buffer` is writable for its whole length for the duration of the call.
        let received = unsafe {
            libc::recv(
                self.socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(received as usize)
    }
}

fn set_receive_timeout(socket: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let value = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `value` is a valid timeval and the length passed is its size.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A netlink message asking for the one TCP socket with this 4-tuple, built byte by byte so no
/// struct layout is assumed. Netlink headers are in host order; ports and addresses in network
/// order, as in `struct inet_diag_sockid`.
fn diag_request(local: SocketAddr, remote: SocketAddr, sequence: u32) -> Vec<u8> {
    let total = NLMSG_HEADER + REQUEST_BODY;
    let family = match local {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&(total as u32).to_ne_bytes());
    message.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    message.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    message.extend_from_slice(&sequence.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    message.push(family as u8);
    message.push(libc::IPPROTO_TCP as u8);
    message.push(0); // no extensions: only the base answer, which has the uid
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
    message
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
    let bytes = answer.get(8..12)?;
    Some(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// The uid in a sock_diag answer; `None` when the kernel says there is no such socket.
fn parse_answer(answer: &[u8]) -> io::Result<Option<u32>> {
    let short = || io::Error::new(io::ErrorKind::InvalidData, "short sock_diag answer");
    let header = answer.get(..NLMSG_HEADER).ok_or_else(short)?;
    let kind = u16::from_ne_bytes([header[4], header[5]]);
    let body = &answer[NLMSG_HEADER..];
    if kind == NLMSG_ERROR {
        let code = body.get(..4).ok_or_else(short)?;
        let errno = -i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
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
    let uid = body.get(UID_OFFSET..UID_OFFSET + 4).ok_or_else(short)?;
    Ok(Some(u32::from_ne_bytes([uid[0], uid[1], uid[2], uid[3]])))
}

/// The slow way: find the socket's line in `/proc/net/tcp` (or `tcp6`) and read its uid.
pub fn proc_net_tcp_owner(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<u32>> {
    let table = match local {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table)?;
    Ok(text
        .lines()
        .skip(1)
        .find_map(|line| owner_in_line(line, local, remote)))
}

/// One `/proc/net/tcp` line: `sl local rem st tx:rx tr:when retrnsmt uid ...`.
fn owner_in_line(line: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (line_local, line_remote) = (fields.get(1)?, fields.get(2)?);
    if parse_proc_address(line_local)? != local || parse_proc_address(line_remote)? != remote {
        return None;
    }
    fields.get(7)?.parse().ok()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:port` (IPv6). The kernel prints each 32-bit word
/// of the network-order address as a native-endian integer, so the words convert back with
/// `to_ne_bytes`.
fn parse_proc_address(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for chunk in address.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes.as_slice()).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes.as_slice()).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn my_uid() -> u32 {
        // SAFETY: getuid has no preconditions and cannot fail.
        unsafe { libc::getuid() }
    }

    /// A real loopback connection: (the client's socket, the accepted socket, the listener).
    fn connection(bind: &str) -> (TcpStream, TcpStream, TcpListener) {
        let listener = TcpListener::bind(bind).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        (client, accepted, listener)
    }

    #[test]
    fn sock_diag_finds_the_owner_of_a_loopback_peer_v4_and_v6() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let (_client, accepted, _listener) = connection(bind);
            let (ours, peer) = (
                accepted.local_addr().unwrap(),
                accepted.peer_addr().unwrap(),
            );
            let diag = SockDiag::open().unwrap();
            assert_eq!(diag.tcp_socket_owner(peer, ours).unwrap(), Some(my_uid()));
            assert_eq!(tcp_socket_owner(peer, ours).unwrap(), Some(my_uid()));
        }
    }

    /// The uid must come from the right bytes of the answer, which a test running as root
    /// (uid 0, all zeros) cannot tell on its own: so, as root, the client's socket is made
    /// under another filesystem uid, which the kernel records as the socket's owner.
    #[test]
    fn sock_diag_reads_the_uid_of_a_socket_made_by_another_user() {
        if my_uid() != 0 {
            println!("SKIPPED: only root can make a socket owned by another uid");
            return;
        }
        const OTHER: u32 = 54_321;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // setfsuid changes only the calling thread's filesystem uid, so a thread of its own.
        let client = std::thread::spawn(move || {
            // SAFETY: setfsuid has no memory-safety preconditions; it affects this thread only.
            unsafe { libc::setfsuid(OTHER) };
            let client = TcpStream::connect(addr).unwrap();
            // SAFETY: as above; back to root before the thread ends.
            unsafe { libc::setfsuid(0) };
            client
        })
        .join()
        .unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let (ours, peer) = (
            accepted.local_addr().unwrap(),
            accepted.peer_addr().unwrap(),
        );
        assert_eq!(peer, client.local_addr().unwrap());
        let diag = SockDiag::open().unwrap();
        assert_eq!(diag.tcp_socket_owner(peer, ours).unwrap(), Some(OTHER));
        assert_eq!(proc_net_tcp_owner(peer, ours).unwrap(), Some(OTHER));
        assert_eq!(diag.tcp_socket_owner(ours, peer).unwrap(), Some(0));
    }

    #[test]
    fn sock_diag_finds_a_listening_socket_and_not_a_closed_one() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let nobody: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let diag = SockDiag::open().unwrap();
        assert_eq!(diag.tcp_socket_owner(addr, nobody).unwrap(), Some(my_uid()));
        drop(listener);
        assert_eq!(diag.tcp_socket_owner(addr, nobody).unwrap(), None);
    }

    #[test]
    fn proc_net_tcp_agrees_for_v4_and_v6() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let (_client, accepted, _listener) = connection(bind);
            let (ours, peer) = (
                accepted.local_addr().unwrap(),
                accepted.peer_addr().unwrap(),
            );
            assert_eq!(proc_net_tcp_owner(peer, ours).unwrap(), Some(my_uid()));
            let elsewhere = SocketAddr::new(peer.ip(), 1);
            assert_eq!(proc_net_tcp_owner(elsewhere, ours).unwrap(), None);
        }
    }

    #[test]
    fn proc_addresses_decode_to_network_order() {
        let v4 = u32::from_ne_bytes([127, 0, 0, 1]);
        assert_eq!(
            parse_proc_address(&format!("{v4:08X}:1F90")),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        let one = u32::from_ne_bytes([0, 0, 0, 1]);
        assert_eq!(
            parse_proc_address(&format!("000000000000000000000000{one:08X}:0050")),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(parse_proc_address("zz:1"), None);
    }
}
