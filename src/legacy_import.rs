//! Importing the Python original's `messages.db`: its unread mail, its instances and its name
//! forwards that are still live. Sessions are not imported: users register again.
//!
//! The rules, and why:
//! - **Times.** The original wrote naive local time (`datetime.now().isoformat()`). Each is
//!   read in this machine's time zone and stored as UTC text. A time that names an offset is
//!   converted from that offset. An unreadable time becomes the import time (the mail is kept).
//! - **Renames.** The original moved a renamed instance's queue in memory but left its rows
//!   addressed to the old name. Mail follows a rename made after it was sent (it moved with
//!   the queue) or less than the forward window before (the forward sent it on); an instance
//!   row follows a rename the same way (the original kept the old row, and its forward won
//!   over it). So such mail reaches the new name, as it would have here.
//! - **Once only.** Each imported row is recorded in `legacy_imports` under a fingerprint of its
//!   own content (see [`message_fingerprint`]); a second run, from the same file or a copy,
//!   imports nothing new.
//! - **Short transactions.** Instances and forwards go in one transaction, mail in batches of
//!   [`BATCH`]; each transaction is safe to run again, and none holds the write lock long
//!   enough to stall a running broker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::clock;
use crate::domain::{MessageKind, Timestamp, SYSTEM_SENDER};
use crate::protocol::InstanceName;
use crate::store::legacy::{ImportTarget, LegacyMessage, LegacyRename, LegacySource};
use crate::store::queries::{MessageId, NewMessage};
use crate::store::{StoreError, Tx};

/// Messages per write transaction: small enough that a running broker never waits long for the
/// write lock, large enough that the fsync per commit is not the whole cost.
pub const BATCH: u32 = 500;

/// How long a write waits for the broker's writer to let go of the database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Renames are followed at most this many steps, so a loop in the history cannot hang.
const MAX_RENAME_CHAIN: usize = 32;

/// What to import, where to, and the rules that depend on time.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The original's `messages.db`.
    pub source: PathBuf,
    /// This broker's `ipc.db` (created if missing).
    pub database: PathBuf,
    /// How long the original's renames forwarded mail (2 hours).
    pub forward_duration: Duration,
    pub now: DateTime<Utc>,
}

/// What an import did. Every legacy row is counted in exactly one of these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Unread messages imported.
    pub messages: u64,
    /// Instances registered here.
    pub instances: u64,
    /// Live forwards added.
    pub forwards: u64,
    /// Messages the original had already delivered (`read_flag = 1`); never imported.
    pub skipped_read: u64,
    /// Messages, instances and forwards a previous import already brought over.
    pub already_imported: u64,
    /// Instances already registered here under that name (this broker's record is kept).
    pub instances_present: u64,
    /// Forwards that have expired, that point nowhere, or whose old name is registered again.
    pub forwards_not_live: u64,
    /// Messages or instances whose name this broker cannot accept (not 1-32 letters, digits,
    /// `-` or `_`); they are left out.
    pub invalid_names: u64,
    /// Messages whose time could not be read; they were given the import time.
    pub unreadable_times: u64,
    /// Large messages whose file is no longer on disk; imported with the path as it was.
    pub missing_large_files: u64,
}

impl ImportReport {
    /// One line for people: what was imported, then what was skipped and why.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "imported {} message{}, {} instance{}, {} forward{}",
            self.messages,
            plural(self.messages),
            self.instances,
            plural(self.instances),
            self.forwards,
            plural(self.forwards)
        );
        let count = |n: u64, noun: &str| format!("{n} {noun}{}", plural(n));
        let notes = [
            (self.skipped_read > 0)
                .then(|| format!("skipped {}", count(self.skipped_read, "read message"))),
            (self.already_imported > 0)
                .then(|| format!("{} already imported", self.already_imported)),
            (self.instances_present > 0).then(|| {
                format!(
                    "{} already registered here",
                    count(self.instances_present, "instance")
                )
            }),
            (self.forwards_not_live > 0).then(|| {
                format!(
                    "{} no longer live",
                    count(self.forwards_not_live, "forward")
                )
            }),
            (self.invalid_names > 0).then(|| {
                format!(
                    "{} with a name this broker refuses",
                    count(self.invalid_names, "row")
                )
            }),
            (self.unreadable_times > 0).then(|| {
                format!(
                    "{} with an unreadable time (given the import time)",
                    count(self.unreadable_times, "message")
                )
            }),
            (self.missing_large_files > 0).then(|| {
                format!(
                    "{} missing",
                    count(self.missing_large_files, "large-message file")
                )
            }),
        ];
        let notes: Vec<String> = notes.into_iter().flatten().collect();
        if !notes.is_empty() {
            line.push_str("; ");
            line.push_str(&notes.join(", "));
        }
        line
    }
}

