-- What `claude-ipc import-legacy` brought over from the Python original's messages.db, so that
-- importing the same database again (or a copy of it) imports nothing twice.
-- V2 is left to the lease columns; versions need not be contiguous.

-- One row per imported legacy row. A row is known by a fingerprint of its own content, not by
-- the file it came from: a copy or a moved file is recognised, and the original may keep
-- running (only its read_flag changes) without its mail being imported again.
CREATE TABLE legacy_imports (
    -- 'message', 'instance' or 'forward'.
    kind        TEXT NOT NULL,
    -- Lowercase hex SHA-256 over the legacy row's identifying columns (see docs/OPERATIONS.md).
    fingerprint TEXT NOT NULL,
    -- The legacy row's own key, for people: messages.id, instances.instance_id or
    -- name_history.old_name.
    legacy_key  TEXT NOT NULL,
    -- The file imported from, for people; not part of the key.
    source      TEXT NOT NULL,
    -- For kind 'message': the id the message got here.
    message_id  INTEGER,
    imported_at TEXT NOT NULL,
    PRIMARY KEY (kind, fingerprint)
);
