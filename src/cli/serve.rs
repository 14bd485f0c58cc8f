//! `claude-ipc serve`: run the broker until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::clock::Clock;
use crate::config::{parse_duration, Config, Limits};
use crate::os::{self, ShutdownSignals};
use crate::secret::{self, SecretError};
use crate::server;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  claude-ipc serve\n  IPC_SHARED_SECRET=long-random-string claude-ipc serve --data-dir /srv/ipc\n  claude-ipc serve --secret-file ~/.config/claude-ipc/secret    (the secret from a 0600 file)\n  claude-ipc serve --rate-limit 0 --queue-cap 0    (no limits, for trusted scripts)\n  claude-ipc serve --socket ~/.claude-ipc.sock    (also a Unix socket, for your user only)\n\nDurations are written like 30s, 10m, 24h or 7d.\nIPC_SHARED_SECRET, when set, is the secret that register requires; IPC_SHARED_SECRET_FILE (or\n--secret-file) names a file (mode 0600, yours) holding it instead. Without either the broker\nruns in open mode and says so loudly. The first start with a secret protects the data\ndirectory: from then on a broker started there without that secret refuses, until one start\nwith --reset-secret makes the secret then given (or open mode) the directory's own.\n\nThe data directory must be one only you can write; an existing one keeps its mode, a new one\nis created 0700.\n\nExit codes: 0 after a clean stop, 1 when it refuses to start (the message says why), 4 when\nanother broker already holds the data directory, the address or the socket."
)]
pub struct ServeArgs {
    /// Address to listen on (loopback unless --allow-remote).
    #[arg(long, env = "IPC_ADDR", default_value = "127.0.0.1:9876")]
    pub addr: SocketAddr,
    /// Directory for ipc.db and large-messages/ [default: ~/.claude-ipc-data]
    #[arg(long, env = "IPC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Also listen on this Unix socket: mode 0600, served only to this user's processes.
    #[arg(long, env = "IPC_SOCKET", value_parser = super::socket_parser())]
    pub socket: Option<PathBuf>,
    /// Read the shared secret from this file (mode 0600, yours; one line) instead of
    /// IPC_SHARED_SECRET_FILE; if IPC_SHARED_SECRET is set too, the two must agree.
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Allow a non-loopback --addr. Anyone who can reach it can try to register.
    #[arg(long)]
    pub allow_remote: bool,
    /// A session unused this long stops working.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub session_idle_expiry: Duration,
    /// Mail for a name nobody registered is dropped after this long.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub future_mail_retention: Duration,
    /// Delivered mail (and its large-message file) is purged after this long.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub delivered_retention: Duration,
    /// After a rename, the old name forwards to the new one this long.
    #[arg(long, default_value = "2h", value_parser = parse_duration)]
    pub forward_duration: Duration,
    /// Minimum time between two renames of one instance.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub rename_cooldown: Duration,
    /// Pending messages per recipient; 0 means unlimited.
    #[arg(long, default_value_t = 100)]
    pub queue_cap: u32,
    /// Requests per 60 s per instance; 0 turns the limit off.
    #[arg(long, default_value_t = 100)]
    pub rate_limit: u32,
    /// Largest request in bytes; the connection is closed after a larger one.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Content over this many bytes is stored in a file under large-messages/.
    #[arg(long, default_value_t = 10 * 1024)]
    pub large_message_bytes: usize,
    /// Largest `message.data` object in bytes of JSON.
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_data_bytes: usize,
    /// A send nonce repeated within this window is reported as a duplicate, not stored. Must
    /// be longer than twice --max-clock-skew plus 30s.
    #[arg(long, default_value = "11m", value_parser = parse_duration)]
    pub replay_window: Duration,
    /// A send timestamp further than this from the broker's clock is refused.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub max_clock_skew: Duration,
    /// Connections per listener (TCP, the Unix socket each). At the cap a new one evicts the
    /// longest-quiet unauthenticated connection, or is refused. Another user holds at most a
    /// quarter, all other users together three quarters.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// A connection with no request for this long is closed.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// A request must arrive in full within this long of its first byte.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub read_timeout: Duration,
    /// A reply the client does not read within this long closes the connection.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// How often expired sessions, forwards and old mail are swept.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub sweep_interval: Duration,
    /// An instance with no live session, no waiting mail and no forward to it is removed after
    /// this long unseen.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub instance_retention: Duration,
    /// Requests per 60 s per peer (its user, or its address), summed over all its names; 0
    /// turns it off [default: 10 × --rate-limit]
    #[arg(long)]
    pub peer_rate_limit: Option<u32>,
    /// New names registered per 60 s per peer; 0 turns it off [default: 60, off with
    /// --rate-limit 0]
    #[arg(long)]
    pub peer_register_limit: Option<u32>,
    /// New names registered per 60 s by everyone together; 0 turns it off [default: 600, off
    /// with --rate-limit 0]
    #[arg(long)]
    pub register_limit: Option<u32>,
    /// Bytes of large-message files all stored mail may hold; 0 means unlimited.
    #[arg(long, default_value_t = 1024 * 1024 * 1024)]
    pub large_message_total_bytes: u64,
    /// Bytes of large-message files one sender's stored mail may hold; 0 means unlimited.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    pub large_message_sender_bytes: u64,
    /// Authentication failures per 60 s per peer before its requests that need
    /// authentication are refused unchecked for the rest of the minute; 0 turns it off.
    #[arg(long, default_value_t = 60)]
    pub auth_failure_limit: u32,
    /// The most rows the auth_failures table keeps; the oldest are removed first.
    #[arg(long, default_value_t = 10_000)]
    pub auth_failure_rows: u32,
    /// A connection that has not yet registered or used a session is closed after this long
    /// with no request (or --idle-timeout, if shorter).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub unauthenticated_idle_timeout: Duration,
    /// Bytes of partly received requests held in memory, all connections together, beyond a
    /// small buffer each; a request needing more waits. A quarter is kept for connections that
    /// registered or used a session. At least twice --max-request-bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub request_memory_budget: usize,
    /// Make the secret now given (IPC_SHARED_SECRET), or open mode without one, the data
    /// directory's own, where it is protected by another; ends every session. For one start.
    #[arg(long)]
    pub reset_secret: bool,
    /// A name whose session was used this recently, or waits for mail now, is in use:
    /// registering it is refused unless the register asks to take it over (`register
    /// --takeover`). Legacy registers still replace it, as the original did.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub name_live_window: Duration,
    /// Refuse the legacy static `auth_token` (sha256(name:secret)) in secret mode: only
    /// challenge-response registration, as this project's own clients do it, is accepted.
    /// The Python original's scripts cannot register then. IPC_NO_STATIC_TOKEN=1 does the same
    /// (empty, 0, false, no or off leave it accepted).
    #[arg(
        long,
        env = "IPC_NO_STATIC_TOKEN",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub no_static_token: bool,
}

