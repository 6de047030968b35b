-- Failovers pgmaint performed (`pgmaint promote`), written on the new primary right
-- after the promotion. A server of the same system on an older timeline than a
-- recorded promotion is a former primary: pgmaint never treats it as the primary
-- again (it is fenced), even if it comes back and accepts writes.
CREATE TABLE pgmaint.promotions (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    replica           text        NOT NULL,           -- the replica promoted (its config name)
    system_identifier bigint      NOT NULL,
    old_timeline      integer     NOT NULL,
    new_timeline      integer     NOT NULL CHECK (new_timeline > old_timeline),
    -- Where the new timeline branched off: WAL past it on the old timeline no longer
    -- exists in the new history.
    switch_lsn        pg_lsn      NOT NULL,
    old_primary       text,                           -- host:port of the former primary, as configured
    forced            boolean     NOT NULL DEFAULT false,
    promoted_at       timestamptz NOT NULL DEFAULT now()
);
