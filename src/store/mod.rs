//! The SQLite store: the only module that speaks SQL.
//!
//! One dedicated thread owns the database connection. Async handlers hand it work as closures
//! over a channel ([`Store::write`]); the thread runs everything that has queued up inside one
//! transaction and commits once (group commit), then answers each caller. A caller hears "ok"
//! only after its work is committed, and with `synchronous=FULL` committed means on disk.
//!
//! A job sees the database only through its transaction handle [`Tx`], whose methods
//! ([`queries`]) take and return the shared domain values; no code outside this module runs
//! a statement. Each job runs inside its own savepoint, so a job that fails (returns an error,
//! or panics) rolls back only its own changes, never its neighbours'.
//!
//! Before each commit the writer checks that the files at the database's path are still the
//! ones it has open ([`health`]); if not, or once SQLite reports the database corrupt, the
//! store refuses every later job and says why.

mod columns;
// First, so that the statements of every later module can be built from its macros.
#[macro_use]
pub mod conversation;
pub mod dashboard;
pub mod health;
pub mod history;
pub mod inspect;
pub mod legacy;
pub mod queries;
#[cfg(test)]
mod query_plans;
pub mod receipts;
pub mod rescue;
pub mod search;
mod search_rank;
pub mod security;
pub mod startup;
pub mod threads;

use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

pub use health::Fault;
pub use queries::{MessageId, NewMessage, StoredMessage};

use health::{Health, OpenFiles};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// How many queued jobs one transaction may take; bounds the latency a big batch adds.
const MAX_BATCH: usize = 512;
/// Prepared statements the connection keeps. The store has about 90 `prepare_cached` call
/// sites (send, check, ack, threads, history, search, receipts, the sweeper, the writer's own
/// transaction and savepoint statements); a cache smaller than the statements in use evicts
/// in a cycle and re-parses on almost every request. 256 holds them all with room to grow.
const STATEMENT_CACHE_CAPACITY: usize = 256;
/// How often an idle writer checks the database's files. A removal is noticed within this
/// long even with no traffic, while the open connection can still save everything.
const IDLE_FILE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database at {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database write failed and nothing was stored: {0}")]
    CommitFailed(String),
    #[error("a database job panicked: {0}; nothing it did was kept")]
    Panicked(String),
    #[error("the store is shut down")]
    Closed,
    /// The database was removed, replaced or found damaged; nothing is stored any more.
    #[error("{}", .0.message())]
    Unavailable(Fault),
}

/// What SQLite said about the disk under a failed write, when that is why it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskTrouble {
    Full,
    ReadOnly,
}

impl StoreError {
    /// Whether SQLite said the disk is full or the database read-only.
    pub fn disk_trouble(&self) -> Option<DiskTrouble> {
        let StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) = self else {
            return None;
        };
        match failure.code {
            rusqlite::ErrorCode::DiskFull => Some(DiskTrouble::Full),
            rusqlite::ErrorCode::ReadOnly => Some(DiskTrouble::ReadOnly),
            _ => None,
        }
    }

    /// Whether SQLite said the file is corrupt or not a database at all.
    pub fn is_corruption(&self) -> bool {
        let StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) = self else {
            return false;
        };
        matches!(
            failure.code,
            rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
        )
    }
}

/// Why a whole batch failed: its commit, or a fault that refuses all work.
#[derive(Debug, Clone)]
enum BatchError {
    Commit(String),
    Fault(Fault),
}

impl From<BatchError> for StoreError {
    fn from(error: BatchError) -> Self {
        match error {
            BatchError::Commit(reason) => StoreError::CommitFailed(reason),
            BatchError::Fault(fault) => StoreError::Unavailable(fault),
        }
    }
}

/// What the writer thread hands back to a job once the batch's commit is known.
type Completion = Box<dyn FnOnce(Result<(), BatchError>) + Send>;
/// A unit of work for the writer thread. It is given `None` when no transaction could be
/// started, so it does not run and its caller hears why.
type Job = Box<dyn FnOnce(Option<&Connection>) -> Completion + Send>;

