//! `claude-ipc serve`: run the broker until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::clock::Clock;
use crate::config::{Config, Limits};
use crate::domain::InstanceName;
use crate::os::{self, ShutdownSignals};
use crate::secret::{self, SecretError};
use crate::server;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  claude-ipc serve\n  IPC_SHARED_SECRET=long-random-string claude-ipc serve --data-dir /srv/ipc\n  claude-ipc serve --secret-file ~/.config/claude-ipc/secret    (the secret from a 0600 file)\n  claude-ipc serve --rate-limit 0 --queue-cap 0    (no limits, for trusted scripts)\n  claude-ipc serve --socket ~/.claude-ipc.sock    (also a Unix socket, for your user only)\n  claude-ipc serve --web 127.0.0.1:0    (also the web dashboard; `claude-ipc web` prints its login link)\n\nDurations need a unit: 250ms, 30s, 10m, 24h or 7d (a bare 5 is refused).\nIPC_SHARED_SECRET, when set, is the secret that register requires; IPC_SHARED_SECRET_FILE (or\n--secret-file) names a file (mode 0600, yours) holding it instead. Without either the broker\nruns in open mode and says so loudly. The first start with a secret protects the data\ndirectory: from then on a broker started there without that secret refuses, until one start\nwith --reset-secret makes the secret then given (or open mode) the directory's own.\n\nThe data directory must be one only you can write; an existing one keeps its mode, a new one\nis created 0700.\n\nExit codes: 0 after a clean stop, 1 when it refuses to start (the message says why), 4 when\nanother broker already holds the data directory, the address or the socket."
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
    /// Make the secret now given (IPC_SHARED_SECRET), or open mode without one, the data
    /// directory's own, where it is protected by another; ends every session. For one start.
    #[arg(long)]
    pub reset_secret: bool,
    /// Every window and limit, each a flag of its own (see `config::Limits`).
    #[command(flatten)]
    pub limits: Limits,
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
    /// Also serve the web dashboard on this loopback address (port 0 picks a free one);
    /// `claude-ipc web` prints its login link. Off unless given.
    #[arg(long, env = "IPC_WEB", value_name = "ADDR")]
    pub web: Option<SocketAddr>,
    /// The reserved name the dashboard's person sends as; no client can register it.
    #[arg(long, env = "IPC_WEB_HUMAN", value_name = "NAME", default_value = "human", value_parser = human_name)]
    pub web_human: InstanceName,
}

/// `--web-human`: a valid instance name that is not the broker's own.
fn human_name(text: &str) -> Result<InstanceName, String> {
    let name = InstanceName::parse(text).ok_or_else(|| {
        format!("{text:?} is not an instance name: 1 to 32 letters, digits, - or _")
    })?;
    if name
        .as_str()
        .eq_ignore_ascii_case(crate::domain::SYSTEM_SENDER)
    {
        return Err("`system` is the broker's own name; choose another".to_owned());
    }
    Ok(name)
}

impl ServeArgs {
    /// The limits as given, with the static token's flag applied and the few values that
    /// would stop the broker working raised to their least: one connection, one row of auth
    /// failures, a sweep every 100 ms.
    pub fn limits(&self) -> Limits {
        let given = &self.limits;
        Limits {
            max_connections: given.max_connections.max(1),
            sweep_interval: given.sweep_interval.max(Duration::from_millis(100)),
            auth_failure_rows: given.auth_failure_rows.max(1),
            static_token_accepted: !self.no_static_token,
            ..given.clone()
        }
    }

