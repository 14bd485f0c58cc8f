//! One client connection: read a frame, hand the request to the broker, write the reply,
//! and mark the mail it carried delivered only on evidence that the client took it.
//! Requests on one connection are answered in order.
//!
//! The evidence is what TCP (or a Unix socket) tells: a peer that closes with unread data
//! resets the connection instead of closing it cleanly, and data written to a peer that
//! already closed is answered by a reset at once; and the kernel can say whether a local
//! client has read what was written to it (see the `unread` module). So mail counts as taken when, after
//! the reply was written, the client read it all, sends its next request or closes cleanly,
//! and as not taken when the connection is reset or none of that happens within the write
//! timeout.
//!
//! A connection the accept loop admitted holds a [`Ticket`] (its slot, through which it
//! reports when a request starts and ends, and learns when it is evicted) and grows its read
//! buffer past the first few KiB only with bytes lent by the shared [`ByteBudget`].

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant};

use super::admission::{Eviction, Refusal, Ticket};
use super::budget::{ByteBudget, Loan};
use super::unread;
use crate::broker::{reader, Broker, DeliveryReceipt, Outcome, Peer};
use crate::config::Limits;
use crate::protocol::{ErrorCode, FrameScanner, FrameTooLarge, Reply, Request, Scan};

/// A connection's read buffer starts this big; only growth beyond it is lent by the budget.
const INITIAL_BUFFER: usize = 4096;
/// After a client closed its side, how long a reset may take to answer data written to it.
/// On loopback the reset comes at once; this leaves room for a busy machine.
const RESET_GRACE: Duration = Duration::from_millis(100);
/// How often the socket is asked for a reset during that grace.
const RESET_POLL: Duration = Duration::from_millis(5);
/// How soon after writing a reply the kernel is first asked whether the client read it; the
/// pause doubles up to [`READ_POLL_MAX`] while the client has not.
const READ_POLL_FIRST: Duration = Duration::from_millis(1);
const READ_POLL_MAX: Duration = Duration::from_millis(50);
/// The most manual-ack leases a connection remembers, to hand back if its client turns out
/// to be gone. Older ones are left to run out, as every lease did before.
const LEASES_REMEMBERED: usize = 64;

/// A socket that can tell whether its peer reset it, and whether its peer read what was
/// written to it.
pub trait Socket: AsyncRead + AsyncWrite + Unpin {
    /// The error pending on the socket (a reset by the peer), if any; it is cleared.
    fn take_error(&self) -> std::io::Result<Option<std::io::Error>>;

    /// Whether the peer has read everything written so far; `None` if the kernel cannot say.
    fn peer_read_all(&self) -> Option<bool>;
}

impl Socket for TcpStream {
    fn take_error(&self) -> std::io::Result<Option<std::io::Error>> {
        TcpStream::take_error(self)
    }

    fn peer_read_all(&self) -> Option<bool> {
        let (local, peer) = (self.local_addr().ok()?, self.peer_addr().ok()?);
        unread::tcp_peer_read_all(self.as_raw_fd(), local, peer)
    }
}

impl Socket for UnixStream {
    fn take_error(&self) -> std::io::Result<Option<std::io::Error>> {
        UnixStream::take_error(self)
    }

    fn peer_read_all(&self) -> Option<bool> {
        unread::unix_peer_read_all(self.as_raw_fd())
    }
}

/// An in-memory pipe (for driving a connection in tests) is never reset and cannot say.
impl Socket for tokio::io::DuplexStream {
    fn take_error(&self) -> std::io::Result<Option<std::io::Error>> {
        Ok(None)
    }

    fn peer_read_all(&self) -> Option<bool> {
        None
    }
}

/// What reading the next request produced.
enum Incoming {
    Frame(Vec<u8>),
    /// The client closed the connection between requests.
    Closed,
    /// The connection was reset (or broke) between requests.
    Reset,
    /// The connection must end with this error reply.
    Refused(Reply),
}

/// How a client left while its request was being answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// It closed its side. It may still read (a client that half-closes after its request).
    Closed,
    /// The connection was reset: nothing more reaches the client.
    Reset,
}

/// How a connection ended, for the mail it leased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The client closed cleanly, or the broker ended the connection.
    Ordinary,
    /// The client is provably gone without taking a reply.
    ReaderGone,
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

impl<S: Socket> Connection<S> {
    /// Serves requests until the client leaves, a limit is hit, or shutdown is signalled
    /// between requests. Leases taken on a connection whose client is provably gone are
    /// handed back, so that mail is readable again at once.
    pub async fn serve(
        mut self,
        broker: Arc<Broker>,
        peer: Peer,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut leases = VecDeque::new();
        let ending = self
            .serve_requests(&broker, &peer, &mut shutdown, &mut leases)
            .await;
        if ending == Ending::ReaderGone {
            for lease in leases {
                settle(&broker, &peer, lease, false).await;
            }
        }
    }

