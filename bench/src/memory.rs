//! The memory and scale workloads: many idle connections held at once, and the million-message
//! run (store a million messages, restart on them, drain them all) with the broker's start-up
//! time and peak resident memory.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::target::{memory_kib, SpawnedBroker, TargetError};
use crate::wire::{self, expect_ok, Connection, WireError};
use crate::workloads::{
    broadcast_request, check_request, contents, frame, register, register_many, Instance, Kind,
    Link, Mailbox, Target,
};

/// Messages the million-message run stores: broadcasts of one copy per receiver.
const MILLION: u64 = 1_000_000;
const MILLION_RECEIVERS: u64 = 50;
/// Broadcasts each filling connection writes before reading their replies.
const PIPELINE: u64 = 16;
const FILLERS: usize = 4;
/// Manual-ack checks each receiver makes and never acks before the first restart.
const LEASED_BATCHES: usize = 4;
/// Their lease: long enough that only the restart can end it.
const LEASE_MS: u64 = 600_000;

/// What holding many idle connections cost the broker.
#[derive(Debug, Clone)]
pub struct IdleFigures {
    pub connections: usize,
    /// Resident memory before and while they are held, when the broker's pid is known.
    pub rss_kib: Option<(u64, u64)>,
    /// A ping's round trip over a new connection while they are held (median of 20).
    pub ping: Duration,
}

impl IdleFigures {
    pub fn describe(&self) -> String {
        let memory = match self.rss_kib {
            Some((before, during)) => format!(
                "RSS {} -> {} ({:.1} KiB per connection)",
                mib(before),
                mib(during),
                during.saturating_sub(before) as f64 / self.connections as f64
            ),
            None => "RSS unknown (pass --pid for a broker this run did not start)".into(),
        };
        format!(
            "{} held open: {memory}; a ping meanwhile {:.2} ms",
            self.connections,
            self.ping.as_secs_f64() * 1e3
        )
    }
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Opens `count` connections, makes each one a served connection with a ping where the target
/// keeps connections open, and reads the broker's memory while they sit idle.
pub fn idle_connections(
    target: &Target,
    count: usize,
    pid: Option<u32>,
) -> Result<IdleFigures, WireError> {
    let before = pid.and_then(memory_kib);
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let mut connection = Connection::open(target.addr)?;
        if target.persistent {
            connection.request(br#"{"action":"ping"}"#)?;
        }
        held.push(connection);
    }
    std::thread::sleep(Duration::from_millis(200));
    let during = pid.and_then(memory_kib);
    let mut pings: Vec<Duration> = (0..20)
        .map(|_| {
            let begun = Instant::now();
            wire::legacy_request(target.addr, br#"{"action":"ping"}"#).map(|_| begun.elapsed())
        })
        .collect::<Result<_, _>>()?;
    pings.sort_unstable();
    drop(held);
    Ok(IdleFigures {
        connections: count,
        rss_kib: before.zip(during).map(|(b, d)| (b.0, d.0)),
        ping: pings[pings.len() / 2],
    })
}

#[derive(Debug, thiserror::Error)]
pub enum MillionError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Target(#[from] TargetError),
}

/// What the million-message run measured.
#[derive(Debug, Clone)]
pub struct MillionFigures {
    pub stored: u64,
    pub fill_elapsed: Duration,
    /// Peak resident memory of the broker that stored them.
    pub peak_after_fill_kib: Option<u64>,
    /// Messages held under manual-ack leases when the broker was first restarted; start-up
    /// hands them out again.
    pub leased: u64,
    /// Right after the first restart: how long a `count` (a request that needs the store, so
    /// waits behind the release of those leases) took.
    pub release_wait: Duration,
    /// Spawn to first answered ping, after a clean stop, three times; the first with
    /// `leased` leases to release.
    pub restarts: Vec<Duration>,
    /// Spawn to first answered ping after a SIGKILL.
    pub crash_restart: Duration,
    pub drained: u64,
    pub drain_elapsed: Duration,
    /// Receivers that did not get exactly their copies, each once.
    pub incomplete_receivers: usize,
    /// Peak resident memory of the broker that restarted on them and delivered them all.
    pub peak_after_drain_kib: Option<u64>,
}

impl MillionFigures {
    pub fn describe(&self) -> String {
        let restarts: Vec<String> = self
            .restarts
            .iter()
            .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
            .collect();
        format!(
            "stored {} in {:.1} s, restarts {} (the first with {} leases to release, and a count \
             right after it took {:.0} ms; after SIGKILL {:.0} ms), drained {} in {:.1} s, \
             peak RSS {} / {}",
            self.stored,
            self.fill_elapsed.as_secs_f64(),
            restarts.join(", "),
            self.leased,
            self.release_wait.as_secs_f64() * 1e3,
            self.crash_restart.as_secs_f64() * 1e3,
            self.drained,
            self.drain_elapsed.as_secs_f64(),
            self.peak_after_fill_kib.map(mib).unwrap_or_default(),
            self.peak_after_drain_kib.map(mib).unwrap_or_default(),
        )
    }

    pub fn slowest_start(&self) -> Duration {
        self.restarts
            .iter()
            .copied()
            .chain([self.crash_restart])
            .max()
            .unwrap_or_default()
    }
}

/// Stores a million messages, restarts the broker on them (cleanly and after SIGKILL), then
/// has every receiver drain its mail.
pub fn million(
    target: &Target,
    broker: &mut SpawnedBroker,
) -> Result<MillionFigures, MillionError> {
    let sender = register(target, &format!("{}-million-sender", target.prefix))?;
    let receivers = register_many(target, "million", MILLION_RECEIVERS as usize)?;
    let started = Instant::now();
    let broadcasts = fill(target, &sender)?;
    let fill_elapsed = started.elapsed();
    let peak_after_fill_kib = memory_kib(broker.pid()).map(|(_, peak)| peak);
    let leased = lease_some(target, &receivers)?;
    let mut restarts = vec![broker.restart(false)?];
    let release_wait = time_a_count(target, &receivers[0])?;
    for _ in 0..2 {
        restarts.push(broker.restart(false)?);
    }
    let crash_restart = broker.restart(true)?;
    let started = Instant::now();
    let (drained, incomplete) = drain_all(target, &receivers, broadcasts)?;
    Ok(MillionFigures {
        stored: broadcasts * MILLION_RECEIVERS,
        fill_elapsed,
        peak_after_fill_kib,
        leased,
        release_wait,
        restarts,
        crash_restart,
        drained,
        drain_elapsed: started.elapsed(),
        incomplete_receivers: incomplete,
        peak_after_drain_kib: memory_kib(broker.pid()).map(|(_, peak)| peak),
    })
}

/// Readers that crash or stop mid-work leave leases behind: every receiver takes a few
/// batches with manual acks and a long lease, and never acks them. Returns how many messages
/// are leased.
fn lease_some(target: &Target, receivers: &[Instance]) -> Result<u64, WireError> {
    let mut leased = 0;
    for who in receivers {
        let mut link = Link::open(target)?;
        for _ in 0..LEASED_BATCHES {
            let mut request = check_request(who);
            request["ack"] = json!("manual");
            request["lease_ms"] = json!(LEASE_MS);
            leased += contents(&link.request(&request)?).len() as u64;
        }
    }
    Ok(leased)
}

/// The round trip of one `count` by `who`.
fn time_a_count(target: &Target, who: &Instance) -> Result<Duration, WireError> {
    let begun = Instant::now();
    Link::open(target)?.request(&json!({"action": "count", "session_token": who.token}))?;
    Ok(begun.elapsed())
}

/// Broadcasts until a million copies are stored, over a few pipelined connections; shows
/// progress. Returns the number of broadcasts.
fn fill(target: &Target, sender: &Instance) -> Result<u64, WireError> {
    let total = MILLION / MILLION_RECEIVERS;
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let fillers: Vec<_> = (0..FILLERS)
            .map(|_| scope.spawn(|| fill_from(target, sender, &next, &done, total)))
            .collect();
        while fillers.iter().any(|f| !f.is_finished()) {
            std::thread::sleep(Duration::from_millis(250));
            let stored = done.load(Ordering::Relaxed) * MILLION_RECEIVERS;
            eprint!("\r  stored {stored} of {MILLION} ...   ");
        }
        eprint!("\r");
        for filler in fillers {
            filler.join().expect("a filler panicked")?;
        }
        Ok(total)
    })
}

