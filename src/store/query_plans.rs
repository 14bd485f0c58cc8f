//! Keeps every statement on a hot path behind an index: runs `EXPLAIN QUERY PLAN` on the real
//! SQL (the `const`s in `queries`) against a freshly migrated database file, prints each plan,
//! and fails if one reads every row of a table that grows with use.
//!
//! `cargo test query_plan -- --nocapture` prints the plans; docs/QUERY_PLANS.md shows them.

use rusqlite::types::Null;
use rusqlite::Connection;

use super::conversation::*;
use super::dashboard::*;
use super::history::*;
use super::queries::*;
use super::receipts::*;
use super::search::*;
use super::threads::*;

/// Tables that grow with traffic or with the number of instances.
const HOT_TABLES: [&str; 10] = [
    "announcements",
    "peer_activity",
    "auth_failures",
    "messages",
    "request_log",
    "send_nonces",
    "sessions",
    "instances",
    "name_forwards",
    "expired_mail",
];

/// One statement, the request paths that run it, and the one scan it may make, if any.
struct Hot {
    name: &'static str,
    paths: &'static str,
    sql: &'static str,
    allowed: Option<AllowedScan>,
}

/// A scan a statement makes on purpose: the plan line exactly, and why it is fine.
struct AllowedScan {
    line: &'static str,
    why: &'static str,
}

const fn hot(name: &'static str, paths: &'static str, sql: &'static str) -> Hot {
    Hot {
        name,
        paths,
        sql,
        allowed: None,
    }
}

const fn scans(
    name: &'static str,
    paths: &'static str,
    sql: &'static str,
    line: &'static str,
    why: &'static str,
) -> Hot {
    Hot {
        name,
        paths,
        sql,
        allowed: Some(AllowedScan { line, why }),
    }
}

const AUTH: &str = "every authenticated request";

