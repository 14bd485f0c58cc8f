//! The broker as a network service: open the store, listen, accept under a connection cap,
//! run one task per connection, sweep periodically, and shut down cleanly.

pub mod connection;
pub mod lock;
pub mod unix_socket;
mod unread;

use std::fs::DirBuilder;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::unix::UCred;
use tokio::net::{TcpListener, TcpSocket, UnixListener, UnixStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::broker::{Broker, Peer};
use crate::clock::{self, Clock};
use crate::config::Config;
use crate::store::{queries, Store, StoreError};

pub use connection::Connection;
pub use lock::DataDirLock;
pub use unix_socket::{SocketError, SocketFile};

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
    #[error(transparent)]
    Socket(#[from] SocketError),
}

impl StartError {
    /// Whether another broker holds the data directory, the port or the Unix socket: someone
    /// else is serving (or is starting to), so waiting for it is the right response.
    pub fn is_taken(&self) -> bool {
        matches!(
            self,
            StartError::DataDirHeld { .. }
                | StartError::AddrInUse { .. }
                | StartError::Socket(SocketError::InUse(_))
        )
    }
}

/// A broker that is accepting connections. Dropping it does not stop it; call
/// [`RunningServer::shutdown`].
pub struct RunningServer {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The Unix socket, when `--socket` was given.
    pub socket: Option<SocketFile>,
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
    // And the port before the store, so a start that cannot listen leaves no new database.
    let listener = listen(config.addr)?;
    let store = Store::open(&config.database_path())?;
    let addr = listener.local_addr().map_err(|e| StartError::Listen {
        addr: config.addr,
        reason: e.to_string(),
    })?;
    let (unix_listener, socket) = match &config.socket {
        Some(path) => {
            let (listener, file) = SocketFile::bind(path)?;
            (Some(listener), Some(file))
        }
        None => (None, None),
    };
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
        .await;
    let run_id = match run_id {
        Ok(run_id) => run_id,
        Err(e) => {
            // Not starting after all: leave no socket file behind.
            if let Some(socket) = &socket {
                socket.remove_file();
            }
            return Err(e.into());
        }
    };
    let broker = Arc::new(
        Broker::new(
            store,
            config.limits.clone(),
            config.shared_secret.clone(),
            config.large_message_dir(),
            clock,
        )
        .with_socket(socket.as_ref().map(|s| s.path.clone())),
    );
    release_leases_of_the_last_run(broker.store());
    let (stop, stopped) = watch::channel(false);
    let listeners = Listeners {
        tcp: listener,
        unix: unix_listener.zip(socket.as_ref().map(|s| s.owner_uid)),
    };
    let accept_loop = tokio::spawn(accept_loop(listeners, broker.clone(), stopped.clone()));
    let sweeper = tokio::spawn(sweep_loop(broker.clone(), stopped));
    Ok(RunningServer {
        addr,
        socket,
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
        if let Some(socket) = &self.socket {
            socket.remove_file();
        }
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

/// Creates the data directory with mode 0700 if needed and proves it is writable.
pub fn prepare_data_dir(path: &Path) -> Result<(), StartError> {
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

/// What the broker listens on: TCP always, a Unix socket (and the uid it serves) optionally.
struct Listeners {
    tcp: TcpListener,
    unix: Option<(UnixListener, u32)>,
}

/// One accepted connection, before it is served.
enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    /// A socket peer and its credentials (or why they could not be read).
    Unix(UnixStream, std::io::Result<UCred>),
}

impl Listeners {
    /// The uid the Unix socket serves.
    fn socket_owner(&self) -> u32 {
        self.unix.as_ref().map_or(u32::MAX, |(_, uid)| *uid)
    }

    async fn accept(&self) -> std::io::Result<Accepted> {
        let unix = async {
            match &self.unix {
                Some((listener, _)) => {
                    let (stream, _) = listener.accept().await?;
                    let cred = stream.peer_cred();
                    Ok(Accepted::Unix(stream, cred))
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = self.tcp.accept() => accepted.map(|(stream, peer)| {
                let _ = stream.set_nodelay(true);
                Accepted::Tcp(stream, peer)
            }),
            accepted = unix => accepted,
        }
    }
}

/// Accepts on every listener under one connection cap until shutdown, then waits (up to a
/// grace period) for the connections to finish.
async fn accept_loop(listeners: Listeners, broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let max = broker.limits().max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listeners.accept() => accepted,
        };
        let accepted = match accepted {
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
        let slot = slots.clone().try_acquire_owned().ok();
        let serve = Serve {
            broker: &broker,
            stop: &stop,
            slot,
            max,
        };
        match accepted {
            Accepted::Tcp(stream, peer) => serve.spawn(stream, Peer::unknown(peer.to_string())),
            Accepted::Unix(_, Err(e)) => {
                // Without credentials the peer cannot be checked, so it is not served.
                tracing::warn!("socket connection dropped: cannot read its credentials: {e}");
            }
            Accepted::Unix(stream, Ok(cred)) => {
                let peer = unix_socket::describe_peer(&cred);
                let owner = listeners.socket_owner();
                if unix_socket::peer_allowed(&cred, owner) {
                    serve.spawn(stream, Peer::new(peer, Some(cred.uid())));
                } else {
                    tracing::warn!(
                        peer,
                        "socket connection refused: uid {} is not the broker's uid {owner}",
                        cred.uid()
                    );
                    tokio::spawn(connection::refuse_stranger(stream, cred.uid(), owner));
                }
            }
        }
    }
    drop(listeners);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; closing anyway");
    }
}

/// Serves one accepted connection if a slot was free, or tells it the broker is busy.
struct Serve<'a> {
    broker: &'a Arc<Broker>,
    stop: &'a watch::Receiver<bool>,
    slot: Option<OwnedSemaphorePermit>,
    max: usize,
}

impl Serve<'_> {
    fn spawn<S>(self, stream: S, peer: Peer)
    where
        S: connection::Socket + Send + 'static,
    {
        let Some(slot) = self.slot else {
            tracing::warn!(peer = %peer, "connection refused: {} connections open", self.max);
            tokio::spawn(connection::refuse_busy(stream, self.max));
            return;
        };
        let broker = self.broker.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            Connection::new(stream).serve(broker, peer, stop).await;
            drop(slot);
        });
    }
}

/// Queues the release of every lease left by the previous run: its readers are gone, and the
/// mail they held may never have reached them. It is queued before the first connection is
/// accepted, so every request's job runs after it and sees that mail again; it is not waited
/// for, so start-up does not grow with the number of leases (a `ping` needs no job).
fn release_leases_of_the_last_run(store: &Store) {
    let released = store.queue(|conn| Ok::<_, StoreError>(queries::release_leases(conn)?));
    tokio::spawn(async move {
        match released.await {
            Ok(0) => {}
            Ok(released) => tracing::info!(
                released,
                "mail leased by readers of the previous run can be read again"
            ),
            Err(e) => tracing::error!(
                "releasing the previous run's leases failed; that mail comes back when each \
                 lease runs out: {e}"
            ),
        }
    });
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

/// Raises this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the call to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit that only raises the soft limit up to the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
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
