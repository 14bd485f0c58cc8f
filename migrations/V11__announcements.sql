-- Announcements: which undelivered mail a `watch` has told each watcher about, so the same
-- mail is never announced to one watcher twice (a waking hook that told a session about a
-- message does not wake it for that message again; a channel-mode MCP server pushes each
-- message once per MCP session). An announcement consumes nothing: the mail stays waiting
-- until a `check` or an `ack` settles it.
--
-- `watcher` is the name the caller gave (a Claude Code session_id, or a random id per MCP
-- server session); `push` is 1 when the caller pushed the content into a live session.
-- Keyed by the message first, so removing a message finds its announcements by the key.
CREATE TABLE announcements (
    watcher      TEXT NOT NULL,
    message_id   INTEGER NOT NULL,
    announced_at TEXT NOT NULL,
    push         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, watcher)
) WITHOUT ROWID;

-- When a `watch` with `push` first announced the message: pushed into a live session, which
-- is not delivery (`delivered_at` stays NULL until the reader's `check` or `ack`).
ALTER TABLE messages ADD COLUMN pushed_at TEXT;

-- A removed message (swept once delivered, expired, or a reaped instance's notice) takes its
-- announcements with it, whichever statement removed it.
CREATE TRIGGER announcements_go_with_their_message AFTER DELETE ON messages
BEGIN
    DELETE FROM announcements WHERE message_id = old.id;
END;
