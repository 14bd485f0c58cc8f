-- Full-text search (`search`): an FTS5 index over each message's subject and content.
--
-- External content: the text stays only in `messages`; the index reads it back through the view
-- `search_source` when it needs it (snippets, a rebuild). Triggers keep the index in step with
-- every statement that adds, changes or removes mail, inside that statement's transaction, so a
-- send and its index entry commit together and mail removed by the sweeper, by retention or by
-- hand leaves the index with it.
--
-- What is searchable: the subject and the stored `content`. For a large message that is the
-- summary the broker stores in the row; the full text in its file under large-messages/ is not
-- indexed.
--
-- Tokenizer: unicode61 with diacritics removed (`café` matches `cafe`), case folded; words are
-- runs of letters and digits, everything else separates them. No stemming: `deploy` does not
-- match `deployed`, a prefix `deploy*` does.
--
-- The third column, `parties`, is for the broker's own filters, never for a client's words (the
-- broker confines a client's query to subject and content): one token per fact a filter needs,
-- each the hex of a name so that no name can split into several tokens or look like another's.
--   v<hex name>  the sender (by sent_by) and the recipient (by received_by): who may see it
--   s<hex name>  sent_by, for the `from` filter
--   r<hex name>  received_by, for the `to` filter
--   t<id>        the thread (coalesce(thread_id, id)), for the `thread_id` filter
-- A rename moves sent_by and received_by, so it re-indexes the renamed instance's mail; the
-- sweeper's removal of an instance (received_by and sent_by set NULL) drops its tokens.

CREATE VIEW search_source AS
SELECT id, subject, content,
       CASE WHEN sent_by IS NULL THEN '' ELSE 'v' || hex(sent_by) || ' s' || hex(sent_by) END
       || CASE WHEN received_by IS NULL THEN '' ELSE ' v' || hex(received_by) || ' r' || hex(received_by) END
       || ' t' || coalesce(thread_id, id) AS parties
FROM messages;

CREATE VIRTUAL TABLE search_index USING fts5(
    subject, content, parties,
    content = 'search_source', content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2',
    -- Prefix queries of 2 and 3 characters (the shortest allowed, and the ones that match the
    -- most words) read one list each instead of merging every word they expand to.
    prefix = '2 3'
);

CREATE TRIGGER search_index_after_insert AFTER INSERT ON messages BEGIN
    INSERT INTO search_index (rowid, subject, content, parties)
    SELECT id, subject, content, parties FROM search_source WHERE id = new.id;
END;

-- In external-content mode a delete must be told the values that were indexed: `old.*` with the
-- view's expression for `parties`.
CREATE TRIGGER search_index_after_delete AFTER DELETE ON messages BEGIN
    INSERT INTO search_index (search_index, rowid, subject, content, parties)
    VALUES ('delete', old.id, old.subject, old.content,
            CASE WHEN old.sent_by IS NULL THEN '' ELSE 'v' || hex(old.sent_by) || ' s' || hex(old.sent_by) END
            || CASE WHEN old.received_by IS NULL THEN '' ELSE ' v' || hex(old.received_by) || ' r' || hex(old.received_by) END
            || ' t' || coalesce(old.thread_id, old.id));
END;

CREATE TRIGGER search_index_after_update
AFTER UPDATE OF subject, content, sent_by, received_by, thread_id ON messages
WHEN old.subject IS NOT new.subject OR old.content IS NOT new.content
  OR old.sent_by IS NOT new.sent_by OR old.received_by IS NOT new.received_by
  OR old.thread_id IS NOT new.thread_id
BEGIN
    INSERT INTO search_index (search_index, rowid, subject, content, parties)
    VALUES ('delete', old.id, old.subject, old.content,
            CASE WHEN old.sent_by IS NULL THEN '' ELSE 'v' || hex(old.sent_by) || ' s' || hex(old.sent_by) END
            || CASE WHEN old.received_by IS NULL THEN '' ELSE ' v' || hex(old.received_by) || ' r' || hex(old.received_by) END
            || ' t' || coalesce(old.thread_id, old.id));
    INSERT INTO search_index (rowid, subject, content, parties)
    SELECT id, subject, content, parties FROM search_source WHERE id = new.id;
END;

-- The mail stored before this migration.
INSERT INTO search_index (search_index) VALUES ('rebuild');
