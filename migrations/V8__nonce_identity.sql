-- Replay protection belongs to the sender's identity, not to its name. Keyed by name, a nonce
-- was lost when its sender renamed (a retry after a rename was stored twice) and was inherited
-- by whoever registered the name next (their message was dropped as a "duplicate" and the
-- earlier holder's message id was shown to them).
--
-- An identity begins with each `register`: whoever registers a name, again or for the first
-- time, gets a new one, because nothing else tells two holders of a name apart. The session
-- carries it through every rename of its own.

-- The identity a session speaks for. Sessions made before this migration each had their own.
ALTER TABLE sessions ADD COLUMN identity_id INTEGER;
UPDATE sessions SET identity_id = id;

-- The last identity handed out. A counter rather than max(identity_id) + 1, so an identity
-- whose sessions were swept is never handed out again while its nonces may still be kept.
CREATE TABLE identity_sequence (
    last_id INTEGER NOT NULL
);
INSERT INTO identity_sequence (last_id) SELECT coalesce(max(id), 0) FROM sessions;

-- Nonces seen from each identity inside the replay window. `sender` is the name the identity
-- had when it used the nonce, for people; duplicates are found by identity and nonce.
CREATE TABLE send_nonces_by_identity (
    identity_id INTEGER NOT NULL,
    nonce       TEXT NOT NULL,
    sender      TEXT NOT NULL,
    message_id  INTEGER NOT NULL,
    seen_at     TEXT NOT NULL,
    PRIMARY KEY (identity_id, nonce)
);
-- A nonce kept from before goes to the identity that holds its sender's name now.
INSERT OR IGNORE INTO send_nonces_by_identity (identity_id, nonce, sender, message_id, seen_at)
SELECT s.identity_id, n.nonce, n.sender, n.message_id, n.seen_at
FROM send_nonces n
JOIN sessions s ON s.instance_name = n.sender AND s.revoked_at IS NULL;
DROP TABLE send_nonces;
ALTER TABLE send_nonces_by_identity RENAME TO send_nonces;
CREATE INDEX send_nonces_seen_at ON send_nonces (seen_at);