fn plural(count: u64) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

/// How far an import has come, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Unread messages looked at so far.
    pub done: u64,
    /// Unread messages in the file.
    pub total: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {reason}; pass the original's database, usually ~/.claude-ipc-data/messages.db")]
    Source { path: PathBuf, reason: String },
    #[error("{path} is not the Python original's messages.db: {reason}; pass the original's database, usually ~/.claude-ipc-data/messages.db")]
    NotLegacy { path: PathBuf, reason: String },
    #[error("{path} is this broker's own database; pass the original's messages.db instead")]
    SameDatabase { path: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing to {path} failed: {reason}. The batch that failed was rolled back and earlier ones are recorded, so running the import again is safe")]
    Write { path: PathBuf, reason: String },
}

/// Runs the import. `progress` is called after each batch of mail.
pub fn import(
    options: &ImportOptions,
    mut progress: impl FnMut(Progress),
) -> Result<ImportReport, ImportError> {
    refuse_own_database(options)?;
    let source = open_source(&options.source)?;
    let mut target = ImportTarget::open(&options.database, BUSY_TIMEOUT)?;
    let write_failed = |e: StoreError| ImportError::Write {
        path: options.database.clone(),
        reason: sqlite_reason(e),
    };
    let read_failed = |e: StoreError| ImportError::Source {
        path: options.source.clone(),
        reason: sqlite_reason(e),
    };
    let renames = source.renames().map_err(read_failed)?;
    let importer = Importer {
        renames: Renames::from_rows(&renames),
        source_label: std::fs::canonicalize(&options.source)
            .unwrap_or_else(|_| options.source.clone())
            .display()
            .to_string(),
        options,
        now: Timestamp::new(options.now),
    };
    let mut report = ImportReport {
        skipped_read: source.count_read().map_err(read_failed)?,
        ..ImportReport::default()
    };
    let instances = source.instances().map_err(read_failed)?;
    target
        .in_transaction(|tx| {
            importer.instances(tx, &instances, &mut report)?;
            importer.forwards(tx, &renames, &mut report)
        })
        .map_err(write_failed)?;
    let total = source.count_unread().map_err(read_failed)?;
    let mut done = 0;
    let mut after = i64::MIN;
    loop {
        let batch = source.unread_after(after, BATCH).map_err(read_failed)?;
        let Some(last) = batch.last() else { break };
        after = last.id;
        target
            .in_transaction(|tx| {
                batch
                    .iter()
                    .try_for_each(|message| importer.message(tx, message, &mut report))
            })
            .map_err(write_failed)?;
        done += batch.len() as u64;
        progress(Progress { done, total });
    }
    Ok(report)
}

/// What SQLite said, as these errors have always put it (without the store's own prefix).
fn sqlite_reason(error: StoreError) -> String {
    match error {
        StoreError::Sqlite(sqlite) => sqlite.to_string(),
        other => other.to_string(),
    }
}

/// Opens the legacy file read-only and checks that it has the original's schema.
fn open_source(path: &Path) -> Result<LegacySource, ImportError> {
    let fail = |reason: String| ImportError::Source {
        path: path.to_owned(),
        reason,
    };
    if !path.is_file() {
        return Err(fail("there is no such file".into()));
    }
    let source = LegacySource::open(path, BUSY_TIMEOUT).map_err(|e| fail(sqlite_reason(e)))?;
    match source.schema_problem() {
        Ok(None) => Ok(source),
        Ok(Some(reason)) => Err(ImportError::NotLegacy {
            path: path.to_owned(),
            reason,
        }),
        Err(e) => Err(ImportError::NotLegacy {
            path: path.to_owned(),
            reason: sqlite_reason(e),
        }),
    }
}