impl ServeArgs {
    /// The broker's configuration; fails only if the shared secret cannot be read.
    pub fn config(&self) -> Result<Config, SecretError> {
        let data_dir = super::data_dir_or_default(self.data_dir.clone());
        let shared_secret = secret::shared_secret_with_file(self.secret_file.as_deref())?;
        Ok(Config {
            addr: self.addr,
            data_dir,
            socket: super::given_socket(&self.socket).map(PathBuf::from),
            shared_secret,
            limits: Limits {
                session_idle_expiry: self.session_idle_expiry,
                future_mail_retention: self.future_mail_retention,
                delivered_retention: self.delivered_retention,
                forward_duration: self.forward_duration,
                rename_cooldown: self.rename_cooldown,
                queue_cap: self.queue_cap,
                rate_limit: self.rate_limit,
                max_request_bytes: self.max_request_bytes,
                large_message_bytes: self.large_message_bytes,
                max_data_bytes: self.max_data_bytes,
                replay_window: self.replay_window,
                max_clock_skew: self.max_clock_skew,
                max_connections: self.max_connections.max(1),
                idle_timeout: self.idle_timeout,
                read_timeout: self.read_timeout,
                write_timeout: self.write_timeout,
                sweep_interval: self.sweep_interval.max(Duration::from_millis(100)),
                instance_retention: self.instance_retention,
                peer_rate_limit: self.peer_rate_limit,
                peer_register_limit: self.peer_register_limit,
                register_limit: self.register_limit,
                large_message_total_bytes: self.large_message_total_bytes,
                large_message_sender_bytes: self.large_message_sender_bytes,
                auth_failure_limit: self.auth_failure_limit,
                auth_failure_rows: self.auth_failure_rows.max(1),
                unauthenticated_idle_timeout: self.unauthenticated_idle_timeout,
                request_memory_budget: self.request_memory_budget,
                name_live_window: self.name_live_window,
                static_token_accepted: !self.no_static_token,
            },
            reset_secret: self.reset_secret,
        })
    }
}