/// One job's view of the database: the writer thread's open transaction, inside the job's own
/// savepoint (or the import's own transaction, [`legacy::ImportTarget`]). Its methods are the
/// statements of [`queries`], [`security`] and [`legacy`]; a `Tx` lives only as long as its
/// transaction, so no statement runs outside one.
pub struct Tx<'a> {
    conn: &'a Connection,
}

enum Command {
    Run(Job, Durability),
    Shutdown(oneshot::Sender<()>),
}

/// Whether a job's commit must be flushed to disk before its caller hears back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: the commit is on disk (fsync) before the job's result is returned.
    /// Everything a reply acknowledges is written this way.
    Flushed,
    /// Bookkeeping a crash may lose without harm, such as the hold or lease a `check` puts on
    /// the mail it hands out (every start releases those anyway): committed with
    /// `synchronous=NORMAL`, which in WAL mode keeps the database consistent and skips the
    /// fsync; the next flushed commit makes it durable too. A batch is flushed if any of its
    /// jobs asks for it.
    Unflushed,
}

/// A handle to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    commands: mpsc::Sender<Command>,
    counters: Arc<Counters>,
    guard: Arc<Guard>,
    /// Set when the database was too large to check before opening: the background check
    /// waits for [`Store::start_integrity_check`], so that a damage it finds cannot refuse
    /// the broker's own start-up writes halfway and leave a broker that never served.
    check_pending: Arc<std::sync::atomic::AtomicBool>,
}

/// What the writer needs to notice that the database stopped being the database.
#[derive(Debug)]
struct Guard {
    path: PathBuf,
    files: OpenFiles,
    health: Health,
}

/// How much work the writer thread has done, for tests and benchmarks.
#[derive(Debug, Default)]
struct Counters {
    jobs: AtomicU64,
    commits: AtomicU64,
}

/// A snapshot of [`Store::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Jobs run.
    pub jobs: u64,
    /// Transactions committed; fewer than `jobs` when group commit shared them.
    pub commits: u64,
}

