-- Manual acknowledgements. A `check` with "ack": "manual" leases the mail it returns until
-- `leased_until` instead of marking it delivered. An `ack` settles it (sets `delivered_at`);
-- a lease that runs out makes the message deliverable again. `delivery_count` counts every
-- hand-out, so a message that comes back after a lease shows 2.
ALTER TABLE messages ADD COLUMN leased_until TEXT;

-- The earliest lease to run out for a recipient, for waking a long-poll when mail comes back.
CREATE INDEX messages_leased_by_recipient ON messages (recipient, leased_until)
    WHERE delivered_at IS NULL AND leased_until IS NOT NULL;

-- Mail not yet delivered, oldest first, with whether its recipient has registered and whether
-- a manual-ack reader holds it right now.
DROP VIEW pending_mail;
CREATE VIEW pending_mail AS
SELECT m.id, m.recipient, m.sender, m.addressed_to, m.kind, m.received_at,
       substr(m.content, 1, 80) AS content_start,
       m.large_file,
       i.name IS NOT NULL AS recipient_registered,
       m.delivery_count,
       m.leased_until
FROM messages m
LEFT JOIN instances i ON i.name = m.recipient
WHERE m.delivered_at IS NULL
ORDER BY m.id;

-- Mail handed out to a manual-ack reader and not yet acknowledged.
CREATE VIEW leased_mail AS
SELECT id, recipient, sender, received_at, delivery_count, leased_until,
       leased_until <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now') AS lease_expired
FROM messages
WHERE delivered_at IS NULL AND leased_until IS NOT NULL
ORDER BY id;
