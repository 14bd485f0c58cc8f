-- Views for operators reading conversations with the sqlite3 shell: one row per thread, and
-- one row per pair of instances that exchanged mail. The broker never reads them.
--
-- Names are the instances' current names where the broker still knows them (`sent_by`,
-- `received_by` follow renames), else the names the mail was sent under (`sender`,
-- `recipient`), so a conversation stays one row across a rename. The broker's own notices
-- (kind 'system') are not conversations and are left out.
--
-- Written for the sqlite3 shell of older systems too (3.40): no ORDER BY inside an
-- aggregate. A view the shell cannot parse would make it refuse the whole database.

-- One row per thread: its first message's id, its subject (the first one given in it), when
-- it started and last moved, how many messages it holds, and who took part.
CREATE VIEW threads AS
WITH threaded AS (
    SELECT coalesce(thread_id, id) AS thread_id, id, subject, received_at,
           coalesce(sent_by, sender) AS from_name,
           coalesce(received_by, recipient) AS to_name
    FROM messages
    WHERE kind <> 'system'
),
summary AS (
    SELECT thread_id, min(received_at) AS started_at, max(received_at) AS last_at,
           count(*) AS message_count
    FROM threaded
    GROUP BY thread_id
),
-- With one min() in the query, SQLite takes the bare `subject` from the row holding it.
subjects AS (
    SELECT thread_id, min(id) AS first_with_subject, subject
    FROM threaded
    WHERE subject IS NOT NULL
    GROUP BY thread_id
),
people AS (
    SELECT thread_id, group_concat(name, ', ') AS participants
    FROM (SELECT thread_id, from_name AS name FROM threaded
          UNION
          SELECT thread_id, to_name FROM threaded
          ORDER BY 1, 2)
    GROUP BY thread_id
)
SELECT s.thread_id, j.subject, s.started_at, s.last_at, s.message_count, p.participants
FROM summary s
LEFT JOIN subjects j ON j.thread_id = s.thread_id
JOIN people p ON p.thread_id = s.thread_id;

-- One row per unordered pair of instances (`instance_a` sorts before `instance_b`; a message
-- to oneself is a pair of one name): how much they said to each other, and when.
CREATE VIEW conversations AS
WITH pairs AS (
    SELECT min(from_name, to_name) AS instance_a, max(from_name, to_name) AS instance_b,
           received_at
    FROM (SELECT coalesce(sent_by, sender) AS from_name,
                 coalesce(received_by, recipient) AS to_name, received_at
          FROM messages
          WHERE kind <> 'system')
)
SELECT instance_a, instance_b, count(*) AS message_count, min(received_at) AS first_at,
       max(received_at) AS last_at
FROM pairs
GROUP BY instance_a, instance_b;
