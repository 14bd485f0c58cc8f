-- Receipts for the sender: the `sent` action reports what became of a caller's mail.

-- When the message was first handed out (leased by a manual-ack check, or held by a legacy
-- check while its reply is on the way); set by the same UPDATE that leases or holds it, and
-- kept when a lease runs out and the message is handed out again.
ALTER TABLE messages ADD COLUMN read_at TEXT;

-- Who sent it, by the sender's current name: a rename moves it along, so mail sent as `alice`
-- is still reported to her as `alicia`. `sender` keeps the name it was sent under, which is
-- what its recipient sees. NULL for the broker's own notices, and once the sender's instance
-- is removed (so a later holder of the name is not shown its mail), and for mail imported
-- from the Python original, which was sent through that broker rather than this one.
ALTER TABLE messages ADD COLUMN sent_by TEXT;
UPDATE messages SET sent_by = sender
WHERE kind <> 'system'
  AND id NOT IN (SELECT message_id FROM legacy_imports
                 WHERE kind = 'message' AND message_id IS NOT NULL);

-- A sender's mail, newest first, for `sent`.
CREATE INDEX messages_by_sent_by ON messages (sent_by, id) WHERE sent_by IS NOT NULL;

-- Mail the sweeper removed undelivered because its time ran out (nobody registered the name
-- it was sent to), so `sent` can say `expired` instead of nothing. One row per removed
-- message, under the message's id; kept as long as delivered mail, then swept.
CREATE TABLE expired_mail (
    id             INTEGER PRIMARY KEY,
    sent_by        TEXT NOT NULL,
    addressed_to   TEXT NOT NULL,
    recipient      TEXT NOT NULL,
    kind           TEXT NOT NULL,
    sent_at        TEXT NOT NULL,
    read_at        TEXT,
    -- When a channel-mode MCP server first pushed it into a live session, if it did.
    pushed_at      TEXT,
    delivery_count INTEGER NOT NULL,
    expired_at     TEXT NOT NULL
);
CREATE INDEX expired_mail_by_sent_by ON expired_mail (sent_by, id);
CREATE INDEX expired_mail_expired_at ON expired_mail (expired_at);
