-- Which snapshot each task put into each target. Several tasks may merge into one
-- target (different rows each); the newer snapshot of one must not supersede another.
ALTER TABLE pgmaint.materializations
    DROP CONSTRAINT materializations_pkey,
    ADD PRIMARY KEY (target, task_name);
