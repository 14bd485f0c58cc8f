-- Indexes behind the statements that read more than they return (see docs/QUERY_PLANS.md).

-- Waiting mail by recipient, carrying what `check` and `count` test and report. V1's index
-- held only (recipient, id), so counting the mail a check may hand out, or listing its
-- senders, read every waiting message's row from the table: tens of milliseconds for a
-- recipient with 20,000 waiting. This one answers those counts from the index alone and still
-- gives a check its oldest mail first. It replaces the V1 index rather than adding a fourth
-- index that every send would have to update.
CREATE INDEX messages_waiting_by_recipient ON messages (recipient, id, sender, leased_until)
    WHERE delivered_at IS NULL;
DROP INDEX messages_pending_by_recipient;

-- Waiting mail by age, carrying its recipient, for the sweeper: it looks for old mail whose
-- recipient never registered. With V1's index on received_at alone it read the row of every
-- old waiting message to learn its recipient, in every batch, even when none could go.
CREATE INDEX messages_waiting_by_received_at ON messages (received_at, recipient)
    WHERE delivered_at IS NULL;
DROP INDEX messages_pending_received_at;

-- A rename moves every session of the old name, revoked ones too; the V1 index holds only
-- active sessions, so without this the rename reads every session.
CREATE INDEX sessions_by_instance ON sessions (instance_name);

-- A rename re-points forwards that led to the old name.
CREATE INDEX name_forwards_by_new_name ON name_forwards (new_name);

-- The sweeper drops forwards that have expired.
CREATE INDEX name_forwards_expires_at ON name_forwards (expires_at);