fn fill_from(
    target: &Target,
    sender: &Instance,
    next: &AtomicU64,
    done: &AtomicU64,
    total: u64,
) -> Result<(), WireError> {
    let mut connection = Connection::open(target.addr)?;
    loop {
        let first = next.fetch_add(PIPELINE, Ordering::Relaxed);
        if first >= total {
            return Ok(());
        }
        let last = (first + PIPELINE).min(total);
        let batch: Vec<u8> = (first..last)
            .flat_map(|seq| {
                frame(
                    &broadcast_request(sender, &format!("million {seq}")),
                    Kind::Persistent,
                )
            })
            .collect();
        connection.write(&batch)?;
        for _ in first..last {
            let reply = expect_ok(connection.read_reply()?)?;
            if reply["count"] != json!(MILLION_RECEIVERS) {
                return Err(WireError::Refused(format!(
                    "a broadcast reached {} instances, not {MILLION_RECEIVERS}: {reply}",
                    reply["count"]
                )));
            }
        }
        done.fetch_add(last - first, Ordering::Relaxed);
    }
}

/// Every receiver drains its mail at once; returns the messages read and how many receivers
/// did not get each broadcast exactly once.
fn drain_all(
    target: &Target,
    receivers: &[Instance],
    broadcasts: u64,
) -> Result<(u64, usize), WireError> {
    std::thread::scope(|scope| {
        let drains: Vec<_> = receivers
            .iter()
            .map(|who| scope.spawn(move || Mailbox::open(target, who).and_then(|mut m| m.drain())))
            .collect();
        let (mut read, mut incomplete) = (0, 0);
        for drain in drains {
            let mail = drain.join().expect("a drain panicked")?;
            read += mail.len() as u64;
            let distinct: HashSet<&String> = mail.iter().collect();
            if mail.len() as u64 != broadcasts || distinct.len() != mail.len() {
                incomplete += 1;
            }
        }
        Ok((read, incomplete))
    })
}