const STATEMENTS: &[Hot] = &[
    hot("find_session", AUTH, FIND_SESSION),
    hot("requests_since", AUTH, REQUESTS_SINCE),
    hot("forget_old_requests", AUTH, FORGET_OLD_REQUESTS),
    hot("log_request", AUTH, LOG_REQUEST),
    hot("touch_session", AUTH, TOUCH_SESSION),
    hot("touch_instance", AUTH, TOUCH_INSTANCE),
    hot(
        "record_auth_failure",
        "refused request",
        RECORD_AUTH_FAILURE,
    ),
    hot("count_auth_failure", "refused request", COUNT_AUTH_FAILURE),
    hot("trim_auth_failures", "refused request", TRIM_AUTH_FAILURES),
    hot("peer_activity_since", AUTH, PEER_ACTIVITY_SINCE),
    hot("log_peer_activity", AUTH, LOG_PEER_ACTIVITY),
    hot("forget_old_peer_activity", AUTH, FORGET_OLD_PEER_ACTIVITY),
    hot(
        "all_activity_since",
        "register of a new name",
        ALL_ACTIVITY_SINCE,
    ),
    hot(
        "sender_large_file_bytes",
        "send, broadcast (large content)",
        SENDER_LARGE_FILE_BYTES,
    ),
    scans(
        "total_large_file_bytes",
        "send, broadcast (large content)",
        TOTAL_LARGE_FILE_BYTES,
        "SCAN messages USING COVERING INDEX messages_large_file_by_sender",
        "the partial index holds only mail with a large file, which the caps keep few",
    ),
    hot("resolve_forward", "send", RESOLVE_FORWARD),
    hot(
        "forward_known",
        "send to an unregistered name",
        FORWARD_KNOWN,
    ),
    hot("sent_by", "sent", SENT_BY),
    hot("expired_sent_by", "sent", EXPIRED_SENT_BY),
    hot("sent_one", "sent with ids", SENT_ONE),
    hot("expired_one", "sent with ids", EXPIRED_ONE),
    hot("move_sent_mail", "rename", MOVE_SENT_MAIL),
    hot("move_expired_mail", "rename", MOVE_EXPIRED_MAIL),
    hot("forget_sent_mail", "sweeper", FORGET_SENT_MAIL),
    hot("history", "history", HISTORY),
    hot("history_with", "history with a peer", HISTORY_WITH),
    hot("forget_expired_mail", "sweeper", FORGET_EXPIRED_MAIL),
    hot("record_expiry", "sweeper", RECORD_EXPIRY),
    hot("visible_message", "send with reply_to", VISIBLE_MESSAGE),
    hot("search_matches", "search", SEARCH_MATCHES),
    hot("search_snippets", "search (each result)", SEARCH_SNIPPETS),
    hot("visible_count", "search", VISIBLE_COUNT),
    hot("move_received_mail", "rename", MOVE_RECEIVED_MAIL),
    hot("thread_page", "thread", THREAD_PAGE),
    hot("thread_subject", "thread", THREAD_SUBJECT),
    hot("sees_reply_in", "thread", SEES_REPLY_IN),
    hot("sent_by_caller", "check with reply_to", SENT_BY_CALLER),
    hot(
        "available_replies_for",
        "check with reply_to",
        AVAILABLE_REPLIES_FOR,
    ),
    hot("forget_received_mail", "sweeper", FORGET_RECEIVED_MAIL),
    hot("sweep_expired_mail", "sweeper", SWEEP_EXPIRED_MAIL),
    hot("instance_exists", "send, rename", INSTANCE_EXISTS),
    hot("instance_last_seen", "send", INSTANCE_LAST_SEEN),
    hot("find_nonce", "send", FIND_NONCE),
    hot("pending_count", "send, broadcast, register", PENDING_COUNT),
    hot("insert_message", "send, broadcast, rename", INSERT_MESSAGE),
    hot("record_nonce", "send", RECORD_NONCE),
    hot("available_for", "check (every read)", AVAILABLE_FOR),
    hot("leased_count", "count", LEASED_COUNT),
    hot("lease", "check, manual ack", LEASE),
    hot("hold", "check, auto ack", HOLD),
    hot("deliver_held", "check, auto ack", DELIVER_HELD),
    hot("release_held", "check, reader gone", RELEASE_HELD),
    hot("release_owned", "ack with release", RELEASE_OWNED),
    hot("next_lease_expiry", "check (long-poll)", NEXT_LEASE_EXPIRY),
    hot("waiting_senders", "count", WAITING_SENDERS),
    hot("unannounced_for", "watch (every read)", UNANNOUNCED_FOR),
    hot("announce", "watch", ANNOUNCE),
    hot("mark_pushed", "watch with push", MARK_PUSHED),
    hot("unannounce", "watch, reply never read", UNANNOUNCE),
    hot("unmark_pushed", "watch, reply never read", UNMARK_PUSHED),
    hot("ack_owned", "ack", ACK_OWNED),
    hot("ack_settle", "ack", ACK_SETTLE),
    hot("revoke_sessions", "register", REVOKE_SESSIONS),
    hot("forget_old_replaced", "register", FORGET_OLD_REPLACED),
    hot("name_holder", "register", NAME_HOLDER),
    hot("case_variant", "register, rename", CASE_VARIANT),
    hot("upsert_instance", "register", UPSERT_INSTANCE),
    hot("delete_forward", "register, rename", DELETE_FORWARD),
    hot("next_identity", "register", NEXT_IDENTITY),
    hot("insert_session", "register", INSERT_SESSION),
    hot("last_renamed_at", "rename", LAST_RENAMED_AT),
    hot("rename_instance_row", "rename", RENAME_INSTANCE_ROW),
    hot("rename_sessions", "rename", RENAME_SESSIONS),
    hot("end_session", "logout", END_SESSION),
    hot("rename_pending_mail", "rename", RENAME_PENDING_MAIL),
    hot("rename_request_log", "rename", RENAME_REQUEST_LOG),
    hot("rename_forward_targets", "rename", RENAME_FORWARD_TARGETS),
    hot("upsert_forward", "rename", UPSERT_FORWARD),
    hot("list_instances_after", "list", LIST_INSTANCES_AFTER),
    scans(
        "list_instances",
        "broadcast, rename, send to a never-seen name (did_you_mean)",
        LIST_INSTANCES,
        "SCAN instances USING INDEX sqlite_autoindex_instances_1",
        "it returns every instance, in name order",
    ),
    scans(
        "release_leases",
        "start-up",
        RELEASE_LEASES,
        "SCAN messages USING INDEX messages_leased_by_recipient",
        "the partial index holds only leased mail, not the whole queue",
    ),
    hot("record_start", "start-up", RECORD_START),
    hot("record_stop", "shutdown", RECORD_STOP),
    hot("load_clock_anchor", "start-up", LOAD_CLOCK_ANCHOR),
    hot(
        "save_clock_anchor",
        "start-up, sweeper, shutdown",
        SAVE_CLOCK_ANCHOR,
    ),
    scans(
        "sweep_sessions",
        "sweeper",
        SWEEP_SESSIONS,
        "SCAN sessions",
        "one live row per instance; an index on last_used_at would cost every request a write",
    ),
    hot("sweep_forwards", "sweeper", SWEEP_FORWARDS),
    hot("sweep_nonces", "sweeper", SWEEP_NONCES),
    hot("sweep_request_log", "sweeper", SWEEP_REQUEST_LOG),
    hot("sweep_auth_failures", "sweeper", SWEEP_AUTH_FAILURES),
    hot("sweep_peer_activity", "sweeper", SWEEP_PEER_ACTIVITY),
    scans(
        "reapable_instances",
        "sweeper",
        REAPABLE_INSTANCES,
        "SCAN i",
        "once per sweep, over instances only; an index on last_seen_at would cost requests a write",
    ),
    hot("delete_notices_for", "sweeper", DELETE_NOTICES_FOR),
    hot("delete_sessions_of", "sweeper", DELETE_SESSIONS_OF),
    hot("delete_instance", "sweeper", DELETE_INSTANCE),
    hot("sweep_future_mail", "sweeper", SWEEP_FUTURE_MAIL),
    hot("sweep_delivered_mail", "sweeper", SWEEP_DELIVERED_MAIL),
    hot("delete_message", "sweeper", DELETE_MESSAGE),
    hot("large_file_in_use", "sweeper", LARGE_FILE_IN_USE),
    hot("dashboard_newest_mail", "dashboard overview", NEWEST_MAIL),
    hot("dashboard_mail_after", "dashboard live stream", MAIL_AFTER),
    hot("dashboard_mail_state", "dashboard live stream", MAIL_STATE),
    hot("dashboard_thread_mail", "dashboard thread", THREAD_MAIL),
    hot("dashboard_thread_root", "dashboard thread", THREAD_ROOT),
    hot("dashboard_mail_for", "dashboard inbox, agent", MAIL_FOR),
    hot("dashboard_pair_mail", "dashboard pair", PAIR_MAIL),
    hot("dashboard_search_all", "dashboard search", SEARCH_ALL),
    hot("dashboard_one_mail", "dashboard threads", ONE_MAIL),
    hot("dashboard_mail_content", "dashboard content", MAIL_CONTENT),
    hot("dashboard_agents", "dashboard agents", AGENTS),
    hot(
        "dashboard_agent_names",
        "dashboard compose box",
        AGENT_NAMES,
    ),
    hot("dashboard_waiting_for", "dashboard agents", WAITING_FOR),
    hot("dashboard_live_session", "dashboard agents", LIVE_SESSION),
    hot(
        "dashboard_newest_threads",
        "dashboard conversations",
        NEWEST_THREADS,
    ),
    hot(
        "dashboard_thread_newest",
        "dashboard conversations",
        THREAD_NEWEST,
    ),
    hot(
        "dashboard_thread_size",
        "dashboard conversations",
        THREAD_SIZE,
    ),
    scans(
        "dashboard_auth_failures",
        "dashboard broker",
        AUTH_FAILURES,
        "SCAN auth_failures",
        "the table is trimmed to --auth-failure-rows (status reads it the same way)",
    ),
];

