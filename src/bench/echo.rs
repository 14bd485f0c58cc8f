//! The ceiling: a bare tokio echo server that frames requests exactly as the broker does and
//! answers each with its own bytes, doing no other work. Whatever a workload reaches against
//! it is what the machine, the socket and the client allow; the broker's figures are printed
//! as fractions of it.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

use crate::protocol::{FrameScanner, Scan};

/// An echo server on its own runtime, listening on a free loopback port until dropped.
pub struct EchoServer {
    pub addr: SocketAddr,
    _runtime: Runtime,
}

impl EchoServer {
    /// Starts the server with as many worker threads as the broker's runtime has (one per
    /// core), so both sides of the comparison get the same share of the machine.
    pub fn start() -> std::io::Result<EchoServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("bench-echo")
            .build()?;
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        runtime.spawn(accept_loop(listener));
        Ok(EchoServer {
            addr,
            _runtime: runtime,
        })
    }
}

async fn accept_loop(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(echo(stream));
    }
}

/// Reads frames the way a broker connection does and writes each back with a newline, until
/// the client closes.
async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::with_capacity(4096);
    let mut scanner = FrameScanner::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Scan::Complete { frame, consumed } = scanner.scan(&buffer) {
            let mut reply = buffer[frame].to_vec();
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