impl Store {
    /// Opens (creating if needed, mode 0600) and migrates the database, then starts the writer
    /// thread. Refuses a database that is corrupt, unreadable or read-only.
    ///
    /// A copy saved by a broker whose database was removed under it is put back first
    /// ([`rescue::adopt`]); a missing or empty file in a directory that held a database is
    /// refused ([`startup`]); a large database is integrity-checked in the background.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        match rescue::adopt(path) {
            Ok(Some(done)) => tracing::warn!("{done}"),
            Ok(None) => {}
            Err(e) => {
                return Err(open_error(
                    path,
                    format!(
                        "cannot put back the rescued copy ipc.db{}: {e}",
                        rescue::RESCUED_SUFFIX
                    ),
                ))
            }
        }
        let (conn, checked) = open_checked(path)?;
        let files = OpenFiles::record(path)
            .map_err(|e| open_error(path, format!("cannot read the open file: {e}")))?;
        let guard = Arc::new(Guard {
            path: path.to_owned(),
            files,
            health: Health::default(),
        });
        if !checked {
            guard.health.set_checking(true);
        }
        let (commands, receiver) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let thread_guard = guard.clone();
        thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, receiver, &thread_counters, &thread_guard))
            .map_err(|e| open_error(path, format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            commands,
            counters,
            guard,
            check_pending: Arc::new((!checked).into()),
        })
    }

    /// Starts the background integrity check of a database too large to check at open; a
    /// no-op when it was checked then (or the check has started already). The server calls it
    /// once its start-up writes are done, so from then on a damage found turns `ping`
    /// unhealthy instead of refusing the start.
    pub fn start_integrity_check(&self) {
        use std::sync::atomic::Ordering;
        if self.check_pending.swap(false, Ordering::SeqCst) {
            check_in_background(self.guard.clone());
        }
    }

    /// Why the store refuses work, if it does.
    pub fn fault(&self) -> Option<Fault> {
        self.guard.health.fault()
    }

    /// Whether the start-up integrity check of a large database is still running.
    pub fn is_checking(&self) -> bool {
        self.guard.health.is_checking()
    }

    /// Turns the store "damaged" if `error` says the database is corrupt, and returns the
    /// fault now in force (if any). Callers pass every storage error they see.
    pub fn notice(&self, error: &StoreError) -> Option<Fault> {
        if error.is_corruption() {
            let advice = startup::damaged_advice(&self.guard.path, &error.to_string());
            self.guard.health.record(Fault::Damaged(advice));
        }
        self.fault()
    }

    /// Checks the database's files now, without waiting for a write: when they changed, an
    /// empty job makes the writer notice (and save its copy), and the fault is returned. Two
    /// or three `stat` calls when nothing changed.
    pub async fn check_files(&self) -> Option<Fault> {
        if let Some(fault) = self.fault() {
            return Some(fault);
        }
        if self.guard.files.verify().is_ok() {
            return None;
        }
        let _ = self
            .write(Durability::Flushed, |_| Ok::<_, StoreError>(()))
            .await;
        self.fault()
    }

    /// Runs `work` on the writer thread inside the next group commit, committed with
    /// `durability`, and returns its result once that commit is done. The job is queued now,
    /// before this returns, rather than when the returned future is first polled: every job
    /// queued after this call runs after it.
    ///
    /// `Ok` commits what `work` did; `Err` (or a panic, [`StoreError::Panicked`]) rolls back
    /// its savepoint, so it leaves nothing behind. If the commit fails, the caller gets
    /// [`StoreError::CommitFailed`] (or the fault that refuses all work).
    pub fn write<T, E, F>(
        &self,
        durability: Durability,
        work: F,
    ) -> impl std::future::Future<Output = Result<T, E>>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T, E> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                Some(conn) => run_in_savepoint(conn, work),
                None => {
                    Err(StoreError::CommitFailed("no transaction could be started".into()).into())
                }
            };
            Box::new(move |commit: Result<(), BatchError>| {
                let result = match commit {
                    Ok(()) => result,
                    Err(error) => Err(StoreError::from(error).into()),
                };
                let _ = reply.send(result);
            })
        });
        let queued = self.commands.send(Command::Run(job, durability));
        async move {
            queued.map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        }
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            jobs: self.counters.jobs.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
        }
    }

    /// Finishes the queued work, closes the database cleanly and stops the writer thread.
    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Shutdown(done)).is_ok() {
            let _ = finished.await;
        }
    }
}

/// Opens (creating and migrating if needed) a second read-write connection to the database,
/// for a tool that writes beside a running broker, like `import-legacy`
/// ([`legacy::ImportTarget`]). WAL lets it share the file; each of its transactions briefly
/// holds the write lock, and the broker's writer waits for it (up to its busy timeout), so
/// such a tool must keep its transactions short.
fn open_side_connection(path: &Path) -> Result<Connection, StoreError> {
    open_checked(path).map(|(conn, _)| conn)
}

