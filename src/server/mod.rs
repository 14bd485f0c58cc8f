//! The broker as a network service: open the store, listen, accept under a connection cap,
//! run one task per connection, sweep periodically, and shut down cleanly.

pub mod connection;
pub mod lock;

use std::fs::DirBuilder;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::clock::{self, Clock};
use crate::config::Config;
use crate::store::{queries, Store, StoreError};

pub use connection::Connection;
pub use lock::DataDirLock;

/// How long shutdown waits for requests in flight before closing the database anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Pending connections the kernel holds for us (the original used 5).
const LISTEN_BACKLOG: u32 = 4096;

/// Why the broker could not start. Each says what failed, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("refusing to listen on {0}: it is not a loopback address, so other machines could connect. Pass --allow-remote if that is really what you want")]
    NotLoopback(SocketAddr),
    #[error("cannot use data directory {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "another broker (pid {pid}) already serves {data_dir}; stop it, or use another --data-dir"
    )]
    DataDirHeld { pid: String, data_dir: String },
    #[error("{addr} is already in use; is another broker running? `claude-ipc ping` tells; or choose another --addr")]
    AddrInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
}

impl StartError {
    /// Whether another broker holds the data directory or the port: someone else is serving
    /// (or is starting to), so waiting for it is the right response.
    pub fn is_taken(&self) -> bool {
        matches!(
            self,
            StartError::DataDirHeld { .. } | StartError::AddrInUse { .. }
        )
    }
}

/// A broker that is accepting connections. Dropping it does not stop it; call
/// [`RunningServer::shutdown`].
pub struct RunningServer {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    pub broker: Arc<Broker>,
    stop: watch::Sender<bool>,
    accept_loop: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    run_id: i64,
    /// Held until the server is shut down (or the process dies).
    _lock: DataDirLock,
}

/// Opens everything and starts accepting. `allow_remote` permits a non-loopback address.
pub async fn start(
    config: &Config,
    allow_remote: bool,
    clock: Clock,
) -> Result<RunningServer, StartError> {
    if !config.addr.ip().is_loopback() && !allow_remote {
        return Err(StartError::NotLoopback(config.addr));
    }
    prepare_data_dir(&config.data_dir)?;
    // Before the store: a second broker must not even open the database of a running one.
    let lock = DataDirLock::acquire(&config.data_dir)?;
    let store = Store::open(&config.database_path())?;
    let listener = listen(config.addr)?;
    let addr = listener.local_addr().map_err(|e| StartError::Listen {
        addr: config.addr,
        reason: e.to_string(),
    })?;
    let started = clock::to_text(clock.now());
    let run_id = store
        .write(move |conn| {
            queries::record_start(
                conn,
                std::process::id(),
                crate::VERSION,
                &addr.to_string(),
                &started,
            )
            .map_err(StoreError::from)
        })
        .await?;
    let broker = Arc::new(Broker::new(
        store,
        config.limits.clone(),
        config.shared_secret.clone(),
        config.large_message_dir(),
        clock,
    ));
    let (stop, stopped) = watch::channel(false);
    let accept_loop = tokio::spawn(accept_loop(listener, broker.clone(), stopped.clone()));
    let sweeper = tokio::spawn(sweep_loop(broker.clone(), stopped));
    Ok(RunningServer {
        addr,
        broker,
        stop,
        accept_loop,
        sweeper,
        run_id,
        _lock: lock,
    })
}

impl RunningServer {
    /// Stops accepting, lets requests in flight finish (up to a grace period), records the
    /// stop and closes the database.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.broker.stop_waiting();
        let _ = self.accept_loop.await;
        let _ = self.sweeper.await;
        let stopped = clock::to_text(self.broker.now());
        let run_id = self.run_id;
        let recorded = self
            .broker
            .store()
            .write(move |conn| {
                queries::record_stop(conn, run_id, &stopped).map_err(StoreError::from)
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!("could not record the stop: {e}");
        }
        self.broker.store().shutdown().await;
    }
}

fn prepare_data_dir(path: &Path) -> Result<(), StartError> {
    let fail = |reason: String| StartError::DataDir {
        path: path.display().to_string(),
        reason,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| fail(format!("{e}; create it or choose another with --data-dir")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fail(format!("cannot set mode 0700: {e}")))?;
    // Prove the directory is writable now, rather than at the first large message. The name
    // is this process's own: brokers starting at the same instant on one directory (MCP
    // servers electing one) must not remove each other's probe.
    let probe = path.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| {
            fail(format!(
                "it is not writable ({e}); fix its permissions or choose another with --data-dir"
            ))
        })
}

fn listen(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let fail = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            return StartError::AddrInUse { addr };
        }
        StartError::Listen {
            addr,
            reason: e.to_string(),
        }
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    socket.listen(LISTEN_BACKLOG).map_err(fail)
}

async fn accept_loop(listener: TcpListener, broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let max = broker.limits().max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: wait for connections to close, then retry.
                tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let _ = stream.set_nodelay(true);
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let broker = broker.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    Connection::new(stream)
                        .serve(broker, peer.to_string(), stop)
                        .await;
                    drop(slot);
                });
            }
            Err(_) => {
                tracing::warn!(%peer, "connection refused: {max} connections open");
                tokio::spawn(connection::refuse_busy(stream, max));
            }
        }
    }
    drop(listener);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; closing anyway");
    }
}

async fn sweep_loop(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(broker.limits().sweep_interval);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = ticks.tick() => {}
        }
        match broker.sweep().await {
            Ok(report) => tracing::debug!(?report, "sweep done"),
            Err(e) => tracing::warn!("sweep failed: {e}"),
        }
    }
}

/// SIGINT and SIGTERM, caught from the moment this is created, so a signal that arrives
/// while the broker is still starting is not lost (or fatal).
pub struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves when either signal arrives.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
