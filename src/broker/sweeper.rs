//! Expiry and purging: idle sessions, old forwards, undelivered future mail past its
//! retention, delivered mail past its retention (with its large-message file), stale nonces,
//! rate-limit rows (per instance and per peer), authentication failures older than 30 days,
//! records of mail that expired undelivered (kept for its sender's receipts as long as
//! delivered mail),
//! and instances nobody has used for the instance retention (no live session, no waiting mail
//! but rename notices, no live forward to them). Each pass deletes in
//! bounded batches, one short job at a time, so sends queued behind it wait for one small
//! batch at most.
//!
//! Then, at most every [`ORPHAN_PASS_INTERVAL`], the orphan pass: a large-message file that
//! no message refers to and that was written more than [`ORPHAN_GRACE`] ago is the leftover
//! of a broker killed between writing a file and committing its message, and is removed.

use super::{done, large_message, minus, plus, Broker, BrokerError};
use crate::domain::Timestamp;
use crate::store::queries::{SweepCutoffs, SweepReport, SweepTables};
use crate::store::Durability;

/// Rows one sweep job may delete per table.
const SWEEP_BATCH: u32 = 500;
/// Authentication failures are kept this long for operators, then dropped.
const AUTH_FAILURE_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
/// How old an unreferenced large-message file must be before it counts as an orphan. A send
/// writes its file after its request is read, then commits its message at once (its job
/// waits at most the 5 s busy timeout and the writer's queue), so a send in progress is
/// seconds old; an hour is hundreds of times the 10 s read timeout and any such wait.
pub const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);
/// How often the orphan pass runs: it lists `large-messages/` and looks up each old file.
pub const ORPHAN_PASS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);
/// Files one orphan job looks up.
const ORPHAN_BATCH: usize = 200;

impl Broker {
    /// Runs sweep jobs until nothing is left to remove, and returns the totals.
    pub async fn sweep(&self) -> Result<SweepReport, BrokerError> {
        // Authentication-failure summaries whose minute ended are logged even if the peer
        // went quiet.
        self.auth_guard.flush();
        let mut total = SweepReport::default();
        let mut tables = SweepTables::ALL;
        loop {
            let report = self.sweep_batch(tables).await?;
            tables = SweepTables::still_full(&report, SWEEP_BATCH as usize);
            remove_files(&report.files_to_remove);
            add(&mut total, report);
            if !tables.any() {
                break;
            }
            tokio::task::yield_now().await;
        }
        if self.orphan_pass_due() {
            total.orphan_files = self.remove_orphan_files().await?;
        }
        Ok(total)
    }

    /// Whether the orphan pass should run now, and if so, records that it does. A clock
    /// that went back makes it due, rather than never.
    fn orphan_pass_due(&self) -> bool {
        let now = self.now();
        let mut last = self.last_orphan_pass.lock().expect("orphan mutex poisoned");
        let due = last.is_none_or(|at| now < at || now >= plus(at, ORPHAN_PASS_INTERVAL));
        if due {
            *last = Some(now);
        }
        due
    }

    /// Removes large-message files older than [`ORPHAN_GRACE`] (or ten read timeouts, if
    /// longer) that no message refers to,
    /// looking them up [`ORPHAN_BATCH`] at a time; returns how many it removed.
    async fn remove_orphan_files(&self) -> Result<usize, BrokerError> {
        let dir = self.large_message_dir.clone();
        let grace = ORPHAN_GRACE.max(self.limits.read_timeout * 10);
        let before = minus(self.now(), grace);
        let listed =
            tokio::task::spawn_blocking(move || large_message::files_written_before(&dir, before))
                .await;
        let old = match listed {
            Ok(Ok(old)) => old,
            Ok(Err(e)) => return Err(BrokerError::LargeFile(e)),
            Err(e) => return Err(BrokerError::LargeFile(std::io::Error::other(e))),
        };
        let old: Vec<String> = old.iter().map(|p| p.display().to_string()).collect();
        let mut removed = 0;
        for batch in old.chunks(ORPHAN_BATCH) {
            let paths = batch.to_vec();
            let orphans = self
                .job(Durability::Flushed, move |tx, _now| {
                    done(tx.unreferenced_files(&paths)?)
                })
                .await?;
            for orphan in &orphans {
                tracing::info!("removing large-message file {orphan}: no message refers to it");
            }
            remove_files(&orphans);
            removed += orphans.len();
            tokio::task::yield_now().await;
        }
        Ok(removed)
    }

    async fn sweep_batch(&self, tables: SweepTables) -> Result<SweepReport, BrokerError> {
        let limits = self.limits.clone();
        let human = self.human_name().cloned();
        self.job(Durability::Flushed, move |tx, now| {
            // The dashboard's person is seen while the dashboard runs: its name stays
            // registered, so agents can always send to it.
            if let Some(human) = &human {
                tx.upsert_instance(human, now)?;
            }
            done(tx.sweep(&cutoffs(&limits, now), tables, SWEEP_BATCH)?)
        })
        .await
    }
}

/// What each table keeps at `now`: rows older than these go.
fn cutoffs(limits: &crate::config::Limits, now: Timestamp) -> SweepCutoffs {
    let rate_window = now.minus(std::time::Duration::from_secs(60));
    SweepCutoffs {
        now,
        session_idle_before: now.minus(limits.session_idle_expiry),
        future_mail_before: now.minus(limits.future_mail_retention),
        delivered_before: now.minus(limits.history_retention),
        nonces_before: now.minus(limits.replay_window),
        request_log_before: rate_window,
        auth_failures_before: now.minus(AUTH_FAILURE_RETENTION),
        instances_unseen_before: now.minus(limits.instance_retention),
        renamed_before: now.minus(limits.rename_cooldown),
        peer_activity_before: rate_window,
        // A sender may ask about expired mail as long as delivered mail stays in its history.
        expired_receipts_before: now.minus(limits.history_retention),
    }
}

fn remove_files(files: &[String]) {
    for file in files {
        if let Err(e) = std::fs::remove_file(file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove purged large-message file {file}: {e}");
            }
        }
    }
}

fn add(total: &mut SweepReport, report: SweepReport) {
    total.sessions += report.sessions;
    total.forwards += report.forwards;
    total.future_mail += report.future_mail;
    total.delivered_mail += report.delivered_mail;
    total.nonces += report.nonces;
    total.request_log += report.request_log;
    total.auth_failures += report.auth_failures;
    total.files_to_remove.extend(report.files_to_remove);
    total.instances += report.instances;
    total.peer_activity += report.peer_activity;
    total.orphan_files += report.orphan_files;
    total.expired_receipts += report.expired_receipts;
}
