-- `pgmaint daemon`: the scheduler's leader lease, the outcome of each scheduled slot,
-- and the host whose results.dir holds an upload's files.

-- Only one daemon schedules at a time: the holder of this row while expires_at is in
-- the future (server time, so daemons' clocks need not agree). Renewed by heartbeat,
-- deleted on a clean shutdown, taken over by another daemon once it expired.
CREATE TABLE pgmaint.leader (
    name        text        PRIMARY KEY,          -- 'scheduler'
    holder      text        NOT NULL,             -- host:pid of the daemon
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

-- How a claimed slot ended (NULL while it runs, or when the daemon died in it).
ALTER TABLE pgmaint.task_slots
    ADD COLUMN finished_at      timestamptz,
    ADD COLUMN result           text CHECK (result IN ('succeeded', 'failed')),
    ADD COLUMN error            text,
    ADD COLUMN findings         bigint,
    ADD COLUMN duration_seconds double precision;

-- The host (results.host) whose results.dir holds the task's files; a worker claims
-- only its own host's tasks. NULL: results.shared, any worker may claim it.
ALTER TABLE pgmaint.upload_tasks ADD COLUMN host text;
