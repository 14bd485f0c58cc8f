//! Who runs the broker: checked on every new connection before the client sends it a single
//! byte, so that another local user who binds the broker's port or socket path while no
//! broker is there gets nothing (no `auth_token`, no session token, no mail).
//!
//! By default only a broker run by the client's own user is trusted. `IPC_BROKER_USER` (or
//! the CLI's `--broker-user`) names a deliberate service account instead, by name or uid;
//! `any` turns the check off, which is needed for a broker on another machine.

use std::fmt;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use super::ClientError;
use crate::os::{peer_uid, users};

/// The environment variable that names the broker's user.
pub const BROKER_USER_ENV: &str = "IPC_BROKER_USER";
/// The value of [`BROKER_USER_ENV`] that skips the check.
const ANY: &str = "any";

/// Whom a client trusts to run the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerUser {
    /// The user this client runs as: the default.
    Me,
    /// A deliberate service account.
    Uid(u32),
    /// Anybody: no check (`IPC_BROKER_USER=any`).
    Any,
}

impl BrokerUser {
    /// Reads `IPC_BROKER_USER`; unset or empty means [`BrokerUser::Me`].
    pub fn from_env() -> Result<BrokerUser, ClientError> {
        BrokerUser::parse(&std::env::var(BROKER_USER_ENV).unwrap_or_default())
    }

    /// A user name, a numeric uid, `any`, or nothing (the client's own user).
    pub fn parse(text: &str) -> Result<BrokerUser, ClientError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(BrokerUser::Me);
        }
        if text.eq_ignore_ascii_case(ANY) {
            return Ok(BrokerUser::Any);
        }
        if let Ok(uid) = text.parse::<u32>() {
            return Ok(BrokerUser::Uid(uid));
        }
        users::uid_of(text)
            .map(BrokerUser::Uid)
            .ok_or_else(|| ClientError::BadBrokerUser {
                value: text.to_owned(),
            })
    }

    /// The uid the broker must run as; `None` for [`BrokerUser::Any`].
    fn expected_uid(self) -> Option<u32> {
        match self {
            BrokerUser::Me => Some(users::effective_uid()),
            BrokerUser::Uid(uid) => Some(uid),
            BrokerUser::Any => None,
        }
    }
}

/// A local user, as an error message names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedUser {
    pub uid: u32,
    /// `None` when the user database has no name for the uid.
    pub name: Option<String>,
}

impl NamedUser {
    fn of(uid: u32) -> NamedUser {
        NamedUser {
            uid,
            name: users::user_name(uid),
        }
    }

    /// How to write this user in `IPC_BROKER_USER`: the name, else the uid.
    pub fn setting(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.uid.to_string())
    }
}

impl fmt::Display for NamedUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "user {name:?} (uid {})", self.uid),
            None => write!(f, "uid {} (a user with no name here)", self.uid),
        }
    }
}

/// Whom a refusal says the client expected: itself, or the account it was told to trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    You(u32),
    Chosen(NamedUser),
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::You(uid) => write!(f, "you (uid {uid})"),
            Expected::Chosen(user) => write!(f, "{user}, whom {BROKER_USER_ENV} names"),
        }
    }
}

/// Checks the broker behind a fresh TCP connection; `addr` is the address as the user gave it.
pub(super) fn check_tcp(
    stream: &TcpStream,
    addr: &str,
    expected: BrokerUser,
) -> Result<(), ClientError> {
    if expected == BrokerUser::Any {
        return Ok(());
    }
    let owner = tcp_owner(stream).map_err(|reason| ClientError::BrokerOwnerUnknown {
        addr: addr.to_owned(),
        reason,
    })?;
    judge(owner, addr, expected)
}

