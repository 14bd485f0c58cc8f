-- Conversations: threads, replies and subjects, and who may read a message later (history,
-- threads, search).

-- The thread a message belongs to, by the id of the message that started it. NULL for a
-- message that starts a thread (its own id is its thread's), so only replies need the index
-- below; read it as `coalesce(thread_id, id)`. A broadcast is one thread: its first copy
-- starts it, the other copies carry the first copy's id.
ALTER TABLE messages ADD COLUMN thread_id INTEGER;
-- The message this one answers, if it answers one.
ALTER TABLE messages ADD COLUMN reply_to INTEGER;
-- Short text the sender gave; a reply without one carries its parent's.
ALTER TABLE messages ADD COLUMN subject TEXT;

-- Who received it, by the recipient's current name, as `sent_by` is for the sender: a rename
-- moves it along (delivered mail too, which `recipient` leaves under the old name), and
-- removing the instance sets it NULL, so a later holder of the name is not shown its mail.
-- Every read of past mail (thread, history, search) shows a caller only the messages whose
-- `sent_by` or `received_by` is its name.
ALTER TABLE messages ADD COLUMN received_by TEXT;
-- Existing mail: waiting mail belongs to the name it waits for; delivered mail only where its
-- recipient is still registered under that name (delivered mail stayed under the name it was
-- delivered to, so after a rename it is not attached to whoever holds the old name now).
UPDATE messages SET received_by = recipient
WHERE delivered_at IS NULL OR recipient IN (SELECT name FROM instances);

-- A thread's replies, in order.
CREATE INDEX messages_by_thread ON messages (thread_id, id) WHERE thread_id IS NOT NULL;
-- A recipient's mail, newest first, for history and for the visibility test.
CREATE INDEX messages_by_received_by ON messages (received_by, id) WHERE received_by IS NOT NULL;
