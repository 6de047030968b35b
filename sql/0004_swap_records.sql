-- Tables a swap renamed away, recorded in the swap's own transaction, by OID. The
-- uploader drops such a table after the swap commits (or, if that failed or the worker
-- died first, after a later swap), and only while the recorded OID still has the
-- recorded name: a user's table is never dropped for being named like one of these.
CREATE TABLE pgmaint.swapped_out (
    relid          oid         PRIMARY KEY,
    schema_name    text        NOT NULL,
    table_name     text        NOT NULL,
    upload_task_id bigint      NOT NULL,
    run_id         bigint      NOT NULL,
    swapped_at     timestamptz NOT NULL DEFAULT now()
);

-- Which snapshot each task put into each target. Several tasks may merge into one
-- target (different rows each); the newer snapshot of one must not supersede another.
ALTER TABLE pgmaint.materializations
    DROP CONSTRAINT materializations_pkey,
    ADD PRIMARY KEY (target, task_name);
