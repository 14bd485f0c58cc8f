//! Who is on the other end of a connection: its address for the log, and the local user
//! behind it when the kernel can say (SO_PEERCRED on the Unix socket; the socket's owner for a
//! loopback TCP peer). Per-peer limits key on [`Peer::key`], never on the port, which changes
//! with every connection.

use std::fmt;

/// One connection's peer, fixed when it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// How the log names it: `127.0.0.1:50412`, or `uid 1000 pid 4242` on the socket.
    pub label: String,
    /// The peer's local user, when known.
    pub uid: Option<u32>,
}

impl Peer {
    pub fn new(label: impl Into<String>, uid: Option<u32>) -> Self {
        Peer {
            label: label.into(),
            uid,
        }
    }

    /// A peer known only by its address (tests, or a peer whose owner could not be read).
    pub fn unknown(label: impl Into<String>) -> Self {
        Peer::new(label, None)
    }

    /// The key per-peer limits count under: the uid when known, else the address without its
    /// port (so reconnecting does not make a new peer).
    pub fn key(&self) -> String {
        match self.uid {
            Some(uid) => format!("uid:{uid}"),
            None => without_port(&self.label).to_owned(),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// `127.0.0.1:50412` → `127.0.0.1`, `[::1]:50412` → `[::1]`; anything else as it is.
fn without_port(label: &str) -> &str {
    match label.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => label,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_uid_when_known_and_never_the_port() {
        assert_eq!(Peer::new("127.0.0.1:50412", Some(1000)).key(), "uid:1000");
        assert_eq!(Peer::unknown("127.0.0.1:50412").key(), "127.0.0.1");
        assert_eq!(Peer::unknown("[::1]:6000").key(), "[::1]");
        assert_eq!(Peer::unknown("test").key(), "test");
    }
}