fn open_error(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Open {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// [`open_connection`] plus the integrity check when the file is small enough to check before
/// serving; says whether it was checked.
fn open_checked(path: &Path) -> Result<(Connection, bool), StoreError> {
    let checked = startup::check_before_serving(path);
    let conn = open_connection(path, checked)?;
    Ok((conn, checked))
}

/// Runs `PRAGMA quick_check` on its own read-only connection and turns the store "damaged"
/// if it fails. The writer serves meanwhile; `ping` says "checking".
fn check_in_background(guard: Arc<Guard>) {
    let size = std::fs::metadata(&guard.path).map_or(0, |m| m.len());
    tracing::info!(
        bytes = size,
        "checking the database's integrity in the background"
    );
    let health = guard.clone();
    let spawned = thread::Builder::new()
        .name("store-check".into())
        .spawn(move || {
            let finding = inspect::open_read_only(&guard.path)
                .map_err(|e| e.to_string())
                .and_then(|conn| startup::quick_check(&conn));
            match finding {
                Ok(()) => tracing::info!("the database passed its integrity check"),
                Err(finding) => {
                    let advice = startup::damaged_advice(&guard.path, &finding);
                    guard.health.record(Fault::Damaged(advice));
                }
            }
            guard.health.set_checking(false);
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the background integrity check: {e}");
        health.health.set_checking(false);
    }
}

fn open_connection(path: &Path, check: bool) -> Result<Connection, StoreError> {
    startup::refuse_lost_database(path).map_err(|reason| open_error(path, reason))?;
    // Create the file ourselves so it is 0600 from the first byte (and tighten an older one);
    // SQLite gives its -wal and -shm files the same mode.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .and_then(|file| file.set_permissions(std::fs::Permissions::from_mode(0o600)))
        .map_err(|e| open_error(path, format!("{e} (is the data directory writable?)")))?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn =
        Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e.to_string()))?;
    if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) {
        return Err(open_error(
            path,
            "the file is read-only; give the broker's user write access",
        ));
    }
    configure(&conn).map_err(|e| explain_open_failure(path, e))?;
    if check {
        startup::quick_check(&conn)
            .map_err(|finding| open_error(path, startup::damaged_advice(path, &finding)))?;
    }
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    let report = embedded::migrations::runner()
        .run(&mut conn)
        .map_err(|e| explain_open_failure(path, format!("migrating the schema failed: {e}")))?;
    // One line per migration applied, none on the usual start (refinery's own lines are
    // silenced in main.rs: it also logs "no migrations to apply" on every start).
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, db = %path.display(), "applied a schema migration");
    }
    // Mail another writer queued for the search index (V16) is indexed before serving.
    conn.execute_batch("BEGIN IMMEDIATE")
        .and_then(|()| search::index_pending(&conn))
        .and_then(|()| conn.execute_batch("COMMIT"))
        .map_err(|e| explain_open_failure(path, format!("indexing queued mail failed: {e}")))?;
    startup::mark_created(path);
    Ok(conn)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, WAL is required"
        )));
    }
    // The query planner stability guarantee: a statement keeps the plan it was prepared with.
    // Without it SQLite re-prepares a cached statement whenever a newly bound value might
    // allow a better plan (for `name_holder`, on every send: a tenth of the writer's time),
    // and the plans `query_plans` pins are the ones that run.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA busy_timeout = 5000;
         PRAGMA foreign_keys = ON;",
    )?;
    // Reading the schema fails at once on a file that is not a database.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
}

fn explain_open_failure(path: &Path, error: impl std::fmt::Display) -> StoreError {
    let text = error.to_string();
    let hint = if text.contains("not a database") || text.contains("malformed") {
        "; the file is corrupt or not a SQLite database: restore a backup or move it aside"
    } else {
        ""
    };
    open_error(path, format!("{text}{hint}"))
}

fn run_in_savepoint<T, E, F>(conn: &Connection, work: F) -> Result<T, E>
where
    E: From<StoreError>,
    F: FnOnce(&Tx<'_>) -> Result<T, E>,
{
    run_statement(conn, "SAVEPOINT job")?;
    let result = match catch_unwind(AssertUnwindSafe(|| work(&Tx { conn }))) {
        Ok(result) => result,
        Err(panic) => Err(StoreError::Panicked(panic_text(&panic)).into()),
    };
    if result.is_err() {
        run_statement(conn, "ROLLBACK TO job")?;
    }
    run_statement(conn, "RELEASE job")?;
    result
}

/// Runs a statement without parameters through the statement cache: the savepoint and
/// transaction statements run for every job, so they are parsed once, not every time.
fn run_statement(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".to_owned()
    }
}