fn refuse_own_database(options: &ImportOptions) -> Result<(), ImportError> {
    let source = std::fs::canonicalize(&options.source).ok();
    let target = std::fs::canonicalize(&options.database).ok();
    if source.is_some() && source == target {
        return Err(ImportError::SameDatabase {
            path: options.source.clone(),
        });
    }
    Ok(())
}

/// The parts of an import that do not change from row to row.
struct Importer<'a> {
    options: &'a ImportOptions,
    renames: Renames,
    source_label: String,
    now: Timestamp,
}

impl Importer<'_> {
    /// How long a rename forwarded mail.
    fn window(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.options.forward_duration)
            .unwrap_or(chrono::Duration::days(365))
    }

    fn instances(
        &self,
        tx: &Tx<'_>,
        rows: &[(String, String)],
        report: &mut ImportReport,
    ) -> Result<(), StoreError> {
        for (legacy_name, last_seen) in rows {
            let fingerprint = fingerprint(&json!(["instance", legacy_name]));
            if tx.already_imported("instance", &fingerprint)? {
                report.already_imported += 1;
                continue;
            }
            let seen = legacy_time(last_seen).unwrap_or(self.options.now);
            // The original kept a renamed instance's old row, and its forward won over that
            // row while it lived; an instance seen after its forward ended is a new holder of
            // the name and keeps it.
            let name = self.renames.current_name(legacy_name, seen, self.window());
            let Some(name) = acceptable_name(&name) else {
                report.invalid_names += 1;
                continue;
            };
            if tx.insert_instance(&name, Timestamp::new(seen))? {
                report.instances += 1;
            } else {
                report.instances_present += 1;
            }
            self.record(tx, "instance", &fingerprint, legacy_name, None)?;
        }
        Ok(())
    }

    fn forwards(
        &self,
        tx: &Tx<'_>,
        rows: &[LegacyRename],
        report: &mut ImportReport,
    ) -> Result<(), StoreError> {
        for rename in rows {
            let fingerprint = fingerprint(&json!([
                "forward",
                rename.old_name,
                rename.new_name,
                rename.changed_at
            ]));
            if tx.already_imported("forward", &fingerprint)? {
                report.already_imported += 1;
                continue;
            }
            match self.live_forward(tx, rename)? {
                Some((old_name, new_name, created, expires)) => {
                    if tx.insert_forward(&old_name, &new_name, created, expires)? {
                        report.forwards += 1;
                    } else {
                        report.forwards_not_live += 1;
                    }
                    self.record(tx, "forward", &fingerprint, &rename.old_name, None)?;
                }
                // Not recorded: an expired forward stays expired, and one whose time cannot be
                // read is never live, so a second run skips it the same way.
                None => report.forwards_not_live += 1,
            }
        }
        Ok(())
    }

    /// A legacy rename's forward (from, to, created, expires) if it is live: inside the
    /// forward window, pointing at another valid name, and with its old name not registered
    /// again.
    fn live_forward(
        &self,
        tx: &Tx<'_>,
        rename: &LegacyRename,
    ) -> Result<Option<(InstanceName, InstanceName, Timestamp, Timestamp)>, StoreError> {
        let Some(changed_at) = legacy_time(&rename.changed_at) else {
            return Ok(None);
        };
        let expires = changed_at + self.window();
        if expires <= self.options.now {
            return Ok(None);
        }
        let new_name = self
            .renames
            .current_name(&rename.new_name, changed_at, self.window());
        let (Some(old_name), Some(new_name)) = (
            acceptable_name(&rename.old_name),
            acceptable_name(&new_name),
        ) else {
            return Ok(None);
        };
        if new_name == old_name || tx.instance_exists(&old_name)? {
            return Ok(None);
        }
        Ok(Some((
            old_name,
            new_name,
            Timestamp::new(changed_at),
            Timestamp::new(expires),
        )))
    }

    fn message(
        &self,
        tx: &Tx<'_>,
        message: &LegacyMessage,
        report: &mut ImportReport,
    ) -> Result<(), StoreError> {
        let fingerprint = message_fingerprint(message);
        if tx.already_imported("message", &fingerprint)? {
            report.already_imported += 1;
            return Ok(());
        }
        let received = legacy_time(&message.timestamp);
        let received = received.unwrap_or_else(|| {
            report.unreadable_times += 1;
            self.options.now
        });
        let recipient = self
            .renames
            .current_name(&message.to_id, received, self.window());
        let (Some(recipient), Some(addressed_to)) =
            (acceptable_name(&recipient), acceptable_name(&message.to_id))
        else {
            report.invalid_names += 1;
            return Ok(());
        };
        let large_file = message
            .large_file_path
            .as_deref()
            .filter(|path| !path.trim().is_empty());
        let data = imported_data(message.data.as_deref(), large_file);
        if large_file.is_some_and(|path| !Path::new(path).is_file()) {
            report.missing_large_files += 1;
        }
        let id = tx.insert_message(&NewMessage {
            sender: &message.from_id,
            // Sent through the original, not through this broker: its sender has no
            // receipt for it here.
            sent_by: None,
            addressed_to: &addressed_to,
            recipient: &recipient,
            // The original stored a broadcast as one ordinary row per recipient, with
            // nothing to tell it apart, so every imported message is direct.
            kind: MessageKind::Direct,
            content: &message.content,
            data: data.as_deref(),
            large_file: large_file.filter(|path| is_large_message_path(path)),
            // The original's files were written by it, not by this broker's senders, so
            // they are left out of the large-message caps.
            large_file_bytes: None,
            nonce: None,
            sender_timestamp: None,
            received_at: Timestamp::new(received),
            thread_id: None,
            reply_to: None,
            subject: None,
        })?;
        report.messages += 1;
        self.record(
            tx,
            "message",
            &fingerprint,
            &message.id.to_string(),
            Some(id),
        )
    }

    fn record(
        &self,
        tx: &Tx<'_>,
        kind: &str,
        fingerprint: &str,
        legacy_key: &str,
        message_id: Option<MessageId>,
    ) -> Result<(), StoreError> {
        tx.record_import(
            kind,
            fingerprint,
            legacy_key,
            &self.source_label,
            message_id,
            self.now,
        )
    }
}