/// `serve`'s exit code when another broker already holds the data directory, the address or
/// the socket: a client that started it waits for that one instead (see `autostart`). Any
/// other refusal exits with 1.
pub const EXIT_TAKEN: u8 = 4;

/// The exit code for `serve`'s error.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<server::StartError>() {
        Some(start) if start.is_taken() => EXIT_TAKEN,
        _ => 1,
    }
}

/// Runs the broker until a signal; returns an error that says why it could not start.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    crate::clock::keep_timers_off_a_faked_monotonic_clock();
    let config = args.config()?;
    if let Some(warning) = config.limits.legacy_read_warning() {
        tracing::warn!("{warning}");
    }
    let mut signals = ShutdownSignals::install()?;
    // Each listener has its own table of --max-connections.
    let listeners = if config.socket.is_some() { 2 } else { 1 };
    raise_open_file_limit(config.limits.max_connections, listeners);
    let running = server::start(&config, args.allow_remote, Clock::system()).await?;
    let socket = running
        .socket
        .as_ref()
        .map_or_else(|| "none".to_owned(), |s| s.path.display().to_string());
    tracing::info!(
        addr = %running.addr,
        %socket,
        data_dir = %config.data_dir.display(),
        database = %config.database_path().display(),
        version = crate::VERSION,
        pid = std::process::id(),
        "claude-ipc broker listening"
    );
    if config.shared_secret.is_some() {
        log_secret_mode(config.limits.static_token_accepted);
    } else {
        tracing::warn!(
            "=========================================================================="
        );
        tracing::warn!(
            "OPEN MODE: no shared secret is set. Any local process can register any name."
        );
        tracing::warn!(
            "Set IPC_SHARED_SECRET_FILE to a 0600 file holding a long random string to require it."
        );
        tracing::warn!(
            "=========================================================================="
        );
        if !config.limits.static_token_accepted {
            tracing::warn!("--no-static-token has no effect in open mode: there is no secret");
        }
    }
    signals.recv().await;
    tracing::info!("shutting down: finishing requests in flight");
    running.shutdown().await;
    tracing::info!("database closed; bye");
    Ok(())
}

/// Says at start how register proves the secret, and what accepting the static token costs.
fn log_secret_mode(static_token_accepted: bool) {
    if static_token_accepted {
        tracing::info!(
            static_token = "accepted",
            "security: shared-secret mode (IPC_SHARED_SECRET or its file is set); register needs a challenge-response proof or the legacy static auth_token"
        );
        tracing::info!(
            "the static auth_token never changes: anyone who once sees one can register as that name until the secret changes; --no-static-token refuses it once no legacy script needs it"
        );
    } else {
        tracing::info!(
            static_token = "refused",
            "security: shared-secret mode (IPC_SHARED_SECRET or its file is set); register needs a challenge-response proof, the static auth_token is refused (--no-static-token)"
        );
    }
}

/// Descriptors the broker needs besides one per connection: the database and its WAL, the
/// listeners, large-message files being written, the runtime's own.
const SPARE_DESCRIPTORS: u64 = 64;

/// Raises the soft open-file limit to the hard limit, so the connection cap, not a default
/// soft limit of 1,024, decides how many clients are served. Logs when it is still too low.
fn raise_open_file_limit(max_connections: usize, listeners: u64) {
    let limit = match os::raise_open_file_limit() {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!("cannot read or raise the open-file limit: {e}");
            return;
        }
    };
    let needed = max_connections as u64 * listeners + SPARE_DESCRIPTORS;
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            "the open-file limit is below what --max-connections {max_connections} needs; \
             connections past it fail at accept. Raise the hard limit (ulimit -Hn) or lower --max-connections"
        );
    }
}
