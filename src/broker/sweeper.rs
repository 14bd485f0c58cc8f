//! Expiry and purging: idle sessions, old forwards, undelivered future mail past its
//! retention, delivered mail past its retention (with its large-message file), stale nonces,
//! rate-limit rows (per instance and per peer), authentication failures older than 30 days,
//! and instances nobody has used for the instance retention (no live session, no waiting mail
//! but rename notices, no live forward to them). Each pass deletes in
//! bounded batches, one short job at a time, so sends queued behind it wait for one small
//! batch at most.

use super::{minus, text, Broker, BrokerError};
use crate::store::queries::{self, SweepCutoffs, SweepReport, SweepTables};

/// Rows one sweep job may delete per table.
const SWEEP_BATCH: u32 = 500;
/// Authentication failures are kept this long for operators, then dropped.
const AUTH_FAILURE_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

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
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    async fn sweep_batch(&self, tables: SweepTables) -> Result<SweepReport, BrokerError> {
        let now = self.now();
        let limits = &self.limits;
        let cutoffs = [
            text(now),
            text(minus(now, limits.session_idle_expiry)),
            text(minus(now, limits.future_mail_retention)),
            text(minus(now, limits.delivered_retention)),
            text(minus(now, limits.replay_window)),
            text(minus(now, std::time::Duration::from_secs(60))),
            text(minus(now, AUTH_FAILURE_RETENTION)),
            text(minus(now, limits.instance_retention)),
            text(minus(now, limits.rename_cooldown)),
        ];
        self.run(move |conn| {
            let cut = SweepCutoffs {
                now: &cutoffs[0],
                session_idle_before: &cutoffs[1],
                future_mail_before: &cutoffs[2],
                delivered_before: &cutoffs[3],
                nonces_before: &cutoffs[4],
                request_log_before: &cutoffs[5],
                auth_failures_before: &cutoffs[6],
                instances_unseen_before: &cutoffs[7],
                renamed_before: &cutoffs[8],
                peer_activity_before: &cutoffs[5],
            };
            Ok(queries::sweep(conn, &cut, tables, SWEEP_BATCH)?)
        })
        .await
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
}