/// A migrated database file, opened the way the broker opens it.
fn migrated() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = super::open_side_connection(&dir.path().join("ipc.db")).unwrap();
    (dir, conn)
}

/// The rows of `EXPLAIN …` (or `EXPLAIN QUERY PLAN …`) for `sql`, every parameter NULL.
fn explain<T>(
    conn: &Connection,
    explain: &str,
    sql: &str,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Vec<T> {
    let mut statement = conn
        .prepare(&format!("{explain} {sql}"))
        .unwrap_or_else(|e| panic!("{e} in {sql}"));
    let nulls = vec![Null; statement.parameter_count()];
    statement
        .query_map(rusqlite::params_from_iter(nulls), row)
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// The plan's lines, indented by depth as the sqlite3 shell shows them.
fn plan(conn: &Connection, sql: &str) -> Vec<String> {
    let rows: Vec<(i64, i64, String)> = explain(conn, "EXPLAIN QUERY PLAN", sql, |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(3)?))
    });
    let mut depths: Vec<(i64, usize)> = Vec::new();
    rows.into_iter()
        .map(|(id, parent, detail)| {
            let depth = depths
                .iter()
                .find(|(seen, _)| *seen == parent)
                .map_or(0, |(_, depth)| depth + 1);
            depths.push((id, depth));
            format!("{}{detail}", "  ".repeat(depth))
        })
        .collect()
}

