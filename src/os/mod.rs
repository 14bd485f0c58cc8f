//! Operating-system helpers that both the broker and its clients need: who owns a TCP socket
//! (sock_diag, with a `/proc/net/tcp` fallback), who is at the other end of a Unix socket, and
//! which user a uid is.

pub mod peer_uid;
pub mod sock_diag;
pub mod users;
