//! The broker as a network service: open the store, listen, admit connections (see
//! [`admission`]: nobody can lock the others out), run one task per connection, sweep
//! periodically, and shut down cleanly.

pub mod admission;
pub mod budget;
pub mod connection;
pub mod data_dir_guard;
pub mod lock;
pub mod unix_socket;
mod unread;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::unix::UCred;
use tokio::net::{TcpListener, TcpSocket, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::{Broker, Peer};
use crate::clock::Clock;
use crate::config::Config;
use crate::domain::Timestamp;
use crate::os::{peer_uid, prepare_data_dir, sock_diag, DataDirError};
use crate::store::{Durability, Store, StoreError};

use admission::{Admission, Owner};
use budget::ByteBudget;
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
    #[error(transparent)]
    DataDir(#[from] DataDirError),
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
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The data directory is protected by a shared secret this broker does not have; the text
    /// says how to change that on purpose (see [`data_dir_guard`]).
    #[error("{0}")]
    DataDirProtected(String),
}

impl From<data_dir_guard::GuardError> for StartError {
    fn from(error: data_dir_guard::GuardError) -> Self {
        match error {
            data_dir_guard::GuardError::Store(e) => StartError::Store(e),
            refused => StartError::DataDirProtected(refused.to_string()),
        }
    }
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
    config.validate()?;
    if !config.addr.ip().is_loopback() && !allow_remote {
        return Err(StartError::NotLoopback(config.addr));
    }
    prepare_data_dir(&config.data_dir)?;
    // `ping` reports it, so a client configured with another directory can tell.
    let canonical_data_dir =
        std::fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    // Before the store: a second broker must not even open the database of a running one.
    let lock = DataDirLock::acquire(&config.data_dir)?;
    // And the port before the store, so a start that cannot have it leaves no new database.
    // It is only bound here: connections are refused, not accepted and then dropped, until
    // the data directory's guard has let this broker serve.
    let tcp = bind(config.addr)?;
    let addr = tcp.local_addr().map_err(|e| StartError::Listen {
        addr: config.addr,
        reason: e.to_string(),
    })?;
    let store = Store::open(&config.database_path())?;
    let broker_clock = crate::broker::timekeeping::resume_broker_clock(&store, clock).await?;
    let started = Timestamp::new(broker_clock.now());
    let guarded = data_dir_guard::apply(
        &store,
        &config.data_dir,
        config.shared_secret.clone(),
        config.reset_secret,
        started,
    )
    .await;
    match guarded {
        Ok(change) => data_dir_guard::log_change(change, &config.data_dir, config.reset_secret),
        Err(e) => {
            store.shutdown().await;
            return Err(e.into());
        }
    }
    let (unix_listener, socket) = match &config.socket {
        Some(path) => {
            let (listener, file) = SocketFile::bind(path)?;
            (Some(listener), Some(file))
        }
        None => (None, None),
    };
    let listener = match listen(tcp, addr) {
        Ok(listener) => listener,
        Err(e) => {
            if let Some(socket) = &socket {
                socket.remove_file();
            }
            return Err(e);
        }
    };
    let run_id = store
        .write(Durability::Flushed, move |tx| {
            tx.record_start(
                std::process::id(),
                crate::VERSION,
                &addr.to_string(),
                started,
            )
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
    store.start_integrity_check();
    let broker = Arc::new(
        Broker::new(
            store,
            config.limits.clone(),
            config.shared_secret.clone(),
            config.large_message_dir(),
            broker_clock,
        )
        .with_human(config.human.clone())
        .with_socket(socket.as_ref().map(|s| s.path.clone()))
        .with_data_dir(canonical_data_dir),
    );
    broker.report_clock_offset();
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
        self.broker.persist_clock().await;
        let stopped = Timestamp::new(self.broker.now());
        let run_id = self.run_id;
        let recorded = self
            .broker
            .store()
            .write(Durability::Flushed, move |tx| {
                tx.record_stop(run_id, stopped)
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!("could not record the stop: {e}");
        }
        self.broker.store().shutdown().await;
    }
}

/// Why binding or listening on `addr` failed, as a start error.
fn listen_error(addr: SocketAddr, e: std::io::Error) -> StartError {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        return StartError::AddrInUse { addr };
    }
    StartError::Listen {
        addr,
        reason: e.to_string(),
    }
}

/// Binds `addr` without listening yet: the port is ours (a listening broker there makes this
/// fail), but nobody can connect before [`listen`].
fn bind(addr: SocketAddr) -> Result<TcpSocket, StartError> {
    let fail = |e| listen_error(addr, e);
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    Ok(socket)
}

/// Starts accepting connections on the socket [`bind`] made.
fn listen(socket: TcpSocket, addr: SocketAddr) -> Result<TcpListener, StartError> {
    socket
        .listen(LISTEN_BACKLOG)
        .map_err(|e| listen_error(addr, e))
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

/// Accepts on every listener until shutdown, each listener under its own connection table
/// (see [`admission`]), then waits (up to a grace period) for the connections to finish.
async fn accept_loop(listeners: Listeners, broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let limits = broker.limits();
    let rules = admission::Rules::for_cap(limits.max_connections);
    let gate = Gate {
        tcp: Admission::new(rules),
        unix: Admission::new(rules),
        budget: ByteBudget::new(limits.request_memory_budget, limits.max_request_bytes),
        owners: TcpOwners::new(),
        broker: broker.clone(),
        stop: stop.clone(),
    };
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listeners.accept() => accepted,
        };
        match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                gate.admit(accepted, listeners.socket_owner());
            }
            Err(e) => {
                // Usually out of file descriptors: wait for connections to close, then retry.
                tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    drop(listeners);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    let drained = gate.tcp.drained_by(deadline).await && gate.unix.drained_by(deadline).await;
    if !drained {
        tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; closing anyway");
    }
}

/// Decides, for each accepted connection, whether and how it is served. Nothing here waits
/// for a client: refusals and evictions are written by tasks of their own.
struct Gate {
    tcp: Arc<Admission>,
    unix: Arc<Admission>,
    budget: ByteBudget,
    owners: TcpOwners,
    broker: Arc<Broker>,
    stop: watch::Receiver<bool>,
}

impl Gate {
    fn admit(&self, accepted: Accepted, socket_owner: u32) {
        match accepted {
            Accepted::Tcp(stream, peer) => {
                let uid = self.owners.of(&stream, peer);
                let owner = match uid {
                    Some(uid) if uid == unix_socket::effective_uid() => Owner::Broker,
                    Some(uid) => Owner::Uid(uid),
                    None => Owner::Address(peer.ip()),
                };
                self.serve(&self.tcp, owner, stream, Peer::new(peer.to_string(), uid));
            }
            Accepted::Unix(_, Err(e)) => {
                // Without credentials the peer cannot be checked, so it is not served.
                tracing::warn!("socket connection dropped: cannot read its credentials: {e}");
            }
            Accepted::Unix(stream, Ok(cred)) => {
                let peer = unix_socket::describe_peer(&cred);
                if unix_socket::peer_allowed(&cred, socket_owner) {
                    let peer = Peer::new(peer, Some(cred.uid()));
                    // Only the broker's own user gets this far on the socket.
                    self.serve(&self.unix, Owner::Broker, stream, peer);
                } else {
                    tracing::warn!(
                        peer,
                        "socket connection refused: uid {} is not the broker's uid {socket_owner}",
                        cred.uid()
                    );
                    tokio::spawn(connection::refuse_stranger(
                        stream,
                        cred.uid(),
                        socket_owner,
                    ));
                }
            }
        }
    }

    /// Serves the connection in a slot of `table`, or tells it why not.
    fn serve<S>(&self, table: &Arc<Admission>, owner: Owner, stream: S, peer: Peer)
    where
        S: connection::Socket + Send + 'static,
    {
        let ticket = match table.admit(owner) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                tracing::warn!(peer = %peer, ?refusal, "connection refused");
                tokio::spawn(connection::refuse_admission(stream, refusal));
                return;
            }
        };
        let connection = Connection::admitted(stream, ticket, &self.budget);
        let broker = self.broker.clone();
        let stop = self.stop.clone();
        tokio::spawn(connection.serve(broker, peer, stop));
    }
}

