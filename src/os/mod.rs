//! Operating-system helpers that both the broker and its clients need: who owns a TCP socket
//! (sock_diag, with a `/proc/net/tcp` fallback), who is at the other end of a Unix socket,
//! which user a uid is, whether a data directory is safe to use, and this process's
//! open-file limit and stop signals.

pub mod data_dir;
pub mod peer_uid;
pub mod process;
pub mod sock_diag;
pub mod users;

pub use data_dir::{prepare_data_dir, DataDirError};
pub use process::{raise_open_file_limit, ShutdownSignals};
