//! claude-ipc: a local post office for AI assistants.
//!
//! A request travels through these modules, in this order:
//!
//! - [`protocol`]: bytes → frame → [`protocol::Request`] (a hand parser, since its error texts
//!   are the legacy contract); [`protocol::schema`] holds the request and reply type of every
//!   action, shared by the broker, the client and the load generator; [`protocol::Reply`] →
//!   bytes. No I/O.
//! - [`server`]: the accept loop and one task per connection: limits, timeouts, shutdown.
//! - [`broker`]: the rules: sessions, send/check/rename/broadcast, forwards, limits. Each
//!   request is one job on the store (`Broker::job`); a rule returns its action's reply type,
//!   or a refusal that still commits what it counted.
//! - [`store`]: the only code that speaks SQL, through a transaction handle ([`store::Tx`])
//!   whose methods take and return [`domain`] types; one thread owns the write connection and
//!   commits queued work together (group commit).
//!
//! Around them: [`domain`] holds the values every layer shares (names, message ids, kinds,
//! times), [`config`] holds every window and limit, [`clock`] gives the time (injectable
//! for tests), [`client`] is the typed client that the CLI, the MCP server and the tests use,
//! [`mcp`] is the MCP server's tools over that client (and its broker election, and the channel
//! mode that pushes mail into a live Claude Code session), and [`cli`]
//! holds one file per subcommand. [`os`] holds the operating-system helpers the broker and the
//! clients share (who owns a socket, which user a uid is, whether a data directory is safe,
//! the open-file limit and the stop signals). [`session_file`] is the session the CLI, the
//! hook and the MCP server keep on disk; [`background_serve`] starts a broker in the
//! background for them. [`legacy_import`] brings over the Python original's database.
//! [`web`] is the dashboard (`serve --web`): pages over a read-only store connection, a live
//! stream, and the human's compose box.
//! [`relative_time`] says how long ago a time was, the one wording the CLI and the MCP
//! server share.
//! [`secret`] finds the shared secret (`IPC_SHARED_SECRET` or `IPC_SHARED_SECRET_FILE`) for
//! the broker and every client; [`private_file`] reads and writes the files only their user
//! may see (the session file, the secret file) without following a planted link.
//!
//! The load generator is not part of this crate: it is the workspace's `bench/` crate
//! (`cargo run --release -p claude-ipc-bench`).

pub mod background_serve;
pub mod broker;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod domain;
pub mod legacy_import;
pub mod mcp;
pub mod os;
pub mod private_file;
pub mod protocol;
pub mod relative_time;
pub mod secret;
pub mod server;
pub mod session_file;
pub mod stop_marker;
pub mod store;
pub mod web;

/// The version reported by `ping` and logged at start.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
