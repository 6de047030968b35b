-- pgmaint's own schema on the primary. It replicates like any other table, so a
-- promoted replica already holds the runs, the leases and the upload queue.
CREATE SCHEMA IF NOT EXISTS pgmaint;

-- One row per coordinator cycle (`pgmaint run`, `pgmaint dump`).
CREATE TABLE pgmaint.runs (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    replica             text        NOT NULL,
    purpose             text        NOT NULL DEFAULT 'run' CHECK (purpose IN ('run', 'dump')),
    state               text        NOT NULL DEFAULT 'running'
                        CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled',
                                         'aborted', 'invalid', 'dropped')),
    holder              text        NOT NULL,          -- host:pid of the coordinator
    tasks               text[]      NOT NULL DEFAULT '{}',
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    -- Set *before* pg_wal_replay_pause() is called: from then on this run may own a pause.
    pause_requested_at  timestamptz,
    paused_at           timestamptz,                   -- pause confirmed ('paused')
    resumed_at          timestamptz,
    snapshot_lsn        pg_lsn,
    timeline            integer,
    system_identifier   bigint,
    -- pg_postmaster_start_time() of the replica when the pause was requested. A pause
    -- does not survive a restart, so a different start time means the pause is not ours.
    replica_started_at  timestamptz,
    backlog_at_resume   bigint,                        -- bytes, receive LSN - replay LSN
    results_dir         text,
    error               text
);
CREATE INDEX runs_replica_state ON pgmaint.runs (replica, state);

-- One coordinator per replica. A run holds this row and renews it by heartbeat; a row
-- whose expires_at has passed belongs to a dead run that any pgmaint command recovers.
CREATE TABLE pgmaint.replica_leases (
    replica     text        PRIMARY KEY,
    run_id      bigint      NOT NULL REFERENCES pgmaint.runs (id),
    holder      text        NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

-- The upload queue: short tasks that apply a run's results on the primary.
CREATE TABLE pgmaint.upload_tasks (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           bigint      NOT NULL REFERENCES pgmaint.runs (id),
    task_name        text        NOT NULL,
    apply_kind       text        NOT NULL CHECK (apply_kind IN ('findings', 'swap', 'merge')),
    target           text,                             -- table the apply writes, when not fixed by kind
    file             text        NOT NULL,             -- data file, relative to results.dir
    manifest         text        NOT NULL,             -- manifest.json, relative to results.dir
    params           jsonb       NOT NULL DEFAULT '{}',
    state            text        NOT NULL DEFAULT 'waiting'
                     CHECK (state IN ('waiting', 'running', 'completed', 'failed', 'cancelled', 'dropped')),
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    not_before       timestamptz NOT NULL DEFAULT now(),
    depends_on       bigint[]    NOT NULL DEFAULT '{}',
    worker           text,
    lease_expires_at timestamptz,
    cancel_requested boolean     NOT NULL DEFAULT false,
    rows_applied     bigint,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    UNIQUE (run_id, task_name)
);
CREATE INDEX upload_tasks_waiting ON pgmaint.upload_tasks (not_before, id) WHERE state = 'waiting';
CREATE INDEX upload_tasks_running ON pgmaint.upload_tasks (lease_expires_at) WHERE state = 'running';

-- Integrity findings (row checksums, file checksums, amcheck), as uploaded.
CREATE TABLE pgmaint.integrity_findings (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id       bigint      NOT NULL REFERENCES pgmaint.runs (id),
    task_name    text        NOT NULL,
    snapshot_lsn pg_lsn      NOT NULL,
    relation     text        NOT NULL,
    row_key      text        NOT NULL,
    finding      text        NOT NULL,
    detail       text,
    uploaded_at  timestamptz NOT NULL DEFAULT now(),
    -- Re-checked on the primary at upload time: false means fixed after the snapshot.
    still_holds  boolean,
    UNIQUE (run_id, task_name, relation, row_key, finding)
);

-- Cursors of tasks that cover a large store over several runs (file_checksum's
-- files_per_run). Written in the same transaction that queues the run's uploads, so a
-- cursor only moves for a valid run.
CREATE TABLE pgmaint.task_cursors (
    task_name  text        PRIMARY KEY,
    cursor     text        NOT NULL,
    run_id     bigint      NOT NULL REFERENCES pgmaint.runs (id),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Which snapshot each materialized target reflects (written by the swap apply).
CREATE TABLE pgmaint.materializations (
    target       text        PRIMARY KEY,
    run_id       bigint      NOT NULL REFERENCES pgmaint.runs (id),
    task_name    text        NOT NULL,
    snapshot_lsn pg_lsn      NOT NULL,
    rows         bigint      NOT NULL,
    swapped_at   timestamptz NOT NULL DEFAULT now()
);
