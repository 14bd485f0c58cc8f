//! Finding the broker, or becoming it: broker election for MCP servers.
//!
//! When no broker answers at the configured address, the MCP server starts one inside its own
//! process with the same code as `claude-ipc serve`, on the same address and data directory.
//! Two guards make the election safe when several MCP servers try at the same instant: the
//! data-directory lock (`server::lock`) and the port. Whoever loses either one waits briefly for
//! the winner to answer. When the hosting process dies, the kernel releases both, and the next
//! MCP server that needs the broker takes over; all state is in SQLite, so nothing is lost.
//!
//! It hosts none when told not to (see [`crate::stop_marker`]): `IPC_AUTOSTART=0` in its
//! environment, or the marker `claude-ipc stop` leaves in the data directory. A hosted broker
//! watches for that marker and shuts down cleanly when it appears, so `stop` stops it too.
//!
//! With a Unix socket configured (`IPC_SOCKET`), the broker is looked for on the socket instead,
//! and a hosted broker listens on it as well as on the address, exactly as `serve --socket`
//! does. The socket file a killed host leaves behind is replaced by `server::unix_socket` when
//! the next host binds it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::ToolError;
use crate::client::{BrokerCheck, Client, ClientError};
use crate::clock::Clock;
use crate::config::Config;
use crate::server::{self, RunningServer, StartError};

/// How long one connection attempt may take on loopback before the broker counts as absent.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long to wait for another process that holds the lock or the port to start answering.
const ELECTION_WAIT: Duration = Duration::from_secs(5);
/// The pause between two attempts while waiting for another process's broker.
const ELECTION_RETRY: Duration = Duration::from_millis(100);
/// How long each request on a connection may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the broker, hosting it in this process when none answers.
pub struct Election {
    config: Config,
    /// The data directory was configured (`IPC_DATA_DIR`, `--data-dir`), not the default: a
    /// broker serving another one is refused rather than silently used.
    data_dir_configured: bool,
    /// The broker this process hosts, if it won an election. Holding it keeps it running; the
    /// async mutex also makes elections inside one process take turns.
    hosted: Arc<Mutex<Option<RunningServer>>>,
}

impl Election {
    pub fn new(config: Config, data_dir_configured: bool) -> Self {
        Election {
            config,
            data_dir_configured,
            hosted: Arc::new(Mutex::new(None)),
        }
    }

    /// Where the broker is looked for, as a person would write it.
    pub fn target(&self) -> String {
        match &self.config.socket {
            Some(path) => format!("socket {}", path.display()),
            None => self.config.addr.to_string(),
        }
    }

    /// A connection to the broker, electing (and perhaps becoming) it first if none answers.
    pub async fn connect(&self) -> Result<Client, ToolError> {
        let deadline = Instant::now() + ELECTION_WAIT;
        loop {
            let last_failure = match self.try_connect().await {
                Ok(client) => return Ok(client),
                // Someone else's broker holds the address: hosting one here cannot help, and
                // waiting for it would only hide the refusal.
                Err(e) if e.is_untrusted_broker() => return Err(e.into()),
                Err(e) if e.is_broker_refused() => {
                    tracing::error!("refusing the broker at {}: {e}", self.target());
                    return Err(ToolError::BrokerRefused(e));
                }
                Err(e) => e.to_string(),
            };
            if let Some(hold) = self.hold_reason().await {
                return Err(ToolError::NoBroker {
                    target: self.target(),
                    reason: format!("{last_failure}; {hold}"),
                });
            }
            match self.try_host().await {
                Ok(()) => continue,
                Err(e) if e.is_taken() && Instant::now() < deadline => {
                    tracing::debug!("another process is starting the broker ({e}); waiting");
                    tokio::time::sleep(ELECTION_RETRY).await;
                }
                Err(StartError::DataDirProtected(refusal)) => {
                    tracing::error!(
                        "no broker answers at {}, and this process may not host one: {refusal}",
                        self.target()
                    );
                    return Err(ToolError::DataDirProtected {
                        target: self.target(),
                        refusal,
                    });
                }
                Err(e) => {
                    return Err(ToolError::NoBroker {
                        target: self.target(),
                        reason: format!("{last_failure}; starting one here failed: {e}"),
                    })
                }
            }
        }
    }

