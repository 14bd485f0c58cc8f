//! Which local user owns a TCP socket, found by its address: the uid behind a loopback peer
//! (for per-user connection quotas), or behind a listening socket.
//!
//! The answer comes from one sock_diag lookup (see [`super::sock_diag`]), which costs the same
//! however many sockets the machine has. Scanning `/proc/net/tcp{,6}` costs time in the number
//! of sockets, so during a flood of connections a scan per accept grows quadratically; it is
//! only the fallback for a kernel without sock_diag.
//!
//! Addresses are from the socket's own point of view, as in [`SockDiag::lookup`].

use std::io;
use std::net::{IpAddr, SocketAddr};

use super::sock_diag::SockDiag;

/// The uid owning the TCP socket whose local address is `local` and remote address is
/// `remote`; `None` if there is no such socket. Uses sock_diag, or `/proc/net/tcp{,6}` if the
/// kernel refuses it.
pub fn tcp_socket_owner(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<u32>> {
    match SockDiag::open().and_then(|diag| owner_by_diag(&diag, local, remote)) {
        Ok(uid) => Ok(uid),
        Err(e) => {
            tracing::debug!("sock_diag lookup failed ({e}); reading /proc/net/tcp instead");
            proc_net_tcp_owner(local, remote)
        }
    }
}

/// See [`tcp_socket_owner`]; this one asks through an open `diag` and never falls back to
/// `/proc`.
pub fn owner_by_diag(
    diag: &SockDiag,
    local: SocketAddr,
    remote: SocketAddr,
) -> io::Result<Option<u32>> {
    Ok(diag.lookup(local, remote)?.map(|socket| socket.uid))
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
            assert_eq!(owner_by_diag(&diag, peer, ours).unwrap(), Some(my_uid()));
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
        assert_eq!(owner_by_diag(&diag, peer, ours).unwrap(), Some(OTHER));
        assert_eq!(proc_net_tcp_owner(peer, ours).unwrap(), Some(OTHER));
        assert_eq!(owner_by_diag(&diag, ours, peer).unwrap(), Some(0));
    }

    #[test]
    fn sock_diag_finds_a_listening_socket_and_not_a_closed_one() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let nobody: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let diag = SockDiag::open().unwrap();
        assert_eq!(owner_by_diag(&diag, addr, nobody).unwrap(), Some(my_uid()));
        drop(listener);
        assert_eq!(owner_by_diag(&diag, addr, nobody).unwrap(), None);
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
