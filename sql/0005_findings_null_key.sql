-- A finding's row_key is NULL when the row it names has a NULL key. NULL and the
-- empty string are different keys: both can name a row of a table (a unique text key
-- holds at most one '' and, being unique, any number of NULLs). Until now a NULL key
-- was stored as '' and collided with the row whose key is '', so one finding was lost.
--
-- Uniqueness still treats NULL keys as equal (one finding per relation, key and kind
-- for a run's task), so re-applying a file stays a no-op. `UNIQUE NULLS NOT DISTINCT`
-- would say that, but only from PostgreSQL 15; this index works from 14: a NULL key
-- indexes as ('', true), an empty key as ('', false).
--
-- Findings recorded before this migration keep their row_key: an '' among them may
-- have been a NULL key.
ALTER TABLE pgmaint.integrity_findings ALTER COLUMN row_key DROP NOT NULL;

CREATE UNIQUE INDEX integrity_findings_unique_finding ON pgmaint.integrity_findings
    (run_id, task_name, relation, (row_key IS NULL), coalesce(row_key, ''), finding);

-- The old constraint UNIQUE (run_id, task_name, relation, row_key, finding), under
-- whatever name PostgreSQL gave it.
DO $$
DECLARE
    c name;
BEGIN
    FOR c IN
        SELECT con.conname
          FROM pg_constraint con
         WHERE con.conrelid = 'pgmaint.integrity_findings'::regclass
           AND con.contype = 'u'
           AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
                  FROM unnest(con.conkey) k JOIN pg_attribute a
                    ON a.attrelid = con.conrelid AND a.attnum = k)
               = ARRAY['finding', 'relation', 'row_key', 'run_id', 'task_name']
    LOOP
        EXECUTE format('ALTER TABLE pgmaint.integrity_findings DROP CONSTRAINT %I', c);
    END LOOP;
END
$$;
