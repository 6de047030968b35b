-- The upload queue as a robust work queue: heartbeats on running tasks, and fast
-- lookup of the tasks that depend on one (to drop them when it fails for good).
ALTER TABLE pgmaint.upload_tasks ADD COLUMN heartbeat_at timestamptz;
CREATE INDEX upload_tasks_depends_on ON pgmaint.upload_tasks USING gin (depends_on);
