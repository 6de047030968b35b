-- Scheduled slots (groundwork for `pgmaint daemon`): a task's run for one scheduled
-- time is claimed here, in one transaction, under the unique (task, slot) key, so that
-- neither a restart nor a second daemon runs a slot twice. The last slot of a task is
-- its newest row, and survives a restart of the daemon.
CREATE TABLE pgmaint.task_slots (
    task_name  text        NOT NULL,
    slot       timestamptz NOT NULL,
    claimed_by text        NOT NULL,                  -- host:pid of the daemon
    claimed_at timestamptz NOT NULL DEFAULT now(),
    run_id     bigint      REFERENCES pgmaint.runs (id),
    PRIMARY KEY (task_name, slot)
);
