-- The search index is written once per commit, not once per message.
--
-- FTS5 writes its pending words to disk whenever a savepoint or a statement opens inside the
-- transaction, so that a rollback to it can drop only what came after. The broker runs each job
-- of a group commit in its own savepoint, and an INSERT with triggers opens a statement
-- savepoint of its own: with V15's trigger indexing every row as it was inserted, every message
-- became its own index segment, and FTS5 merged those segments again and again (two thirds of
-- a send's instructions, docs/PERFORMANCE.md).
--
-- Now an inserted message is only queued in `search_pending`, inside the job's savepoint (so a
-- job rolled back leaves no queued id behind). Right before each commit, outside every job's
-- savepoint, the writer indexes the whole queue in one statement and empties it
-- (`store::search::index_pending`): the index is still written in the same transaction as the
-- send it indexes, and no commit ever leaves a queued id behind. The legacy import does the same
-- before its own commit, and the broker at start indexes whatever another writer (say an
-- operator's `sqlite3`) left queued.
--
-- A queued message is not in the index yet, so the update and delete triggers must not tell FTS5
-- to remove its old words (in external-content mode that would corrupt the index): an update
-- needs nothing, since the queue is indexed from the row's values at commit; a delete just
-- leaves the queue.

CREATE TABLE search_pending (
    message_id INTEGER PRIMARY KEY
);

DROP TRIGGER search_index_after_insert;
CREATE TRIGGER search_index_after_insert AFTER INSERT ON messages BEGIN
    INSERT INTO search_pending (message_id) VALUES (new.id);
END;

DROP TRIGGER search_index_after_delete;
CREATE TRIGGER search_index_after_delete AFTER DELETE ON messages BEGIN
    INSERT INTO search_index (search_index, rowid, subject, content, parties)
    SELECT 'delete', old.id, old.subject, old.content,
           CASE WHEN old.sent_by IS NULL THEN '' ELSE 'v' || hex(old.sent_by) || ' s' || hex(old.sent_by) END
           || CASE WHEN old.received_by IS NULL THEN '' ELSE ' v' || hex(old.received_by) || ' r' || hex(old.received_by) END
           || ' t' || coalesce(old.thread_id, old.id)
    WHERE NOT EXISTS (SELECT 1 FROM search_pending WHERE message_id = old.id);
    DELETE FROM search_pending WHERE message_id = old.id;
END;

DROP TRIGGER search_index_after_update;
CREATE TRIGGER search_index_after_update
AFTER UPDATE OF subject, content, sent_by, received_by, thread_id ON messages
WHEN (old.subject IS NOT new.subject OR old.content IS NOT new.content
  OR old.sent_by IS NOT new.sent_by OR old.received_by IS NOT new.received_by
  OR old.thread_id IS NOT new.thread_id)
  AND NOT EXISTS (SELECT 1 FROM search_pending WHERE message_id = old.id)
BEGIN
    INSERT INTO search_index (search_index, rowid, subject, content, parties)
    VALUES ('delete', old.id, old.subject, old.content,
            CASE WHEN old.sent_by IS NULL THEN '' ELSE 'v' || hex(old.sent_by) || ' s' || hex(old.sent_by) END
            || CASE WHEN old.received_by IS NULL THEN '' ELSE ' v' || hex(old.received_by) || ' r' || hex(old.received_by) END
            || ' t' || coalesce(old.thread_id, old.id));
    INSERT INTO search_index (rowid, subject, content, parties)
    SELECT id, subject, content, parties FROM search_source WHERE id = new.id;
END;