    /// Why this process must not host a broker now, if it must not. One it already hosts is
    /// not held off (it is stopping, or the connection failed for another reason).
    async fn hold_reason(&self) -> Option<String> {
        if self.is_hosting().await {
            return None;
        }
        crate::stop_marker::hold_reason(&self.config.data_dir)
    }

    /// Stops the hosted broker cleanly once `claude-ipc stop` leaves its marker.
    fn stop_on_marker(&self) {
        let hosted = Arc::clone(&self.hosted);
        let data_dir = self.config.data_dir.clone();
        tokio::spawn(async move {
            crate::stop_marker::appears(&data_dir).await;
            if let Some(running) = hosted.lock().await.take() {
                tracing::info!(
                    pid = std::process::id(),
                    "`claude-ipc stop` asked the broker to stop: stopping the broker this \
                     process hosts; it hosts none again until `claude-ipc serve` is run by hand"
                );
                running.shutdown().await;
            }
        });
    }

    /// Starts the broker in this process, unless it already runs here.
    async fn try_host(&self) -> Result<(), StartError> {
        let mut hosted = self.hosted.lock().await;
        if hosted.is_some() {
            // Ours is running; the connection failed for another reason (say the connection
            // cap). Report it as taken so the caller retries for a while.
            return Err(StartError::AddrInUse {
                addr: self.config.addr,
            });
        }
        let running = server::start(&self.config, false, Clock::system()).await?;
        let socket = running
            .socket
            .as_ref()
            .map_or_else(|| "none".to_owned(), |s| s.path.display().to_string());
        tracing::info!(
            pid = std::process::id(),
            addr = %running.addr,
            %socket,
            data_dir = %self.config.data_dir.display(),
            "no broker answered, so this process (pid {}) now hosts the broker",
            std::process::id()
        );
        if self.config.shared_secret.is_none() {
            tracing::warn!(
                "the hosted broker runs in OPEN MODE: IPC_SHARED_SECRET is not set, so any local process can register any name"
            );
        }
        *hosted = Some(running);
        self.stop_on_marker();
        Ok(())
    }

    /// Whether this process hosts the broker.
    pub async fn is_hosting(&self) -> bool {
        self.hosted.lock().await.is_some()
    }

    /// Stops the hosted broker cleanly, if this process hosts it.
    pub async fn shutdown(&self) {
        if let Some(running) = self.hosted.lock().await.take() {
            tracing::info!(
                pid = std::process::id(),
                "stopping the broker this process hosts; the next client to need one takes over"
            );
            running.shutdown().await;
        }
    }

    /// What this process expects of the broker: secret mode when it has the secret, and its
    /// data directory when one was configured. Without one it would host a broker on the
    /// default directory, but uses whichever broker of its own user answers (the CLI does the
    /// same), so that `serve --data-dir X` and an MCP server given only `IPC_ADDR` work together.
    fn broker_check(&self) -> BrokerCheck {
        BrokerCheck {
            holds_secret: self.config.shared_secret.is_some(),
            data_dir: self
                .data_dir_configured
                .then(|| self.config.data_dir.clone()),
        }
    }

    /// The broker that answers now, if one does; never hosts one (for leaving: a broker
    /// started only to be told goodbye would help nobody).
    pub async fn connect_without_hosting(&self) -> Result<Client, ClientError> {
        self.try_connect().await
    }

    /// One attempt to reach the broker: over the socket if one is configured, else over TCP,
    /// refusing one that is not the broker this process expects (see [`Client::verify_broker`]).
    /// The broker can change between two tool calls (a takeover), so every connection checks.
    async fn try_connect(&self) -> Result<Client, ClientError> {
        let addr = self.config.addr.to_string();
        let socket = self.config.socket.clone();
        let check = self.broker_check();
        tokio::task::spawn_blocking(move || {
            let mut client = match socket {
                Some(path) => Client::connect_unix(&path, CONNECT_TIMEOUT)?,
                None => Client::connect(&addr, CONNECT_TIMEOUT)?,
            };
            client.set_timeout(REQUEST_TIMEOUT)?;
            client.verify_broker(&check)?;
            Ok(client)
        })
        .await
        .unwrap_or_else(|e| Err(ClientError::Protocol(format!("connect task failed: {e}"))))
    }
}
