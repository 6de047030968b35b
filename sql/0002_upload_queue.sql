-- The upload queue as a robust work queue: heartbeats on running tasks, and fast
-- lookup of the tasks that depend on one (to drop them when it fails for good, and to
-- re-queue them on retry). Only waiting and dropped tasks are ever looked up by
-- prerequisite, so the index covers only those: claiming and completing a task (both
-- non-HOT updates) then add no GIN entries.
ALTER TABLE pgmaint.upload_tasks ADD COLUMN heartbeat_at timestamptz;
CREATE INDEX upload_tasks_depends_on ON pgmaint.upload_tasks USING gin (depends_on)
    WHERE state IN ('waiting', 'dropped');
