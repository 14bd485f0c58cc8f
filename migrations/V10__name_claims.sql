-- A name in use is not taken silently, and no name passes for another by letter case.

-- Who replaced a session: set, with `revoked_at`, when a `register` of the same name (legacy,
-- or asked to take over) replaced it; the peer key of that registration (`uid:1000`, or the
-- address without its port), never a token. The replaced session's next request is told so.
-- A session revoked by hand (an operator's UPDATE) keeps it NULL and is simply invalid.
-- Replaced rows are swept once idle past the session expiry, and only the newest few of each
-- name are kept.
ALTER TABLE sessions ADD COLUMN replaced_by TEXT;

-- Registering or renaming to `Alice` while `alice` exists is refused: this finds the
-- case-variant without reading every instance. Names are ASCII, which NOCASE folds exactly.
CREATE INDEX instances_name_nocase ON instances (name COLLATE NOCASE);