/// `name` as an instance name, if this broker accepts it for one: the name rule, and not the
/// name reserved for broker notices.
fn acceptable_name(name: &str) -> Option<InstanceName> {
    InstanceName::parse(name).filter(|_| name != SYSTEM_SENDER)
}

/// The original's renames: old name → (new name, when).
struct Renames(HashMap<String, (String, DateTime<Utc>)>);

impl Renames {
    /// Renames whose time cannot be read are left out: they cannot be ordered.
    fn from_rows(rows: &[LegacyRename]) -> Renames {
        let map = rows
            .iter()
            .filter_map(|rename| {
                let at = legacy_time(&rename.changed_at)?;
                Some((rename.old_name.clone(), (rename.new_name.clone(), at)))
            })
            .collect();
        Renames(map)
    }

    /// The name something addressed to `name` at `since` belongs to now. It follows a rename
    /// made after `since` (it moved with the renamed queue) or less than `window` before it
    /// (the forward sent it on), then the renames of the new name in the same way.
    fn current_name(&self, name: &str, since: DateTime<Utc>, window: chrono::Duration) -> String {
        let mut current = name.to_owned();
        let mut at = since;
        for _ in 0..MAX_RENAME_CHAIN {
            match self.0.get(&current) {
                Some((new_name, changed_at)) if at < *changed_at + window => {
                    current = new_name.clone();
                    at = at.max(*changed_at);
                }
                _ => break,
            }
        }
        current
    }
}

/// A legacy time as UTC, reading a naive time in this machine's zone.
pub fn legacy_time(text: &str) -> Option<DateTime<Utc>> {
    legacy_time_in(text, &Local)
}