fn writer_loop(
    conn: Connection,
    commands: mpsc::Receiver<Command>,
    counters: &Counters,
    guard: &Guard,
) {
    let mut shutdown = None;
    // What `synchronous` is set to now; `configure` opened the connection with FULL.
    let mut synchronous = Durability::Flushed;
    while shutdown.is_none() {
        let first = match commands.recv_timeout(IDLE_FILE_CHECK) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                guard.check_while_idle(&conn);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = Vec::new();
        let mut durability = Durability::Unflushed;
        let mut next = Some(first);
        while let Some(command) = next {
            match command {
                Command::Run(job, wanted) => {
                    batch.push(job);
                    if wanted == Durability::Flushed {
                        durability = Durability::Flushed;
                    }
                }
                Command::Shutdown(done) => {
                    shutdown = Some(done);
                    break;
                }
            }
            next = if batch.len() < MAX_BATCH {
                commands.try_recv().ok()
            } else {
                None
            };
        }
        if !batch.is_empty() {
            counters
                .jobs
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        if !batch.is_empty() && durability != synchronous {
            match set_synchronous(&conn, durability) {
                Ok(()) => synchronous = durability,
                Err(e) => tracing::error!("cannot change `synchronous` for the next commit: {e}"),
            }
        }
        if durability == Durability::Flushed && synchronous != Durability::Flushed {
            // Never acknowledge a write that would not be flushed.
            let reason = "the commit could not be made durable (synchronous=FULL failed)";
            refuse(batch, BatchError::Commit(reason.into()));
            continue;
        }
        run_batch(&conn, guard, batch);
    }
    if let Err((_, e)) = conn.close() {
        tracing::error!("closing the database failed: {e}");
    }
    if let Some(done) = shutdown {
        let _ = done.send(());
    }
}

/// Sets `synchronous` for the next commit: FULL for a flushed batch, NORMAL for an unflushed
/// one. It is a setting of the connection, changed between transactions.
fn set_synchronous(conn: &Connection, durability: Durability) -> rusqlite::Result<()> {
    conn.execute_batch(match durability {
        Durability::Flushed => "PRAGMA synchronous = FULL",
        Durability::Unflushed => "PRAGMA synchronous = NORMAL",
    })
}

fn run_batch(conn: &Connection, guard: &Guard, batch: Vec<Job>) {
    if batch.is_empty() {
        return;
    }
    if let Some(fault) = guard.health.fault() {
        refuse(batch, BatchError::Fault(fault));
        return;
    }
    if let Err(e) = run_statement(conn, "BEGIN IMMEDIATE") {
        let reason = e.to_string();
        tracing::error!("cannot start a transaction: {reason}");
        refuse(batch, guard.failure(&e));
        return;
    }
    let completions: Vec<Completion> = batch.into_iter().map(|job| job(Some(conn))).collect();
    // The batch's new mail joins the search index in this transaction, once for all its jobs.
    if let Err(e) = search::index_pending(conn).map_err(StoreError::from) {
        tracing::error!(
            "indexing the batch's mail failed, {} job(s) refused: {e}",
            completions.len()
        );
        let _ = conn.execute_batch("ROLLBACK");
        let failure = guard.failure(&e);
        finish(completions, Err(failure));
        return;
    }
    // Checked last, right before the commit: a file removed while the jobs ran is noticed
    // before any of them is acknowledged.
    if let Err(what) = guard.files.verify() {
        let _ = conn.execute_batch("ROLLBACK");
        let fault = guard.database_gone(conn, &what);
        finish(completions, Err(BatchError::Fault(fault)));
        return;
    }
    let commit = run_statement(conn, "COMMIT").map_err(|e| {
        tracing::error!("commit failed, {} job(s) refused: {e}", completions.len());
        let _ = conn.execute_batch("ROLLBACK");
        guard.failure(&e)
    });
    finish(completions, commit);
}

/// Answers every job of a batch that cannot run.
fn refuse(batch: Vec<Job>, error: BatchError) {
    for job in batch {
        job(None)(Err(error.clone()));
    }
}

fn finish(completions: Vec<Completion>, result: Result<(), BatchError>) {
    for complete in completions {
        complete(result.clone());
    }
}

impl Guard {
    /// Between batches: notices removed or replaced files without waiting for a write.
    fn check_while_idle(&self, conn: &Connection) {
        if self.health.fault().is_some() {
            return;
        }
        if let Err(what) = self.files.verify() {
            self.database_gone(conn, &what);
        }
    }

    /// A batch-wide failure; a corrupt database also turns the store "damaged".
    fn failure(&self, error: &StoreError) -> BatchError {
        if error.is_corruption() {
            let advice = startup::damaged_advice(&self.path, &error.to_string());
            self.health.record(Fault::Damaged(advice.clone()));
            return BatchError::Fault(self.health.fault().unwrap_or(Fault::Damaged(advice)));
        }
        BatchError::Commit(error.to_string())
    }

    /// The files at the path are not the open ones: save what the connection still sees, then
    /// refuse everything from now on.
    fn database_gone(&self, conn: &Connection, what: &str) -> Fault {
        let message = match rescue::save(conn, &self.path) {
            Ok(copy) => format!(
                "{what} while the broker was running, so it stopped storing anything: every \
                 request is refused and nothing more is acknowledged. Everything acknowledged \
                 before is saved in {}. Restart the broker (`claude-ipc serve`): it puts that \
                 copy back at {} and serves again",
                copy.display(),
                self.path.display()
            ),
            Err(e) => format!(
                "{what} while the broker was running, so it stopped storing anything: every \
                 request is refused and nothing more is acknowledged. Saving a copy of the open \
                 database failed ({e}): stop the broker, restore {} from a backup and start it \
                 again",
                self.path.display()
            ),
        };
        self.health.record(Fault::Gone(message));
        self.health.fault().expect("a fault was just recorded")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLUSHED: Durability = Durability::Flushed;

    fn count(tx: &Tx<'_>) -> Result<i64, StoreError> {
        Ok(tx.conn.query_row(
            "SELECT coalesce(sum(failures), 0) FROM auth_failures",
            [],
            |r| r.get(0),
        )?)
    }

    fn insert_failure(tx: &Tx<'_>, reason: &str) -> Result<(), StoreError> {
        let failure = queries::AuthFailure {
            at: crate::domain::Timestamp::parse("2026-01-01T00:00:00.000Z").unwrap(),
            name: None,
            peer: "test",
            peer_key: "test",
            reason,
        };
        tx.record_auth_failure(&failure, 100)
    }

    #[tokio::test]
    async fn migrations_run_twice_on_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipc.db");
        let store = Store::open(&path).unwrap();
        store
            .write(FLUSHED, |tx| insert_failure(tx, "first"))
            .await
            .unwrap();
        store.shutdown().await;
        let store = Store::open(&path).unwrap();
        let rows = store.write(FLUSHED, count).await.unwrap();
        assert_eq!(rows, 1, "reopening kept the data and did not re-apply V1");
        store.shutdown().await;
    }

    #[test]
    fn mail_stored_before_v12_belongs_to_its_sender_but_notices_and_imports_to_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("ipc.db")).unwrap();
        embedded::migrations::runner()
            .set_target(refinery::Target::Version(10))
            .run(&mut conn)
            .unwrap();
        let at = "2026-01-01T00:00:00.000Z";
        conn.execute_batch(&format!(
            "INSERT INTO messages (id, sender, addressed_to, recipient, kind, content, received_at)
               VALUES (1, 'alice', 'bob', 'bob', 'direct', 'sent here', '{at}'),
                      (2, 'system', 'bob', 'bob', 'system', 'a notice', '{at}'),
                      (3, 'carol', 'bob', 'bob', 'direct', 'imported', '{at}');
             INSERT INTO legacy_imports (kind, fingerprint, legacy_key, source, message_id, imported_at)
               VALUES ('message', 'f', '7', 'old.db', 3, '{at}');"
        ))
        .unwrap();
        embedded::migrations::runner().run(&mut conn).unwrap();
        let sent_by = |id: i64| -> Option<String> {
            conn.query_row("SELECT sent_by FROM messages WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap()
        };
        assert_eq!(sent_by(1).as_deref(), Some("alice"));
        assert_eq!(
            sent_by(2),
            None,
            "the broker's notice has no sender to tell"
        );
        assert_eq!(sent_by(3), None, "sent through the original, not here");
    }

    #[test]
    fn mail_stored_before_v13_belongs_to_its_registered_recipient_and_starts_its_own_thread() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("ipc.db")).unwrap();
        embedded::migrations::runner()
            .set_target(refinery::Target::Version(12))
            .run(&mut conn)
            .unwrap();
        let at = "2026-01-01T00:00:00.000Z";
        conn.execute_batch(&format!(
            "INSERT INTO instances (name, registered_at, last_seen_at) VALUES ('bob', '{at}', '{at}');
             INSERT INTO messages (id, sender, addressed_to, recipient, kind, content, received_at,
                                   delivered_at)
               VALUES (1, 'alice', 'bob', 'bob', 'direct', 'delivered to bob', '{at}', '{at}'),
                      (2, 'alice', 'carol', 'carol', 'direct', 'waits for carol', '{at}', NULL),
                      (3, 'alice', 'dave', 'dave', 'direct', 'dave renamed away', '{at}', '{at}');"
        ))
        .unwrap();
        embedded::migrations::runner().run(&mut conn).unwrap();
        let row = |id: i64| -> (Option<String>, i64) {
            conn.query_row(
                "SELECT received_by, coalesce(thread_id, id) FROM messages WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        };
        assert_eq!(row(1), (Some("bob".to_owned()), 1));
        assert_eq!(
            row(2),
            (Some("carol".to_owned()), 2),
            "waiting mail is its name's"
        );
        assert_eq!(
            row(3),
            (None, 3),
            "delivered to a name nobody holds now: a later holder must not see it"
        );
    }

    #[test]
    fn nonces_stored_by_name_before_v8_go_to_the_identity_that_holds_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("ipc.db")).unwrap();
        embedded::migrations::runner()
            .set_target(refinery::Target::Version(4))
            .run(&mut conn)
            .unwrap();
        let at = "2026-01-01T00:00:00.000Z";
        conn.execute_batch(&format!(
            "INSERT INTO sessions (id, instance_name, token_sha256, created_at, last_used_at, revoked_at)
               VALUES (1, 'alice', 'h1', '{at}', '{at}', '{at}'),
                      (2, 'alice', 'h2', '{at}', '{at}', NULL),
                      (3, 'bob', 'h3', '{at}', '{at}', NULL);
             INSERT INTO send_nonces (sender, nonce, message_id, seen_at)
               VALUES ('alice', 'n-1', 10, '{at}'), ('ghost', 'n-2', 11, '{at}');"
        ))
        .unwrap();
        embedded::migrations::runner().run(&mut conn).unwrap();
        let identity = |session: i64| -> i64 {
            conn.query_row(
                "SELECT identity_id FROM sessions WHERE id = ?1",
                [session],
                |r| r.get(0),
            )
            .unwrap()
        };
        let alice = identity(2);
        assert_ne!(
            alice,
            identity(1),
            "each earlier session had its own identity"
        );
        let tx = Tx { conn: &conn };
        let since = crate::domain::Timestamp::parse(at).unwrap();
        let kept = tx
            .find_nonce(queries::IdentityId(alice), "n-1", since)
            .unwrap();
        assert_eq!(
            kept,
            Some(MessageId(10)),
            "alice's live session keeps her nonce"
        );
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM send_nonces", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "a nonce of a name nobody holds is dropped");
        let carol = crate::domain::InstanceName::parse("carol").unwrap();
        let hash = crate::domain::TokenHash::of("h4");
        let id = tx.insert_session(&carol, &hash, since).unwrap();
        assert!(
            identity(id.0) > identity(3),
            "new identities come after the old ones"
        );
    }

    #[tokio::test]
    async fn a_failing_job_rolls_back_alone_and_its_batch_neighbours_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ipc.db")).unwrap();
        let jobs = (0..20).map(|i| {
            let store = store.clone();
            async move {
                store
                    .write(FLUSHED, move |tx| {
                        insert_failure(tx, "kept or not")?;
                        if i % 2 == 1 {
                            return Err(StoreError::Closed);
                        }
                        if i == 4 {
                            panic!("a bug in one job");
                        }
                        Ok(())
                    })
                    .await
            }
        });
        let results = futures_join_all(jobs).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 9, "even jobs but the panicking one succeed");
        assert!(matches!(results[4], Err(StoreError::Panicked(_))));
        let rows = store.write(FLUSHED, count).await.unwrap();
        assert_eq!(rows, 9, "failed and panicked jobs left nothing behind");
        store.shutdown().await;
    }

    /// Runs futures concurrently so their jobs can share a batch.
    async fn futures_join_all<F: std::future::Future + Send + 'static>(
        futures: impl Iterator<Item = F>,
    ) -> Vec<F::Output>
    where
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futures.map(tokio::spawn).collect();
        let mut outputs = Vec::new();
        for handle in handles {
            outputs.push(handle.await.unwrap());
        }
        outputs
    }

    #[tokio::test]
    async fn a_queued_job_runs_before_later_jobs_even_if_nobody_awaits_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ipc.db")).unwrap();
        let not_awaited = store.write(FLUSHED, |tx| insert_failure(tx, "queued"));
        drop(not_awaited);
        let rows = store.write(FLUSHED, count).await.unwrap();
        assert_eq!(
            rows, 1,
            "the queued job ran first, though its future was dropped"
        );
        store.shutdown().await;
    }

    #[tokio::test]
    async fn only_batches_of_unflushed_jobs_commit_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ipc.db")).unwrap();
        let synchronous = |tx: &Tx<'_>| -> Result<i64, StoreError> {
            Ok(tx
                .conn
                .query_row("PRAGMA synchronous", [], |row| row.get(0))?)
        };
        const NORMAL: i64 = 1;
        const FULL: i64 = 2;
        const UNFLUSHED: Durability = Durability::Unflushed;
        assert_eq!(store.write(UNFLUSHED, synchronous).await.unwrap(), NORMAL);
        assert_eq!(store.write(FLUSHED, synchronous).await.unwrap(), FULL);
        assert_eq!(store.write(UNFLUSHED, synchronous).await.unwrap(), NORMAL);
        // A batch holding any flushed job is flushed: queued while the writer is busy, the two
        // share the next batch, and both see FULL.
        let (started_tx, started) = std::sync::mpsc::channel();
        let busy = store.write(FLUSHED, move |_| {
            started_tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            Ok::<_, StoreError>(())
        });
        started.recv().unwrap();
        let unflushed = store.write(UNFLUSHED, synchronous);
        let flushed = store.write(FLUSHED, synchronous);
        let (busy, unflushed, flushed) = tokio::join!(busy, unflushed, flushed);
        busy.unwrap();
        assert_eq!((unflushed.unwrap(), flushed.unwrap()), (FULL, FULL));
        store.shutdown().await;
    }

    #[test]
    fn a_corrupt_file_is_refused_with_its_path_and_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipc.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let error = Store::open(&path)
            .err()
            .expect("corrupt file refused")
            .to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("corrupt"), "{error}");
    }

    #[test]
    fn the_database_file_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipc.db");
        drop(Store::open(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
