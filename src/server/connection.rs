//! One client connection: read a frame, hand the request to the broker, write the reply,
//! and only then confirm delivery of any mail it carried. Requests on one connection are
//! answered in order.
//!
//! A connection the accept loop admitted holds a [`Ticket`] (its slot, through which it
//! reports when a request starts and ends, and learns when it is evicted) and grows its read
//! buffer past the first few KiB only with bytes lent by the shared [`ByteBudget`].

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant};

use super::admission::{Eviction, Refusal, Ticket};
use super::budget::{ByteBudget, Loan};
use crate::broker::{Broker, Peer};
use crate::config::Limits;
use crate::protocol::{ErrorCode, FrameScanner, FrameTooLarge, Reply, Request, Scan};

/// A connection's read buffer starts this big; only growth beyond it is lent by the budget.
const INITIAL_BUFFER: usize = 4096;

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
    /// The slot the accept loop gave this connection (none when driven directly, in tests).
    ticket: Option<Ticket>,
    /// The buffer's capacity beyond [`INITIAL_BUFFER`], borrowed from the shared budget (none:
    /// unbudgeted, when driven directly).
    loan: Option<Loan>,
    /// One of its requests proved a session: it gets the full idle timeout.
    authenticated: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Self {
        Connection {
            stream,
            buffer: Vec::with_capacity(INITIAL_BUFFER),
            taken: 0,
            scanner: FrameScanner::new(),
            frame_started: None,
            ticket: None,
            loan: None,
            authenticated: false,
        }
    }

    /// A connection admitted by the accept loop: it holds `ticket`'s slot and borrows buffer
    /// space beyond the first few KiB from `budget`.
    pub fn admitted(stream: S, ticket: Ticket, budget: &ByteBudget) -> Self {
        Connection {
            ticket: Some(ticket),
            loan: Some(budget.loan()),
            ..Connection::new(stream)
        }
    }

    /// Serves requests until the client leaves, a limit is hit, the connection is evicted
    /// between requests, or shutdown is signalled between requests.
    pub async fn serve(
        mut self,
        broker: Arc<Broker>,
        peer: Peer,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let limits = broker.limits().clone();
        let eviction = self.ticket.as_ref().map(Ticket::eviction);
        loop {
            let incoming = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = evicted(&eviction) => {
                    tracing::debug!(peer = %peer, "evicted to make room for a new connection");
                    Incoming::Refused(evicted_reply())
                }
                incoming = self.read_frame(&limits) => incoming,
            };
            let frame = match incoming {
                Incoming::Frame(frame) => frame,
                Incoming::Closed => return,
                Incoming::Refused(reply) => return self.close_with(&reply, &limits).await,
            };
            if !self.begin_request() {
                // Evicted between reading the request and starting it: it is not served.
                return self.close_with(&evicted_reply(), &limits).await;
            }
            let outcome = match Request::parse(&frame) {
                // Boxed, so that only a connection in the middle of a request holds the rules'
                // sizeable future; an idle one stays small.
                Ok(request) => Box::pin(broker.handle(request, &peer)).await,
                Err(error) => error.into_reply().into(),
            };
            drop(frame);
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
            // Only now, with its reply written, may the connection be evicted again.
            self.end_request(outcome.authenticated);
            self.give_back_memory();
        }
    }

    /// Writes a closing error reply and lingers so the client can read it.
    async fn close_with(&mut self, reply: &Reply, limits: &Limits) {
        if self.write_reply(reply, limits.write_timeout).await.is_ok() {
            self.linger().await;
        }
    }

    fn begin_request(&self) -> bool {
        self.ticket.as_ref().is_none_or(Ticket::begin_request)
    }

    fn end_request(&mut self, authenticated: bool) {
        self.authenticated |= authenticated;
        if let Some(ticket) = &self.ticket {
            ticket.end_request(authenticated);
        }
    }

    /// How long this connection may stay without a request: short until it authenticates.
    fn idle_timeout(&self, limits: &Limits) -> Duration {
        if self.authenticated {
            limits.idle_timeout
        } else {
            limits.idle_timeout.min(limits.unauthenticated_idle_timeout)
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
            let idle_timeout = self.idle_timeout(limits);
            let (deadline, expired) = match self.frame_started {
                Some(started) => (
                    started + limits.read_timeout,
                    read_timed_out(limits, self.buffer.len()),
                ),
                None => (idle_since + idle_timeout, idle_timed_out(idle_timeout)),
            };
            let read = async {
                self.make_room(limits).await;
                self.stream.read_buf(&mut self.buffer).await
            };
            match timeout_at(deadline, read).await {
                Err(_) => return Incoming::Refused(expired),
                Ok(Ok(0)) => return self.end_of_stream(),
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Incoming::Closed,
            }
        }
    }

    /// Makes sure the buffer has room for one more read. A full buffer doubles, up to what the
    /// largest request needs. Growing past the initial size first borrows, in one go, enough
    /// for the largest request: a connection never holds part of a loan while it waits for
    /// more, so the budget cannot be split among waiters that all wait for each other. When
    /// the budget is spent this waits, and the connection reads nothing meanwhile.
    async fn make_room(&mut self, limits: &Limits) {
        if self.buffer.len() < self.buffer.capacity() {
            return;
        }
        let authenticated = self.authenticated;
        if let Some(loan) = self.loan.as_mut() {
            if loan.bytes() == 0 {
                loan.borrow(limits.max_request_bytes, authenticated).await;
            }
        }
        let capacity = self.buffer.capacity().max(INITIAL_BUFFER);
        let most = limits.max_request_bytes.saturating_add(INITIAL_BUFFER);
        let wanted = (capacity * 2).min(most).max(capacity + INITIAL_BUFFER);
        self.buffer.reserve_exact(wanted - self.buffer.len());
    }

    /// Drops the frames already handed out from the front of the buffer: once per read, not
    /// once per frame, so a read holding thousands of small pipelined requests is not moved
    /// thousands of times.
    fn compact(&mut self) {
        self.buffer.drain(..self.taken);
        self.taken = 0;
    }

    /// After a request: a buffer a large request grew is freed back to its initial size (not
    /// just emptied, so the memory really goes) and the budget's bytes are returned.
    fn give_back_memory(&mut self) {
        self.compact();
        if self.buffer.capacity() > INITIAL_BUFFER && self.buffer.len() <= INITIAL_BUFFER {
            let mut smaller = Vec::with_capacity(INITIAL_BUFFER);
            smaller.extend_from_slice(&self.buffer);
            self.buffer = smaller;
        }
        if self.buffer.capacity() <= INITIAL_BUFFER {
            if let Some(loan) = self.loan.as_mut() {
                loan.give_back();
            }
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

fn idle_timed_out(idle_timeout: Duration) -> Reply {
    Reply::error(
        ErrorCode::IdleTimeout,
        format!(
            "no request for {} s; connection closed. Reconnect to send more",
            idle_timeout.as_secs_f64()
        ),
    )
}

fn evicted_reply() -> Reply {
    Reply::error(
        ErrorCode::ConnectionEvicted,
        "the broker is at its connection limit and this connection had not registered or used \
         a session, so it was closed to make room; reconnect and send your request at once",
    )
}

/// Resolves when the connection is evicted; never, for one without a ticket.
async fn evicted(eviction: &Option<Eviction>) {
    match eviction {
        Some(eviction) => eviction.wait().await,
        None => std::future::pending().await,
    }
}

/// Tells a client that could not be given a connection slot why it is being turned away.
pub async fn refuse_admission<S: AsyncRead + AsyncWrite + Unpin>(stream: S, refusal: Refusal) {
    let reply = match refusal {
        Refusal::Full { cap } => Reply::error(
            ErrorCode::TooManyConnections,
            format!("the broker is at its limit of {cap} connections; retry shortly"),
        ),
        Refusal::PeerQuota { quota } => Reply::error(
            ErrorCode::ConnectionQuota,
            format!(
                "your user already holds {quota} connections to this broker, the most a user \
                 other than the broker's own may hold; close some, then retry"
            ),
        ),
        Refusal::OthersShare { share } => Reply::error(
            ErrorCode::ConnectionQuota,
            format!(
                "users other than the broker's own already hold {share} connections, their \
                 share of the limit; retry shortly"
            ),
        ),
    };
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
