//! The broker clock at run time: resumed from the database at start, persisted as it runs,
//! compared with the wall clock so that a disagreement is logged once and shown by `ping`.
//!
//! The rule (see [`crate::clock::BrokerClock`]): every window the broker enforces is measured
//! on the broker clock, which moves with real elapsed time; the wall clock is used only where a
//! time comes from outside (a sender's `timestamp`) and where there is no evidence (the first
//! start, or the first start after a reboot).

use std::sync::Mutex;

use crate::protocol::schema::ClockReport;
use chrono::Duration;

use super::{text, Broker};
use crate::clock::{BrokerClock, Clock, Resumed};
use crate::domain::Timestamp;
use crate::store::{Durability, Store, StoreError, Tx};

/// A wall clock this far from the broker clock, either way, is reported. Below it the two
/// differ by ordinary drift and slewing, which is not news.
const OFFSET_TOLERANCE: Duration = Duration::seconds(2);

/// The last wall-clock offset the log reported, so it is reported once per change, not once
/// per request. A std `Mutex`: it is never held across an `.await`.
#[derive(Default)]
pub(super) struct OffsetReport {
    last_warned: Mutex<Option<Duration>>,
}

/// Starts the broker clock from the anchor the last run persisted, and persists the new one at
/// once, in one job: a run killed a moment later still leaves an anchor of its own boot.
pub async fn resume_broker_clock(store: &Store, clock: Clock) -> Result<BrokerClock, StoreError> {
    let (broker_clock, resumed) = store
        .write(Durability::Flushed, move |tx| {
            let persisted = tx.load_clock_anchor()?;
            let floor = tx.latest_run_time()?.map(Timestamp::at);
            let (broker_clock, resumed) = BrokerClock::resume(clock, persisted, floor);
            save(tx, &broker_clock)?;
            Ok::<_, StoreError>((broker_clock, resumed))
        })
        .await?;
    let how = match resumed {
        Resumed::FromWallClock => "from the wall clock (no earlier time was recorded)",
        Resumed::SameBoot => "from the last run's time plus the real time elapsed since",
        Resumed::AfterReboot => {
            "from the wall clock after a reboot, not before the last run's time"
        }
    };
    tracing::info!(broker_time = %text(broker_clock.now()), "broker clock resumed {how}");
    Ok(broker_clock)
}

fn save(tx: &Tx<'_>, clock: &BrokerClock) -> Result<(), StoreError> {
    tx.save_clock_anchor(&clock.anchor_now(), Timestamp::new(clock.wall()))
}

impl Broker {
    /// Persists the broker clock's anchor, so the next run resumes from it. Called by the
    /// sweeper's tick and at shutdown; cheap (one row).
    pub async fn persist_clock(&self) {
        let clock = self.clock.clone();
        let saved = self
            .store
            .write(Durability::Flushed, move |tx| save(tx, &clock))
            .await;
        if let Err(e) = saved {
            tracing::warn!("could not persist the broker clock: {e}");
        }
    }

    /// Logs when the wall clock starts or stops disagreeing with the broker clock, or moves
    /// again while it disagrees: at WARN, once per change.
    pub fn report_clock_offset(&self) {
        let offset = self.clock.wall_offset();
        let mut last = self
            .offset_report
            .last_warned
            .lock()
            .expect("offset report poisoned");
        let disagrees = offset.abs() > OFFSET_TOLERANCE;
        let changed = match *last {
            Some(warned) => (offset - warned).abs() > OFFSET_TOLERANCE,
            None => disagrees,
        };
        if !changed {
            return;
        }
        if disagrees {
            tracing::warn!(
                wall_clock = %text(self.clock.wall()),
                broker_clock = %text(self.clock.now()),
                wall_ahead_seconds = offset.num_seconds(),
                "the wall clock disagrees with the broker clock; expiry, limits and leases \
                 follow the broker clock (real elapsed time), so nothing expires early or \
                 waits longer because of it"
            );
            *last = Some(offset);
        } else {
            tracing::info!("the wall clock agrees with the broker clock again");
            *last = None;
        }
    }

    /// `ping`'s `clock`: the broker clock, the wall clock, and how far the wall clock is ahead.
    pub(super) fn clock_report(&self) -> ClockReport {
        let (broker, wall) = (self.clock.now(), self.clock.wall());
        ClockReport {
            broker: text(broker),
            wall: text(wall),
            wall_ahead_ms: (wall - broker).num_milliseconds(),
        }
    }
}
