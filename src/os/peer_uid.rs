//! Which local user owns a socket: for the broker, the uid behind a loopback TCP peer (for
//! per-user connection quotas); for a client, the uid that runs the server it connected to,
//! over TCP (the server's side of this very connection) or a Unix socket (`SO_PEERCRED`).
//!
//! The answer comes from one sock_diag lookup (see [`super::sock_diag`]), which costs the same
//! however many sockets the machine has. Scanning `/proc/net/tcp{,6}` costs time in the number
//! of sockets, so during a flood of connections a scan per accept grows quadratically; it is
//! only the fallback for a kernel without sock_diag.
//!
//! Addresses are from the socket's own point of view, as in [`SockDiag::lookup`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

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

/// The uid that runs the server at the other end of a TCP connection this process made: the
/// owner of the server's side of this very connection (local address `server`, remote
/// `ours`), which the kernel lists as soon as `connect` returns and which no other socket can
/// be taken for. `None` if the kernel knows no such socket (the server is on another machine,
/// or already closed it). Uses sock_diag, or `/proc/net/tcp{,6}` if the kernel refuses it.
pub fn tcp_server_owner(server: SocketAddr, ours: SocketAddr) -> io::Result<Option<u32>> {
    match SockDiag::open().and_then(|diag| server_owner_by_diag(&diag, server, ours)) {
        Ok(uid) => Ok(uid),
        Err(e) => {
            tracing::debug!("sock_diag lookup failed ({e}); reading /proc/net/tcp instead");
            // `/proc` lists a half-open connection under its listener's uid, so no special case.
            proc_net_tcp_owner(server, ours)
        }
    }
}

/// See [`tcp_server_owner`]. While the last step of the handshake is still on its way to the
/// server, its side is only a request whose uid sock_diag reports as 0; the listening socket
/// that will accept it tells the owner instead. A side in TIME_WAIT (also reported as uid 0)
/// is closed, so it counts as no socket.
pub fn server_owner_by_diag(
    diag: &SockDiag,
    server: SocketAddr,
    ours: SocketAddr,
) -> io::Result<Option<u32>> {
    match diag.lookup(server, ours)? {
        Some(socket) if socket.is_time_wait() => Ok(None),
        Some(socket) if socket.is_handshake() => {
            owner_by_diag(diag, server, unspecified_like(server))
        }
        Some(socket) => Ok(Some(socket.uid)),
        None => Ok(None),
    }
}

/// The "no peer" address of `addr`'s family, which is a listening socket's remote address.
fn unspecified_like(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        SocketAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
    }
}

/// The uid of the process at the other end of a connected Unix socket. For the connecting
/// side that is whoever called `listen` on the server's socket, recorded by the kernel then
/// (`SO_PEERCRED`), so the server cannot claim another uid.
pub fn unix_peer_uid(stream: &UnixStream) -> io::Result<u32> {
    // SAFETY: ucred is plain data (three integers), for which all zeros is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is writable for `length` bytes and `length` is a live local; both outlive
    // the call, and the descriptor is open for as long as `stream` is borrowed.
    let status = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut length,
        )
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
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

    /// The uid a test server runs as: another one when running as root (so that the answer
    /// cannot be the 0 that a wrong lookup also gives), else this process's own.
    fn server_uid() -> u32 {
        match my_uid() {
            0 => 54_322,
            me => me,
        }
    }

    /// Runs `work` as [`server_uid`], the way the kernel sees it when it records a socket's
    /// owner: setfsuid changes only the calling thread's filesystem uid, so a thread of its own.
    fn as_server<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            let root = my_uid() == 0;
            if root {
                // SAFETY: setfsuid has no memory-safety preconditions; it affects this thread.
                unsafe { libc::setfsuid(server_uid()) };
            }
            let result = work();
            if root {
                // SAFETY: as above; back to root before the thread ends.
                unsafe { libc::setfsuid(0) };
            }
            result
        })
        .join()
        .unwrap()
    }

    /// The client's question, asked from the client's side of a connection: who runs the
    /// server, seen through the server's socket of this connection (which, once accepted, the
    /// kernel records under the uid of whoever accepted it); and nobody, once the server is
    /// gone.
    #[test]
    fn a_client_finds_the_owner_of_the_server_it_connected_to() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let listener = as_server(move || TcpListener::bind(bind).unwrap());
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (accepted, listener) = as_server(move || (listener.accept().unwrap().0, listener));
            let (server, ours) = (client.peer_addr().unwrap(), client.local_addr().unwrap());
            assert_eq!(tcp_server_owner(server, ours).unwrap(), Some(server_uid()));
            assert_eq!(
                proc_net_tcp_owner(server, ours).unwrap(),
                Some(server_uid())
            );
            drop((accepted, listener, client));
            // The server's side ends in TIME_WAIT, a remnant that no process owns any more.
            let diag = SockDiag::open().unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while server_owner_by_diag(&diag, server, ours).unwrap().is_some() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the closed server is still owned"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }

    /// Connected but not yet accepted: whether the kernel still holds only a request for it
    /// or already a full socket, the answer is the listener's owner.
    #[test]
    fn a_server_that_has_not_accepted_yet_is_still_known() {
        let listener = as_server(|| TcpListener::bind("127.0.0.1:0").unwrap());
        for _ in 0..20 {
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, ours) = (client.peer_addr().unwrap(), client.local_addr().unwrap());
            assert_eq!(tcp_server_owner(server, ours).unwrap(), Some(server_uid()));
        }
    }

    #[test]
    fn the_peer_of_a_unix_socket_is_this_process_for_a_pair() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(unix_peer_uid(&a).unwrap(), my_uid());
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
