-- Whether this data directory is protected by a shared secret, so that a broker started
-- without it (or with another one) refuses to serve the mail here instead of silently running
-- in open mode. One row at most; no row means the directory was never protected.
--
-- The secret itself is never stored: only a random salt and
-- HMAC-SHA256(key = secret, "claude-ipc data-dir verifier v1" || salt), both as lowercase hex.
CREATE TABLE data_dir_security (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    -- 'secret': a broker needs the secret the verifier was made from; 'open': a start with
    -- `serve --reset-secret` and no secret put the directory back in open mode.
    mode     TEXT NOT NULL CHECK (mode IN ('secret', 'open')),
    -- NULL in open mode.
    salt     TEXT,
    verifier TEXT,
    -- When this mode was set, by the broker's clock.
    set_at   TEXT NOT NULL,
    CHECK ((mode = 'secret') = (salt IS NOT NULL AND verifier IS NOT NULL))
);
