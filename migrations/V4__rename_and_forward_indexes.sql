-- Indexes behind the statements that still read a whole table (see docs/QUERY_PLANS.md).

-- A rename moves every session of the old name, revoked ones too; the V1 index holds only
-- active sessions, so without this the rename reads every session.
CREATE INDEX sessions_by_instance ON sessions (instance_name);

-- A rename re-points forwards that led to the old name.
CREATE INDEX name_forwards_by_new_name ON name_forwards (new_name);

-- The sweeper drops forwards that have expired.
CREATE INDEX name_forwards_expires_at ON name_forwards (expires_at);
