//! The load generator's own minimal clients: raw bytes out, one JSON reply back, timed.
//!
//! They add as little as possible on top of the socket, so that the same code drives both
//! the broker and the echo ceiling and the ratio between the two measures the broker alone.
//! Replies are found by the protocol's own frame scanner, so a broker that ends its replies
//! with a newline and one that does not are read the same way.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use claude_ipc::protocol::{FrameScanner, Scan};

/// How long any one reply may take before the run is declared stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the target closed the connection before a whole reply arrived")]
    Closed,
    #[error("the target's reply is not JSON: {0}")]
    NotJson(String),
    #[error("the target refused the request: {0}")]
    Refused(String),
    #[error("the channel-mode MCP server: {0}")]
    Channel(String),
}

/// Opens a TCP connection with the timeouts every bench connection uses.
pub fn connect(addr: SocketAddr) -> Result<TcpStream, WireError> {
    let stream = TcpStream::connect(addr).map_err(|source| WireError::Connect { addr, source })?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    Ok(stream)
}

/// One request the legacy way: connect, write the object, read one reply, close.
pub fn legacy_request(addr: SocketAddr, request: &[u8]) -> Result<Value, WireError> {
    let mut connection = Connection::open(addr)?;
    connection.request(request)
}

/// A connection that reads replies frame by frame; used for persistent clients, and for a
/// legacy request's single reply.
pub struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
    scanner: FrameScanner,
}

impl Connection {
    pub fn open(addr: SocketAddr) -> Result<Connection, WireError> {
        Ok(Connection {
            stream: connect(addr)?,
            buffer: Vec::with_capacity(4096),
            scanner: FrameScanner::new(),
        })
    }

    /// Writes one request and reads its reply.
    pub fn request(&mut self, request: &[u8]) -> Result<Value, WireError> {
        self.write(request)?;
        self.read_reply()
    }

    /// Writes requests without reading (pipelining); read each reply with `read_reply`.
    pub fn write(&mut self, requests: &[u8]) -> Result<(), WireError> {
        Ok(self.stream.write_all(requests)?)
    }

    /// Reads the next reply and parses it.
    pub fn read_reply(&mut self) -> Result<Value, WireError> {
        let frame = self.read_frame()?;
        serde_json::from_slice(&frame)
            .map_err(|e| WireError::NotJson(format!("{e}: {}", String::from_utf8_lossy(&frame))))
    }

    /// Reads the next reply's bytes, without parsing them (the echo ceiling's replies).
    pub fn read_frame(&mut self) -> Result<Vec<u8>, WireError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Scan::Complete { frame, consumed } = self.scanner.scan(&self.buffer) {
                let bytes = self.buffer[frame].to_vec();
                self.buffer.drain(..consumed);
                self.scanner.reset();
                return Ok(bytes);
            }
            let read = self.stream.read(&mut chunk)?;
            if read == 0 {
                return Err(WireError::Closed);
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

/// The reply's `status` must be `ok`; anything else is reported with the target's own words.
pub fn expect_ok(reply: Value) -> Result<Value, WireError> {
    if reply["status"] == "ok" {
        Ok(reply)
    } else {
        Err(WireError::Refused(reply.to_string()))
    }
}
