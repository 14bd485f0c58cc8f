//! The ceilings: bare tokio echo servers that frame requests exactly as the broker does and
//! answer each with its own bytes, doing no other work.
//!
//! - The **plain echo** answers at once. Whatever a workload reaches against it is what the
//!   machine, the socket and the client allow.
//! - The **durable echo** answers each request only after its bytes are written into a
//!   preallocated file and `fdatasync`ed. One thread syncs; every request that arrives while a
//!   sync is in flight waits for the next one, which they all share (group sync). It is the
//!   physical limit of a reply that promises "on disk" on this disk, with no database at all.
//!
//! The broker's figures are printed as fractions of both.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

use claude_ipc::protocol::{FrameScanner, Scan};

/// The durable echo's file: written once with zeros and synced before the run, so each sync
/// flushes data into blocks that already exist, never a file's growth. Requests are written
/// one after another and wrap around at the end.
const DURABLE_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A request the syncing thread must make durable, and who waits for it.
type Pending = (Vec<u8>, oneshot::Sender<()>);

/// An echo server on its own runtime, listening on a free loopback port until dropped.
pub struct EchoServer {
    pub addr: SocketAddr,
    /// The durable echo's file, removed when the server is dropped.
    file: Option<PathBuf>,
    _runtime: Runtime,
}

impl EchoServer {
    /// The plain echo.
    pub fn start() -> std::io::Result<EchoServer> {
        EchoServer::serve(None, None)
    }

    /// The durable echo, with its file in `dir` (put it on the disk the brokers use).
    pub fn start_durable(dir: &Path) -> std::io::Result<EchoServer> {
        let path = dir.join(format!(
            "claude-ipc-bench-durable-echo-{}-{}",
            std::process::id(),
            crate::target::unique_micros()
        ));
        let file = preallocate(&path)?;
        let (queue, pending) = mpsc::channel::<Pending>();
        std::thread::Builder::new()
            .name("bench-echo-sync".into())
            .spawn(move || sync_loop(&file, &pending))?;
        EchoServer::serve(Some(queue), Some(path))
    }

    /// Starts the server with as many worker threads as the broker's runtime has (one per
    /// core), so both sides of the comparison get the same share of the machine.
    fn serve(
        durable: Option<mpsc::Sender<Pending>>,
        file: Option<PathBuf>,
    ) -> std::io::Result<EchoServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("bench-echo")
            .build()?;
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        runtime.spawn(accept_loop(listener, durable));
        Ok(EchoServer {
            addr,
            file,
            _runtime: runtime,
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            let _ = std::fs::remove_file(file);
        }
    }
}

async fn accept_loop(listener: TcpListener, durable: Option<mpsc::Sender<Pending>>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(echo(stream, durable.clone()));
    }
}

/// Reads frames the way a broker connection does and writes each back with a newline, until
/// the client closes; with `durable`, each only once the syncing thread has it on disk.
async fn echo(mut stream: TcpStream, durable: Option<mpsc::Sender<Pending>>) {
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::with_capacity(4096);
    let mut scanner = FrameScanner::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Scan::Complete { frame, consumed } = scanner.scan(&buffer) {
            let mut reply = buffer[frame].to_vec();
            if let Some(queue) = &durable {
                let (synced, on_disk) = oneshot::channel();
                if queue.send((reply.clone(), synced)).is_err() || on_disk.await.is_err() {
                    return;
                }
            }
            reply.push(b'\n');
            if stream.write_all(&reply).await.is_err() {
                return;
            }
            buffer.drain(..consumed);
            scanner.reset();
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}

/// Creates the durable echo's file at its full size, written and synced.
fn preallocate(path: &Path) -> std::io::Result<File> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..DURABLE_FILE_BYTES / zeros.len() as u64 {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    Ok(file)
}

/// The syncing thread: takes every request waiting, writes them in one go after the last
/// write, syncs once, then answers them all.
fn sync_loop(file: &File, pending: &mpsc::Receiver<Pending>) {
    let mut offset = 0u64;
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter());
        let bytes: Vec<u8> = batch.iter().flat_map(|(b, _)| b.iter().copied()).collect();
        let length = (bytes.len() as u64).min(DURABLE_FILE_BYTES);
        if offset + length > DURABLE_FILE_BYTES {
            offset = 0;
        }
        let written = file.write_all_at(&bytes[..length as usize], offset);
        // `sync_data` is fdatasync(2): the data, and no metadata the read back does not need.
        if written.and_then(|()| file.sync_data()).is_err() {
            return;
        }
        offset += length;
        for (_, synced) in batch {
            let _ = synced.send(());
        }
    }
}
