-- What the coordinator wrote: the data file's MD5 and size, kept on the primary with
-- the task. The uploader checks the file it streams against these as well as against
-- the manifest, so rewriting a data file together with its manifest is still refused.
-- NULL for tasks queued before this migration (checked against the manifest only).
ALTER TABLE pgmaint.upload_tasks
    ADD COLUMN file_md5  text   CHECK (file_md5 ~ '^[0-9a-f]{32}$'),
    ADD COLUMN file_size bigint CHECK (file_size >= 0);
