//! One client connection: read a frame, hand the request to the broker, write the reply,
//! and only then confirm delivery of any mail it carried. Requests on one connection are
//! answered in order.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant};

use crate::broker::{Broker, Peer};
use crate::config::Limits;
use crate::protocol::{ErrorCode, FrameScanner, FrameTooLarge, Reply, Request, Scan};

/// A connection's read buffer starts this big.
const INITIAL_BUFFER: usize = 4096;
/// A buffer grown past this by a large request shrinks back once it is nearly empty.
const SHRINK_ABOVE: usize = 64 * 1024;

/// What reading the next request produced.
enum Incoming {
    Frame(Vec<u8>),
    /// The client closed the connection (or it broke) between requests.
    Closed,
    /// The connection must end with this error reply.
    Refused(Reply),
}

/// A socket and its read buffer.
pub struct Connection<S> {
    stream: S,
    buffer: Vec<u8>,
    /// Bytes at the front of `buffer` already handed out as frames; dropped before the next read.
    taken: usize,
    scanner: FrameScanner,
    /// When the request being read started to arrive, for the read timeout.
    frame_started: Option<Instant>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Self {
        Connection {
            stream,
            buffer: Vec::with_capacity(INITIAL_BUFFER),
            taken: 0,
            scanner: FrameScanner::new(),
            frame_started: None,
        }
    }

    /// Serves requests until the client leaves, a limit is hit, or shutdown is signalled
    /// between requests.
    pub async fn serve(
        mut self,
        broker: Arc<Broker>,
        peer: Peer,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let limits = broker.limits().clone();
        loop {
            let incoming = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                incoming = self.read_frame(&limits) => incoming,
            };
            let frame = match incoming {
                Incoming::Frame(frame) => frame,
                Incoming::Closed => return,
                Incoming::Refused(reply) => {
                    if self.write_reply(&reply, limits.write_timeout).await.is_ok() {
                        self.linger().await;
                    }
                    return;
                }
            };
            let outcome = match Request::parse(&frame) {
                // Boxed, so that only a connection in the middle of a request holds the rules'
                // sizeable future; an idle one stays small.
                Ok(request) => Box::pin(broker.handle(request, &peer)).await,
                Err(error) => error.into_reply().into(),
            };
            if self
                .write_reply(&outcome.reply, limits.write_timeout)
                .await
                .is_err()
            {
                // The receipt is dropped unconfirmed: the mail stays queued.
                tracing::debug!(peer = %peer, "reply not written; mail stays queued");
                return;
            }
            if let Some(receipt) = outcome.receipt {
                if let Err(e) = Box::pin(broker.confirm_delivery(receipt)).await {
                    tracing::error!(
                        peer = %peer,
                        "marking mail delivered failed, it will be sent again: {e}"
                    );
                }
            }
        }
    }

    async fn read_frame(&mut self, limits: &Limits) -> Incoming {
        let idle_since = Instant::now();
        loop {
            let unread = &self.buffer[self.taken..];
            match self.scanner.scan_limited(unread, limits.max_request_bytes) {
                Err(FrameTooLarge) => return Incoming::Refused(too_large(limits)),
                Ok(Scan::Complete { frame, consumed }) => {
                    let bytes = unread[frame].to_vec();
                    self.taken += consumed;
                    self.scanner.reset();
                    self.frame_started = None;
                    return Incoming::Frame(bytes);
                }
                Ok(Scan::NeedMore) => self.compact(),
            }
            if self.scanner.in_frame() && self.frame_started.is_none() {
                self.frame_started = Some(Instant::now());
            }
            let (deadline, expired) = match self.frame_started {
                Some(started) => (
                    started + limits.read_timeout,
                    read_timed_out(limits, self.buffer.len()),
                ),
                None => (idle_since + limits.idle_timeout, idle_timed_out(limits)),
            };
            // Room for one more read. Reserving more than the starting size would double every
            // idle connection's buffer; a large request grows it as it arrives instead.
            self.buffer.reserve(INITIAL_BUFFER);
            match timeout_at(deadline, self.stream.read_buf(&mut self.buffer)).await {
                Err(_) => return Incoming::Refused(expired),
                Ok(Ok(0)) => return self.end_of_stream(),
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Incoming::Closed,
            }
        }
    }

    /// Drops the frames already handed out from the front of the buffer: once per read, not
    /// once per frame, so a read holding thousands of small pipelined requests is not moved
    /// thousands of times. A buffer a large request grew is given back once it is nearly empty.
    fn compact(&mut self) {
        self.buffer.drain(..self.taken);
        self.taken = 0;
        if self.buffer.capacity() > SHRINK_ABOVE && self.buffer.len() < INITIAL_BUFFER {
            self.buffer.shrink_to(INITIAL_BUFFER);
        }
    }

    /// At EOF, a half-sent request is still answered (it may be a bare token); whitespace is not.
    fn end_of_stream(&mut self) -> Incoming {
        if !self.scanner.in_frame() {
            return Incoming::Closed;
        }
        let rest = self.buffer.split_off(self.taken);
        self.buffer.clear();
        self.taken = 0;
        self.scanner.reset();
        self.frame_started = None;
        Incoming::Frame(rest)
    }

    /// Closing a socket with unread input makes the kernel send a reset, which can destroy the
    /// error reply before the client reads it. So: stop writing, then discard what the client
    /// is still sending, briefly, before closing.
    async fn linger(&mut self) {
        const LINGER: Duration = Duration::from_secs(1);
        const DISCARD_AT_MOST: usize = 4 * 1024 * 1024;
        let _ = self.stream.shutdown().await;
        // On the heap: an array here would sit in every connection's future, lingering or not.
        let mut sink = vec![0u8; 8192];
        let mut discarded = 0;
        let deadline = Instant::now() + LINGER;
        while discarded < DISCARD_AT_MOST {
            match timeout_at(deadline, self.stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => discarded += n,
                _ => return,
            }
        }
    }

    /// Writes the whole reply in one call, so a legacy client's single read gets all of it.
    async fn write_reply(&mut self, reply: &Reply, limit: Duration) -> std::io::Result<()> {
        let line = reply.to_line();
        let write = async {
            self.stream.write_all(&line).await?;
            self.stream.flush().await
        };
        timeout(limit, write).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client did not read its reply",
            )
        })?
    }
}