    async fn serve_requests(
        &mut self,
        broker: &Broker,
        peer: &Peer,
        shutdown: &mut watch::Receiver<bool>,
        leases: &mut VecDeque<DeliveryReceipt>,
    ) -> Ending {
        let limits = broker.limits().clone();
        let eviction = self.ticket.as_ref().map(Ticket::eviction);
        loop {
            let frame = match self.next_frame(shutdown, &eviction, &limits, leases).await {
                Ok(frame) => frame,
                Err(ending) => return ending,
            };
            // A client that sends its next request has read the `watch` reply before it: its
            // announcement stands even if the connection resets later.
            leases.retain(|receipt| !receipt.is_announcement());
            if !self.begin_request() {
                // Evicted between reading the request and starting it: it is not served.
                self.close_with(&evicted_reply(), &limits).await;
                return Ending::Ordinary;
            }
            let (outcome, departed) = self.answer(broker, peer, &frame, &limits).await;
            drop(frame);
            let authenticated = outcome.authenticated;
            let delivered = self
                .deliver(broker, peer, outcome, departed, &limits, leases)
                .await;
            if let Err(ending) = delivered {
                return ending;
            }
            // Only now, with its reply written and settled, may the connection be evicted.
            self.end_request(authenticated);
            self.give_back_memory();
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

    /// The next request, or how the connection ended before one came.
    async fn next_frame(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        eviction: &Option<Eviction>,
        limits: &Limits,
        leases: &VecDeque<DeliveryReceipt>,
    ) -> Result<Vec<u8>, Ending> {
        let incoming = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return Err(Ending::Ordinary),
            _ = evicted(eviction) => Incoming::Refused(evicted_reply()),
            incoming = self.read_frame(limits) => incoming,
        };
        match incoming {
            Incoming::Frame(frame) => Ok(frame),
            // A close right after a lease reply may still turn out a reset: the reply unread.
            Incoming::Closed if !leases.is_empty() && self.reset_within(RESET_GRACE).await => {
                Err(Ending::ReaderGone)
            }
            Incoming::Closed => Err(Ending::Ordinary),
            Incoming::Reset => Err(Ending::ReaderGone),
            Incoming::Refused(reply) => {
                self.close_with(&reply, limits).await;
                Err(Ending::Ordinary)
            }
        }
    }

    /// Writes a closing error reply and lingers so the client can read it.
    async fn close_with(&mut self, reply: &Reply, limits: &Limits) {
        if self.write_reply(reply, limits.write_timeout).await.is_ok() {
            self.linger().await;
        }
    }

    /// Writes the reply, unless the client is already gone, and settles the mail it carries:
    /// a legacy receipt on the evidence that the client took it, a lease by remembering it
    /// in case the client turns out to be gone.
    async fn deliver(
        &mut self,
        broker: &Broker,
        peer: &Peer,
        outcome: Outcome,
        departed: Option<Departure>,
        limits: &Limits,
        leases: &mut VecDeque<DeliveryReceipt>,
    ) -> Result<(), Ending> {
        if departed == Some(Departure::Reset) {
            tracing::debug!(peer = %peer, "client reset the connection before its reply");
            settle_if_any(broker, peer, outcome.receipt, false).await;
            return Err(Ending::ReaderGone);
        }
        if self
            .write_reply(&outcome.reply, limits.write_timeout)
            .await
            .is_err()
        {
            tracing::debug!(peer = %peer, "reply not written; mail stays queued");
            settle_if_any(broker, peer, outcome.receipt, false).await;
            return Err(Ending::ReaderGone);
        }
        match outcome.receipt {
            None => Ok(()),
            Some(lease) if !lease.settles_on_receipt() => {
                if leases.len() == LEASES_REMEMBERED {
                    leases.pop_front();
                }
                leases.push_back(lease);
                Ok(())
            }
            Some(receipt) => {
                let took = self.took_reply(departed, limits).await;
                settle(broker, peer, receipt, took).await;
                if took {
                    return Ok(());
                }
                tracing::debug!(peer = %peer, "client did not take its reply; mail stays queued");
                Err(Ending::ReaderGone)
            }
        }
    }

    /// Answers one request while watching the socket: a client that closes or resets the
    /// connection meanwhile is reported to the rules (a long-poll stops waiting for it) and
    /// to the caller. Bytes that arrive meanwhile are the next requests, kept for later.
    async fn answer(
        &mut self,
        broker: &Broker,
        peer: &Peer,
        frame: &[u8],
        limits: &Limits,
    ) -> (Outcome, Option<Departure>) {
        let request = match Request::parse(frame) {
            Ok(request) => request,
            Err(error) => return (Outcome::reply(error.into_reply()), None),
        };
        let (left, presence) = reader::watch_reader();
        // Boxed, so that only a connection in the middle of a request holds the rules'
        // sizeable future; an idle one stays small.
        let mut handling = Box::pin(broker.handle_for(request, peer, presence));
        let mut departed = None;
        loop {
            // A client that pipelines more than a request's worth is not read further until
            // this one is answered, so it cannot grow the buffer without bound.
            let room = self.buffer.len() - self.taken <= limits.max_request_bytes;
            tokio::select! {
                outcome = &mut handling => return (outcome, departed),
                read = self.read_more(limits), if departed.is_none() && room => {
                    departed = match read {
                        Ok(0) => Some(Departure::Closed),
                        Ok(_) => None,
                        Err(_) => Some(Departure::Reset),
                    };
                    if departed.is_some() {
                        left.left();
                    }
                }
            }
        }
    }

    /// After a reply carrying mail was written: did the client take it, as far as the socket
    /// can tell? Yes once the kernel says the client read it all, or the client sends its next
    /// request or closes cleanly; no if the connection is reset or none of that happens
    /// within the write timeout.
    async fn took_reply(&mut self, departed: Option<Departure>, limits: &Limits) -> bool {
        if departed == Some(Departure::Closed) {
            // It closed before the reply was written. A client that only half-closed still
            // reads it; one that closed for good answers the reply with a reset.
            return !self.reset_within(RESET_GRACE).await;
        }
        let deadline = Instant::now() + limits.write_timeout;
        let mut pause = READ_POLL_FIRST;
        loop {
            // The next request, even one sent before this reply arrived: a pipelining client
            // waits for its answer, so waiting longer here would only stall it.
            if self.buffer[self.taken..]
                .iter()
                .any(|byte| !byte.is_ascii_whitespace())
            {
                return true;
            }
            let ask_at = deadline.min(Instant::now() + pause);
            match timeout_at(ask_at, self.read_more(limits)).await {
                // A client that closed with the reply unread resets instead; one that read
                // it is often still known to the kernel as having read everything.
                Ok(Ok(0)) => {
                    return self.stream.peer_read_all() == Some(true)
                        || !self.reset_within(RESET_GRACE).await
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return false,
                Err(_) if self.stream.peer_read_all() == Some(true) => return true,
                Err(_) if Instant::now() >= deadline => return false,
                Err(_) => pause = (pause * 2).min(READ_POLL_MAX),
            }
        }
    }

    /// Reads whatever the client sends next onto the end of the buffer (with room made the
    /// way every read makes it, under the budget).
    async fn read_more(&mut self, limits: &Limits) -> std::io::Result<usize> {
        self.make_room(limits).await;
        self.stream.read_buf(&mut self.buffer).await
    }

    /// Whether the peer resets the connection within `grace`.
    async fn reset_within(&mut self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        loop {
            if !matches!(self.stream.take_error(), Ok(None)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(RESET_POLL).await;
        }
    }
}

/// Settles a receipt, if the reply carried one.
async fn settle_if_any(broker: &Broker, peer: &Peer, receipt: Option<DeliveryReceipt>, took: bool) {
    if let Some(receipt) = receipt {
        settle(broker, peer, receipt, took).await;
    }
}

/// Marks the mail delivered if the client took the reply, or hands it back to the queue.
async fn settle(broker: &Broker, peer: &Peer, receipt: DeliveryReceipt, took: bool) {
    let settled = if took {
        Box::pin(broker.confirm_delivery(receipt)).await
    } else {
        Box::pin(broker.return_to_queue(receipt)).await
    };
    if let Err(e) = settled {
        tracing::error!(
            peer = %peer,
            "settling delivered mail failed; it is handed out again when its hold runs out: {e}"
        );
    }
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
                Ok(Err(_)) => return Incoming::Reset,
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

/// The refusal of a request over `--max-request-bytes`. Most such requests carry one long
/// message, so it says what does fit and what to do with the rest; the code is the legacy one.
fn too_large(limits: &Limits) -> Reply {
    Reply::error(
        ErrorCode::RequestTooLarge,
        format!(
            "request is larger than {} bytes ({}), the most this broker takes in one request, \
             message content included (counted as JSON text); the connection is closed. For \
             longer content, write it to a file and send the file's path, or split it into \
             several messages",
            limits.max_request_bytes,
            crate::config::size_text(limits.max_request_bytes)
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
