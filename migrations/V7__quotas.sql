-- Limits a caller cannot escape by making names, a bounded large-message directory, and
-- authentication failures that cost the broker a counter rather than a row each.

-- The size of the large-message file a message refers to, in bytes, so the caps on
-- large-messages/ are summed from stored mail instead of by reading the directory. Broadcast
-- copies share one file and each carry its size; a file is counted once. NULL for inline mail
-- (and for files written before this migration, which are not counted).
ALTER TABLE messages ADD COLUMN large_file_bytes INTEGER;

-- Every stored large file by its sender, for the per-sender and total caps. Holds only rows
-- with a file, so it stays as small as the caps keep large-messages/.
CREATE INDEX messages_large_file_by_sender ON messages (sender, large_file, large_file_bytes)
    WHERE large_file IS NOT NULL;

-- One row per counted event of a peer (the local user when known, else the address without
-- its port), for limits summed over every name the peer uses: `request` (an authenticated
-- request, any name), `register` (a registration that created a new name). Kept for the
-- sliding minute, then pruned like request_log.
CREATE TABLE peer_activity (
    kind     TEXT NOT NULL,
    peer_key TEXT NOT NULL,
    at       TEXT NOT NULL
);
CREATE INDEX peer_activity_by_peer ON peer_activity (kind, peer_key, at);
CREATE INDEX peer_activity_by_kind ON peer_activity (kind, at);
CREATE INDEX peer_activity_at ON peer_activity (at);

-- Authentication failures are aggregated: one row per peer key, claimed name, reason and
-- minute, with how many failures it stands for, so reconnecting (a new port) or failing again
-- does not make a new row. `peer` keeps the address of the row's first failure, for people.
-- Older rows stand for one failure each.
ALTER TABLE auth_failures ADD COLUMN failures INTEGER NOT NULL DEFAULT 1;
-- What per-peer limits count under: the peer's user when known, else its address without the
-- port. NULL for older rows.
ALTER TABLE auth_failures ADD COLUMN peer_key TEXT;
-- The minute the row aggregates (`at` truncated to the minute); NULL for older rows.
ALTER TABLE auth_failures ADD COLUMN minute TEXT;
-- The latest failure the row counts; `at` is the first.
ALTER TABLE auth_failures ADD COLUMN last_at TEXT;
CREATE INDEX auth_failures_by_peer_minute ON auth_failures (peer_key, minute);

-- Authentication failures in the last 24 hours, with how many each row stands for.
DROP VIEW recent_auth_failures;
CREATE VIEW recent_auth_failures AS
SELECT at, coalesce(last_at, at) AS last_at, failures, instance_name, peer, reason
FROM auth_failures
WHERE coalesce(last_at, at) > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day')
ORDER BY at DESC;