fn too_large(limits: &Limits) -> Reply {
    Reply::error(
        ErrorCode::RequestTooLarge,
        format!(
            "request is larger than {} bytes; the connection is closed. Send smaller requests",
            limits.max_request_bytes
        ),
    )
}

fn read_timed_out(limits: &Limits, got: usize) -> Reply {
    Reply::error(
        ErrorCode::ReadTimeout,
        format!(
            "request incomplete after {} s ({got} bytes received); send each request whole, promptly",
            limits.read_timeout.as_secs_f64()
        ),
    )
}

fn idle_timed_out(limits: &Limits) -> Reply {
    Reply::error(
        ErrorCode::IdleTimeout,
        format!(
            "no request for {} s; connection closed. Reconnect to send more",
            limits.idle_timeout.as_secs_f64()
        ),
    )
}

/// Tells a client over the connection cap why it is being turned away.
pub async fn refuse_busy<S: AsyncRead + AsyncWrite + Unpin>(stream: S, max: usize) {
    let reply = Reply::error(
        ErrorCode::TooManyConnections,
        format!("the broker is at its limit of {max} connections; retry shortly"),
    );
    refuse(stream, reply).await;
}

/// Tells a socket peer of another user that this socket is not for it.
pub async fn refuse_stranger<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer_uid: u32,
    owner_uid: u32,
) {
    let reply = Reply::error(
        ErrorCode::ForbiddenPeer,
        format!(
            "this socket serves only the broker's user (uid {owner_uid}), not uid {peer_uid}; run as that user, or connect over TCP"
        ),
    );
    refuse(stream, reply).await;
}

/// Writes one error reply to a connection that will not be served, then lingers briefly
/// reading what the client sends, so its request write does not fail (a Unix socket closed
/// by the peer fails writes with EPIPE) before it can read why.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(stream: S, reply: Reply) {
    let mut connection = Connection::new(stream);
    let written = connection.write_reply(&reply, Duration::from_secs(1)).await;
    if written.is_ok() {
        connection.linger().await;
    }
}