/// Finds which local user owns a loopback TCP peer, through one sock_diag socket kept open.
struct TcpOwners {
    diag: Option<sock_diag::SockDiag>,
}

impl TcpOwners {
    fn new() -> Self {
        let diag = sock_diag::SockDiag::open()
            .inspect_err(|e| {
                tracing::warn!(
                    "sock_diag is unavailable ({e}); the owners of TCP peers are read from \
                     /proc/net/tcp, which is slower"
                )
            })
            .ok();
        TcpOwners { diag }
    }

    /// The uid behind `peer`, when it is on this machine and the kernel says. The peer's
    /// socket is the one whose local address is `peer` and remote address is ours.
    fn of(&self, stream: &tokio::net::TcpStream, peer: SocketAddr) -> Option<u32> {
        if !peer.ip().is_loopback() {
            return None;
        }
        let ours = stream.local_addr().ok()?;
        let found = match &self.diag {
            Some(diag) => peer_uid::owner_by_diag(diag, peer, ours)
                .or_else(|_| peer_uid::proc_net_tcp_owner(peer, ours)),
            None => peer_uid::proc_net_tcp_owner(peer, ours),
        };
        found
            .inspect_err(|e| tracing::debug!(%peer, "cannot tell who owns this peer: {e}"))
            .ok()
            .flatten()
    }
}

/// Queues the release of every lease left by the previous run: its readers are gone, and the
/// mail they held may never have reached them. It is queued before the first connection is
/// accepted, so every request's job runs after it and sees that mail again; it is not waited
/// for, so start-up does not grow with the number of leases (a `ping` needs no job).
fn release_leases_of_the_last_run(store: &Store) {
    let released = store.write(Durability::Flushed, |tx| tx.release_leases());
    let store = store.clone();
    tokio::spawn(async move {
        match released.await {
            Ok(0) => {}
            Ok(released) => tracing::info!(
                released,
                "mail leased by readers of the previous run can be read again"
            ),
            Err(e) => {
                store.notice(&e);
                tracing::error!(
                    "releasing the previous run's leases failed; that mail comes back when each \
                     lease runs out: {e}"
                )
            }
        }
    });
}

/// Sweeps every `sweep_interval`. An interval of zero means no background sweeps at all: the
/// test harness sets it so that a test's own sweeps never race one the broker started.
async fn sweep_loop(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    if broker.limits().sweep_interval.is_zero() {
        return;
    }
    let mut ticks = tokio::time::interval(broker.limits().sweep_interval);
    // The timer runs on the monotonic clock, which a time-faking library moves with the wall
    // clock: after a jump forward, catching up tick by tick would sweep thousands of times.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = ticks.tick() => {}
        }
        if broker.store().fault().is_some() {
            continue; // Nothing can be removed from a database that is gone or damaged.
        }
        match broker.sweep().await {
            Ok(report) => tracing::debug!(?report, "sweep done"),
            Err(e) => tracing::warn!("sweep failed: {e}"),
        }
        broker.report_clock_offset();
        broker.persist_clock().await;
    }
}