/// A legacy time as UTC, reading a naive time in `zone`. Accepts what the original wrote
/// (`2026-01-02T03:04:05.123456`, or without the fraction when it was zero), the same with a
/// space for the `T`, and any of those with an offset or `Z`.
///
/// A naive time that a clock change made ambiguous is read as its first occurrence; one that
/// falls in a gap (clocks went forward) is read as if the clock had already changed.
pub fn legacy_time_in<Tz: TimeZone>(text: &str, zone: &Tz) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Some(at) = clock::parse(&text.replacen(' ', "T", 1)) {
        return Some(at);
    }
    let naive = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())?;
    let local = zone.from_local_datetime(&naive).earliest().or_else(|| {
        zone.from_local_datetime(&(naive + chrono::Duration::hours(1)))
            .earliest()
    })?;
    Some(local.with_timezone(&Utc))
}

/// The fingerprint that identifies a legacy message: SHA-256 over its id and every column the
/// original never changes after writing (only `read_flag` changes). A copy of the file, or the
/// file moved, gives the same fingerprints; a different database's message with the same id
/// does not.
pub fn message_fingerprint(message: &LegacyMessage) -> String {
    fingerprint(&json!([
        "message",
        message.id,
        message.from_id,
        message.to_id,
        message.timestamp,
        message.content,
        message.data,
        message.large_file_path
    ]))
}

/// Hex SHA-256 of a JSON array: JSON keeps the fields apart, so no two rows share a text.
fn fingerprint(fields: &Value) -> String {
    let digest = Sha256::digest(fields.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `data` to store for a legacy message. A JSON object is kept as it was; anything else
/// the original held is kept under `legacy_data`. A large message's data names its file
/// (`large_message_file`) and size (`original_size_kb`), adding them when the original did not.
pub fn imported_data(data: Option<&str>, large_file: Option<&str>) -> Option<String> {
    let given = match data.map(str::trim).filter(|d| !d.is_empty()) {
        None => None,
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(object)) => Some(object),
            Ok(Value::Null) => None,
            Ok(other) => Some(Map::from_iter([("legacy_data".to_owned(), other)])),
            Err(_) => Some(Map::from_iter([(
                "legacy_data".to_owned(),
                Value::from(text),
            )])),
        },
    };
    // No data and no file: nothing (an empty object the original stored is kept as one).
    if given.is_none() && large_file.is_none() {
        return None;
    }
    let mut object = given.unwrap_or_default();
    if let Some(path) = large_file {
        object
            .entry("large_message_file")
            .or_insert_with(|| Value::from(path));
        if !object.contains_key("original_size_kb") {
            if let Ok(metadata) = std::fs::metadata(path) {
                let size_kb = (metadata.len() as f64 / 1024.0 * 10.0).round() / 10.0;
                object.insert("original_size_kb".into(), size_kb.into());
            }
        }
    }
    Some(Value::Object(object).to_string())
}