    /// The broker's configuration; fails only if the shared secret cannot be read.
    pub fn config(&self) -> Result<Config, SecretError> {
        let data_dir = super::data_dir_or_default(self.data_dir.clone());
        let shared_secret = secret::shared_secret_with_file(self.secret_file.as_deref())?;
        Ok(Config {
            addr: self.addr,
            data_dir,
            socket: super::given_socket(&self.socket).map(PathBuf::from),
            shared_secret,
            limits: self.limits(),
            reset_secret: self.reset_secret,
            human: self.web.map(|_| self.web_human.clone()),
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
    if let Some(web) = args.web {
        crate::web::check_address(web)?;
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
    let dashboard = match args.web {
        Some(addr) => match start_web(&running, &config, addr).await {
            Ok(dashboard) => Some(dashboard),
            Err(e) => {
                running.shutdown().await;
                return Err(e.into());
            }
        },
        None => None,
    };
    clear_stop_marker(&config.data_dir);
    tokio::select! {
        () = signals.recv() => {}
        () = crate::stop_marker::appears(&config.data_dir) => {
            tracing::info!("`claude-ipc stop` asked the broker to stop");
        }
    }
    tracing::info!("shutting down: finishing requests in flight");
    if let Some(dashboard) = dashboard {
        dashboard.shutdown().await;
    }
    running.shutdown().await;
    tracing::info!("database closed; bye");
    Ok(())
}

/// Starts the dashboard beside the running broker.
async fn start_web(
    running: &server::RunningServer,
    config: &Config,
    addr: SocketAddr,
) -> Result<crate::web::WebServer, crate::web::WebError> {
    crate::web::start(
        running.broker.clone(),
        crate::web::WebConfig {
            addr,
            broker_addr: running.addr,
            data_dir: &config.data_dir,
            database: &config.database_path(),
            large_message_dir: config.large_message_dir(),
            max_request_bytes: config.limits.max_request_bytes,
        },
    )
    .await
}

/// `serve` run by hand lets clients start brokers again: it removes `claude-ipc stop`'s marker
/// once it serves. (A client never starts `serve` while the marker is there, so this is a start
/// by hand, or a service manager's.)
fn clear_stop_marker(data_dir: &std::path::Path) {
    match crate::stop_marker::clear(data_dir) {
        Ok(true) => tracing::info!(
            "removed the marker `claude-ipc stop` left: clients may start a broker again"
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!(
            "cannot remove the marker `claude-ipc stop` left ({}): {e}; clients still start no broker",
            crate::stop_marker::marker_path(data_dir).display()
        ),
    }
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    /// `serve` with no flags runs with exactly the limits tests and the MCP server's hosted
    /// broker get from `Limits::default()`; a default added in one place only breaks this.
    #[test]
    fn serve_without_flags_runs_with_the_default_limits() {
        let Command::Serve(args) = Cli::try_parse_from(["claude-ipc", "serve"])
            .unwrap()
            .command
        else {
            panic!("`serve` parses as the serve command");
        };
        assert_eq!(args.limits(), Limits::default());
        assert_eq!(
            Limits::default().session_idle_expiry,
            Duration::from_secs(86_400)
        );
        assert_eq!(Limits::default().max_request_bytes, 1024 * 1024);
        assert!(Limits::default().static_token_accepted);
    }

    #[test]
    fn the_human_is_reserved_only_with_the_dashboard_on_and_never_as_system() {
        let parse = |args: &[&str]| {
            let mut all = vec!["claude-ipc", "serve"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).map(|cli| match cli.command {
                Command::Serve(args) => args,
                _ => panic!("`serve` parses as the serve command"),
            })
        };
        let human = |args: ServeArgs| args.config().unwrap().human.map(|h| h.to_string());
        assert_eq!(human(parse(&[]).unwrap()), None);
        assert_eq!(
            human(parse(&["--web", "127.0.0.1:0"]).unwrap()),
            Some("human".to_owned())
        );
        assert_eq!(
            human(parse(&["--web", "127.0.0.1:0", "--web-human", "op"]).unwrap()),
            Some("op".to_owned())
        );
        assert!(parse(&["--web", "127.0.0.1:0", "--web-human", "System"]).is_err());
        assert!(parse(&["--web", "127.0.0.1:0", "--web-human", "no spaces"]).is_err());
    }

    #[test]
    fn serve_flags_reach_the_limits() {
        let parsed = Cli::try_parse_from([
            "claude-ipc",
            "serve",
            "--rate-limit",
            "0",
            "--replay-window",
            "20m",
            "--max-connections",
            "0",
            "--no-static-token",
        ])
        .unwrap();
        let Command::Serve(args) = parsed.command else {
            panic!("`serve` parses as the serve command");
        };
        let limits = args.limits();
        assert_eq!(limits.rate_limit, 0);
        assert_eq!(limits.replay_window, Duration::from_secs(20 * 60));
        assert_eq!(limits.max_connections, 1, "raised to one connection");
        assert!(!limits.static_token_accepted);
    }
}