/// Whether a plan line reads a hot table from end to end: any `SCAN` of it (through an index
/// or not: a partial index of waiting mail still holds the whole queue), or a `SEARCH` through
/// an automatic index, which SQLite builds by reading the whole table.
fn is_scan_of_hot_table(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["SCAN", table, ..] => HOT_TABLES.contains(table),
        ["SEARCH", table, ..] => HOT_TABLES.contains(table) && line.contains("AUTOMATIC"),
        _ => false,
    }
}

/// The plan lines of `sql` that scan a hot table.
fn scans_of_hot_tables(conn: &Connection, sql: &str) -> Vec<String> {
    plan(conn, sql)
        .into_iter()
        .map(|line| line.trim().to_owned())
        .filter(|line| is_scan_of_hot_table(line))
        .collect()
}

#[test]
fn query_plans_of_hot_statements_read_no_hot_table_in_full() {
    let (_dir, conn) = migrated();
    let version: String = conn
        .query_row("SELECT sqlite_version()", [], |row| row.get(0))
        .unwrap();
    println!("-- SQLite {version}");
    let mut offenders = Vec::new();
    for statement in STATEMENTS {
        println!("-- {} ({})", statement.name, statement.paths);
        for line in plan(&conn, statement.sql) {
            println!("   {line}");
        }
        let allowed = statement.allowed.as_ref();
        if let Some(allowed) = allowed {
            println!("   (scans on purpose: {})", allowed.why);
        }
        let unexpected: Vec<String> = scans_of_hot_tables(&conn, statement.sql)
            .into_iter()
            .filter(|line| allowed.is_none_or(|allowed| line != allowed.line))
            .collect();
        if !unexpected.is_empty() {
            offenders.push(format!("{}: {unexpected:?}", statement.name));
        }
    }
    assert!(
        offenders.is_empty(),
        "statements on hot paths read a whole table; add an index in a new migration: {offenders:?}"
    );
}

#[test]
fn query_plan_check_catches_a_missing_index() {
    let (_dir, conn) = migrated();
    assert!(scans_of_hot_tables(&conn, AVAILABLE_FOR).is_empty());
    conn.execute_batch("DROP INDEX messages_waiting_by_recipient")
        .unwrap();
    let scans = scans_of_hot_tables(&conn, AVAILABLE_FOR);
    assert!(
        scans.iter().any(|line| line.starts_with("SCAN messages")),
        "{scans:?}"
    );
}

/// Whether running `sql` reads columns from `table`'s rows, rather than only from its indexes.
/// The bytecode (`EXPLAIN`, not `EXPLAIN QUERY PLAN`) tells: a partial index whose WHERE
/// clause answers part of the query is reported as `USING INDEX`, not `USING COVERING INDEX`,
/// even when the rows are never read. The table is opened either way, but read only by a
/// `Column` on its cursor.
fn reads_table_rows(conn: &Connection, sql: &str, table: &str) -> bool {
    let root: i64 = conn
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |row| row.get(0),
        )
        .unwrap();
    let program: Vec<(String, i64, i64)> = explain(conn, "EXPLAIN", sql, |row| {
        Ok((row.get(1)?, row.get(2)?, row.get(3)?))
    });
    let table_cursors: Vec<i64> = program
        .iter()
        .filter(|(opcode, _, page)| opcode == "OpenRead" && *page == root)
        .map(|(_, cursor, _)| *cursor)
        .collect();
    program
        .iter()
        .any(|(opcode, cursor, _)| opcode == "Column" && table_cursors.contains(cursor))
}

/// The statements that count a recipient's waiting mail run on every send (the queue cap) and
/// every `count` poll; reading each waiting message's row made them cost milliseconds per
/// thousand waiting.
const COUNTS_FROM_THE_INDEX: [(&str, &str); 3] = [
    ("pending_count", PENDING_COUNT),
    ("leased_count", LEASED_COUNT),
    ("waiting_senders", WAITING_SENDERS),
];

#[test]
fn query_plans_count_waiting_mail_from_the_index_alone() {
    let (_dir, conn) = migrated();
    for (name, sql) in COUNTS_FROM_THE_INDEX {
        assert!(
            !reads_table_rows(&conn, sql, "messages"),
            "{name} reads the messages table; it should read only messages_waiting_by_recipient"
        );
    }
}

#[test]
fn query_plan_check_sees_a_count_that_reads_the_table() {
    let (_dir, conn) = migrated();
    conn.execute_batch(
        "DROP INDEX messages_waiting_by_recipient;
         CREATE INDEX messages_pending_by_recipient ON messages (recipient, id)
             WHERE delivered_at IS NULL;",
    )
    .unwrap();
    assert!(reads_table_rows(&conn, WAITING_SENDERS, "messages"));
}
