-- The findings that hold now: per task, those of its latest valid run that are not
-- known to be fixed.
--
-- A task's latest valid run is the succeeded run (runs.state = 'succeeded': paused,
-- snapshot verified, uploads queued) whose findings upload for that task completed,
-- with the newest snapshot (runs.snapshot_lsn, then the run id). A findings task
-- writes its file and queues its upload even when it found nothing, so a latest run
-- that found nothing is the latest valid run, and the task has no current findings.
-- A run does not count for a task until its upload completed (the findings of the
-- run before stay current until then), nor when the task failed in it (nothing was
-- queued), nor when its upload failed or was cancelled or dropped.
--
-- still_holds IS NOT FALSE: a finding the uploader's re-check on the primary found
-- fixed after the snapshot (false) is left out; one that still holds (true) or was
-- not re-checked (NULL: amcheck, file_checksum) is shown.
CREATE VIEW pgmaint.current_findings AS
WITH latest AS (
    SELECT DISTINCT ON (u.task_name) u.task_name, u.run_id
      FROM pgmaint.upload_tasks u
      JOIN pgmaint.runs r ON r.id = u.run_id
     WHERE u.apply_kind = 'findings'
       AND u.state = 'completed'
       AND r.state = 'succeeded'
     ORDER BY u.task_name, r.snapshot_lsn DESC NULLS LAST, r.id DESC
)
SELECT f.task_name, f.run_id, f.snapshot_lsn, f.relation, f.row_key, f.finding,
       f.detail, f.still_holds, f.uploaded_at
  FROM latest l
  JOIN pgmaint.integrity_findings f ON f.run_id = l.run_id AND f.task_name = l.task_name
 WHERE f.still_holds IS NOT FALSE;