/// Checks the broker behind a fresh Unix-socket connection; `addr` names the socket.
pub(super) fn check_unix(
    stream: &UnixStream,
    addr: &str,
    expected: BrokerUser,
) -> Result<(), ClientError> {
    if expected == BrokerUser::Any {
        return Ok(());
    }
    let owner = peer_uid::unix_peer_uid(stream).map_err(|e| ClientError::BrokerOwnerUnknown {
        addr: addr.to_owned(),
        reason: format!("the kernel does not say who is at the other end of the socket: {e}"),
    })?;
    judge(owner, addr, expected)
}

/// The uid behind the broker's side of this connection, or why it cannot be known.
fn tcp_owner(stream: &TcpStream) -> Result<u32, String> {
    let (server, ours) = match (stream.peer_addr(), stream.local_addr()) {
        (Ok(server), Ok(ours)) => (server, ours),
        (Err(e), _) | (_, Err(e)) => return Err(format!("the connection has no address: {e}")),
    };
    match peer_uid::tcp_server_owner(server, ours) {
        Ok(Some(uid)) => Ok(uid),
        Ok(None) if !server.ip().is_loopback() => Err(format!(
            "{server} is not on this machine's loopback, so no local user can be named for it"
        )),
        Ok(None) => Err(format!(
            "the kernel lists no socket for the broker's end of the connection ({server})"
        )),
        Err(e) => Err(format!(
            "neither sock_diag nor /proc/net/tcp says who owns {server}: {e}"
        )),
    }
}

/// Lets the connection through if the broker runs as the expected user.
fn judge(owner: u32, addr: &str, expected: BrokerUser) -> Result<(), ClientError> {
    let Some(expected_uid) = expected.expected_uid() else {
        return Ok(());
    };
    if owner == expected_uid {
        return Ok(());
    }
    Err(ClientError::BrokerWrongUser {
        addr: addr.to_owned(),
        owner: NamedUser::of(owner),
        expected: match expected {
            BrokerUser::Uid(uid) => Expected::Chosen(NamedUser::of(uid)),
            _ => Expected::You(expected_uid),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_user_parses_names_uids_any_and_nothing() {
        assert_eq!(BrokerUser::parse("").unwrap(), BrokerUser::Me);
        assert_eq!(BrokerUser::parse("  ").unwrap(), BrokerUser::Me);
        assert_eq!(BrokerUser::parse("any").unwrap(), BrokerUser::Any);
        assert_eq!(BrokerUser::parse("ANY").unwrap(), BrokerUser::Any);
        assert_eq!(BrokerUser::parse("1234").unwrap(), BrokerUser::Uid(1234));
        assert_eq!(BrokerUser::parse("root").unwrap(), BrokerUser::Uid(0));
        let bad = BrokerUser::parse("no-such-user-here-ever").unwrap_err();
        assert!(matches!(bad, ClientError::BadBrokerUser { .. }), "{bad}");
        assert!(bad.to_string().contains("no-such-user-here-ever"), "{bad}");
    }

    #[test]
    fn the_wrong_user_is_named_with_the_way_out() {
        let me = users::effective_uid();
        let other = me.wrapping_add(4_000_000);
        let refused = judge(other, "127.0.0.1:9876", BrokerUser::Me).unwrap_err();
        let text = refused.to_string();
        assert!(matches!(refused, ClientError::BrokerWrongUser { .. }));
        assert!(
            text.starts_with("refusing to talk to the broker on 127.0.0.1:9876: it is run by uid"),
            "{text}"
        );
        assert!(text.contains(&format!("not by you (uid {me})")), "{text}");
        assert!(text.contains(&format!("IPC_BROKER_USER={other}")), "{text}");
        assert!(judge(me, "x", BrokerUser::Me).is_ok());
        assert!(judge(other, "x", BrokerUser::Uid(other)).is_ok());
        assert!(judge(other, "x", BrokerUser::Any).is_ok());
        let chosen = judge(0, "x", BrokerUser::Uid(other))
            .unwrap_err()
            .to_string();
        assert!(
            chosen.contains(r#"it is run by user "root" (uid 0), not by uid"#),
            "{chosen}"
        );
        assert!(chosen.contains("whom IPC_BROKER_USER names"), "{chosen}");
    }
}
