-- The first schema. Shipped migrations are never edited: add V2__… instead.
-- Every time is UTC text like 2026-11-24T20:53:45.123Z, so text comparison is time order.

-- One row per registered name. A rename changes `name` in place.
CREATE TABLE instances (
    name            TEXT PRIMARY KEY,
    registered_at   TEXT NOT NULL,
    last_seen_at    TEXT NOT NULL,
    -- The rename cooldown counts from here; NULL if the instance never renamed.
    last_renamed_at TEXT
);

-- Proof of identity. Only the SHA-256 of each token is kept; the token itself never is.
CREATE TABLE sessions (
    id            INTEGER PRIMARY KEY,
    instance_name TEXT NOT NULL,
    token_sha256  TEXT NOT NULL UNIQUE,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT NOT NULL,
    -- Set when the instance registers again (one active session per instance).
    revoked_at    TEXT
);
CREATE INDEX sessions_active_by_instance ON sessions (instance_name) WHERE revoked_at IS NULL;

-- Every message, queued or delivered. `recipient` follows renames; `addressed_to` keeps the
-- name the sender used.
CREATE TABLE messages (
    id               INTEGER PRIMARY KEY,
    sender           TEXT NOT NULL,
    addressed_to     TEXT NOT NULL,
    recipient        TEXT NOT NULL,
    -- 'direct', 'broadcast' or 'system' (rename notices).
    kind             TEXT NOT NULL DEFAULT 'direct',
    content          TEXT NOT NULL,
    -- The JSON object the sender gave as `message.data`, or NULL.
    data             TEXT,
    -- For content stored in a file under large-messages/.
    large_file       TEXT,
    nonce            TEXT,
    sender_timestamp TEXT,
    received_at      TEXT NOT NULL,
    delivered_at     TEXT,
    delivery_count   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX messages_pending_by_recipient ON messages (recipient, id) WHERE delivered_at IS NULL;
CREATE INDEX messages_delivered_at ON messages (delivered_at) WHERE delivered_at IS NOT NULL;
CREATE INDEX messages_pending_received_at ON messages (received_at) WHERE delivered_at IS NULL;
CREATE INDEX messages_large_file ON messages (large_file) WHERE large_file IS NOT NULL;

-- Nonces seen from each sender inside the replay window, for duplicate detection.
CREATE TABLE send_nonces (
    sender     TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    seen_at    TEXT NOT NULL,
    PRIMARY KEY (sender, nonce)
);
CREATE INDEX send_nonces_seen_at ON send_nonces (seen_at);

-- After a rename, mail to the old name goes to the new one until `expires_at`.
CREATE TABLE name_forwards (
    old_name   TEXT PRIMARY KEY,
    new_name   TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

-- One row per accepted request, for the per-instance rate limit's sliding window.
CREATE TABLE request_log (
    instance_name TEXT NOT NULL,
    at            TEXT NOT NULL
);
CREATE INDEX request_log_by_instance ON request_log (instance_name, at);
CREATE INDEX request_log_at ON request_log (at);

-- Failed registrations (bad shared secret) and requests with a bad session token.
CREATE TABLE auth_failures (
    id            INTEGER PRIMARY KEY,
    at            TEXT NOT NULL,
    -- The name claimed, when the request named one.
    instance_name TEXT,
    peer          TEXT NOT NULL,
    reason        TEXT NOT NULL
);
CREATE INDEX auth_failures_at ON auth_failures (at);

-- One row per broker start: which process, where, which version.
CREATE TABLE broker_runs (
    id         INTEGER PRIMARY KEY,
    pid        INTEGER NOT NULL,
    version    TEXT NOT NULL,
    addr       TEXT NOT NULL,
    started_at TEXT NOT NULL,
    stopped_at TEXT
);

-- Views for people using the sqlite3 shell.

-- Mail not yet delivered, oldest first, with whether its recipient has registered.
CREATE VIEW pending_mail AS
SELECT m.id, m.recipient, m.sender, m.addressed_to, m.kind, m.received_at,
       substr(m.content, 1, 80) AS content_start,
       m.large_file,
       i.name IS NOT NULL AS recipient_registered
FROM messages m
LEFT JOIN instances i ON i.name = m.recipient
WHERE m.delivered_at IS NULL
ORDER BY m.id;

-- How much mail waits for each name.
CREATE VIEW pending_by_recipient AS
SELECT m.recipient,
       count(*) AS waiting,
       min(m.received_at) AS oldest,
       max(m.received_at) AS newest,
       i.name IS NOT NULL AS registered
FROM messages m
LEFT JOIN instances i ON i.name = m.recipient
WHERE m.delivered_at IS NULL
GROUP BY m.recipient;

-- Who is registered, with their session's activity (never the token hash).
CREATE VIEW instance_overview AS
SELECT i.name, i.registered_at, i.last_seen_at, i.last_renamed_at,
       s.created_at AS session_created_at, s.last_used_at AS session_last_used_at,
       (SELECT count(*) FROM messages m
         WHERE m.recipient = i.name AND m.delivered_at IS NULL) AS waiting
FROM instances i
LEFT JOIN sessions s ON s.instance_name = i.name AND s.revoked_at IS NULL
ORDER BY i.name;

-- Forwards that still redirect mail.
CREATE VIEW live_forwards AS
SELECT old_name, new_name, created_at, expires_at
FROM name_forwards
WHERE expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now');

-- Authentication failures in the last 24 hours.
CREATE VIEW recent_auth_failures AS
SELECT at, instance_name, peer, reason
FROM auth_failures
WHERE at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day')
ORDER BY at DESC;
