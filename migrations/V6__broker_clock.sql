-- The broker clock's anchor (see src/clock.rs). The broker's rules run on a clock that follows
-- real elapsed time, not the wall clock, so a wall-clock jump neither expires mail nor stretches
-- a window. This one row lets a restart within the same boot resume that clock: its time then
-- is `broker_time` plus the real time since `since_boot_ms`, whatever the wall clock says.
CREATE TABLE broker_clock (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    -- The broker's time at the reading.
    broker_time   TEXT NOT NULL,
    -- /proc/sys/kernel/random/boot_id of the boot the reading belongs to; NULL if unknown.
    boot_id       TEXT,
    -- Milliseconds since that boot (CLOCK_BOOTTIME) at the reading.
    since_boot_ms INTEGER NOT NULL,
    -- What the wall clock said at the reading, for people comparing the two.
    wall_time     TEXT NOT NULL
);