/// Whether a legacy large-message path is one the sweeper may delete with its mail: only files
/// inside a `large-messages` directory, where the original wrote them. Any other path stays in
/// the message's data for the reader but is never deleted by this broker.
fn is_large_message_path(path: &str) -> bool {
    Path::new(path)
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|dir| dir == "large-messages")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    fn utc(text: &str) -> DateTime<Utc> {
        clock::parse(text).unwrap()
    }

    #[test]
    fn naive_times_are_read_in_the_given_zone() {
        let plus_three = FixedOffset::east_opt(3 * 3600).unwrap();
        assert_eq!(
            legacy_time_in("2026-03-04T10:20:30.123456", &plus_three),
            Some(utc("2026-03-04T07:20:30.123456Z"))
        );
        assert_eq!(
            legacy_time_in("2026-03-04T10:20:30", &plus_three),
            Some(utc("2026-03-04T07:20:30Z"))
        );
        assert_eq!(
            legacy_time_in("2026-03-04 10:20:30.5", &plus_three),
            Some(utc("2026-03-04T07:20:30.5Z"))
        );
    }

    #[test]
    fn times_with_an_offset_keep_it() {
        let plus_three = FixedOffset::east_opt(3 * 3600).unwrap();
        assert_eq!(
            legacy_time_in("2026-03-04T10:20:30+01:00", &plus_three),
            Some(utc("2026-03-04T09:20:30Z"))
        );
        assert_eq!(
            legacy_time_in("2026-03-04 10:20:30Z", &plus_three),
            Some(utc("2026-03-04T10:20:30Z"))
        );
        assert_eq!(legacy_time_in("yesterday", &plus_three), None);
    }

    #[test]
    fn renames_move_what_was_addressed_before_them_or_inside_the_window() {
        let renames = Renames::from_rows(&[
            LegacyRename {
                old_name: "bob".into(),
                new_name: "robert".into(),
                changed_at: "2026-01-01T10:00:00Z".into(),
            },
            LegacyRename {
                old_name: "robert".into(),
                new_name: "rob".into(),
                changed_at: "2026-01-01T12:00:00Z".into(),
            },
        ]);
        let two_hours = chrono::Duration::hours(2);
        let none = chrono::Duration::zero();
        let name = |name, at, window| renames.current_name(name, utc(at), window);
        assert_eq!(name("bob", "2026-01-01T09:00:00Z", none), "rob");
        assert_eq!(name("bob", "2026-01-01T11:00:00Z", none), "bob");
        assert_eq!(name("bob", "2026-01-01T11:00:00Z", two_hours), "rob");
        assert_eq!(name("bob", "2026-01-01T12:30:00Z", two_hours), "bob");
        assert_eq!(name("robert", "2026-01-01T13:00:00Z", two_hours), "rob");
        assert_eq!(name("alice", "2026-01-01T09:00:00Z", two_hours), "alice");
    }

    #[test]
    fn a_rename_loop_does_not_hang() {
        let at = "2026-01-01T10:00:00Z".to_owned();
        let renames = Renames::from_rows(&[
            LegacyRename {
                old_name: "a".into(),
                new_name: "b".into(),
                changed_at: at.clone(),
            },
            LegacyRename {
                old_name: "b".into(),
                new_name: "a".into(),
                changed_at: at,
            },
        ]);
        let name =
            renames.current_name("a", utc("2026-01-01T09:00:00Z"), chrono::Duration::hours(2));
        assert!(name == "a" || name == "b");
    }

    #[test]
    fn data_objects_are_kept_and_other_values_wrapped() {
        assert_eq!(imported_data(None, None), None);
        assert_eq!(imported_data(Some("null"), None), None);
        assert_eq!(imported_data(Some("{}"), None).as_deref(), Some("{}"));
        assert_eq!(
            imported_data(Some(r#"{"b": 2, "a": [1]}"#), None).as_deref(),
            Some(r#"{"a":[1],"b":2}"#)
        );
        assert_eq!(
            imported_data(Some("[1,2]"), None).as_deref(),
            Some(r#"{"legacy_data":[1,2]}"#)
        );
        assert_eq!(
            imported_data(Some("not json"), None).as_deref(),
            Some(r#"{"legacy_data":"not json"}"#)
        );
    }

    #[test]
    fn large_messages_name_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("large-messages").join("m.md");
        std::fs::create_dir(file.parent().unwrap()).unwrap();
        std::fs::write(&file, vec![b'x'; 2048]).unwrap();
        let path = file.to_str().unwrap();
        let data: Value = serde_json::from_str(&imported_data(None, Some(path)).unwrap()).unwrap();
        assert_eq!(data["large_message_file"], path);
        assert_eq!(data["original_size_kb"], 2.0);
        let given = format!(r#"{{"large_message_file": "{path}", "original_size_kb": 12.5}}"#);
        let data: Value =
            serde_json::from_str(&imported_data(Some(&given), Some(path)).unwrap()).unwrap();
        assert_eq!(
            data["original_size_kb"], 12.5,
            "the original's size is kept"
        );
        assert!(is_large_message_path(path));
        assert!(!is_large_message_path("/etc/passwd"));
    }

    #[test]
    fn summary_names_what_was_imported_and_skipped() {
        let report = ImportReport {
            messages: 12,
            instances: 3,
            forwards: 1,
            skipped_read: 4,
            already_imported: 12,
            ..ImportReport::default()
        };
        assert_eq!(
            report.summary(),
            "imported 12 messages, 3 instances, 1 forward; skipped 4 read messages, 12 already imported"
        );
    }
}
