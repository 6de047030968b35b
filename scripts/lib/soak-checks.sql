-- The database-side invariants of scripts/soak.sh, run with psql on the final primary
-- after every daemon stopped. soak.sh's analysis.sql loads, as temporary tables, what
-- the soak recorded, then includes this file:
--   samples      one row per server per second: role, timeline, pause state, upstream,
--                and (out of recovery) a fingerprint of pgmaint's tables (table=md5,…)
--   w, wn        the writer's committed inserts into public.soak_writes: server port,
--                timeline, id and the WAL insert LSN read after the commit (wn: LSN
--                unknown, the session failed after the commit)
--   sup          each former primary found running after it was superseded, dumped
--                before its rejoin; sup_ts every timestamptz value of its pgmaint
--                tables, sup_slots its task_slots, sup_uploads its upload_tasks
-- and sets :planted (the corrupted ids), :lease and :uploader_lease (seconds).
-- Each check prints one `ok` or `VIOLATION` line, then details indented.

-- The final primary's timeline and its ancestry (pg_wal/<tli>.history): each
-- ancestor timeline with the LSN where the next one branched off it.
CREATE TEMP TABLE fin AS
SELECT ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::int AS tli;
CREATE TEMP TABLE anc AS
SELECT a[1]::int AS tli, a[2]::pg_lsn AS switch_lsn
  FROM (SELECT regexp_split_to_array(l, E'\\s+') AS a
          FROM regexp_split_to_table(
                   CASE WHEN (SELECT tli FROM fin) > 1
                        THEN pg_read_file('pg_wal/' || lpad(upper(to_hex((SELECT tli FROM fin))), 8, '0') || '.history')
                        ELSE '' END, E'\n') AS l
         WHERE l ~ '^[0-9]') s
UNION ALL
SELECT tli, NULL FROM fin;

-- When each superseded server's timeline was left: the earliest of the promotion
-- recorded from it and the first sample that saw a primary on a newer timeline.
CREATE TEMP TABLE sw AS
SELECT s.*,
       least((SELECT extract(epoch FROM min(p.promoted_at))::float8 FROM pgmaint.promotions p WHERE p.old_timeline = s.tli),
             (SELECT min(x.t) FROM samples x WHERE x.state = 'primary' AND x.tli > s.tli)) AS switch_t
  FROM sup s;

-- ------------------------------------------------------ slots claimed once ----
-- On the final primary the key is unique. Across servers: a (task, slot) that a
-- superseded server holds with another claim than the final primary's was claimed
-- twice. When the superseded server's claim is older than its switch it was made
-- while that server was the primary and lost with its unreplicated WAL (an async
-- failover, expected: noted); a claim made after the switch is a violation.
WITH dup AS (
    SELECT task_name, slot, count(*) AS n FROM pgmaint.task_slots GROUP BY 1, 2 HAVING count(*) > 1
), cross_server AS (
    SELECT s.node, s.tli, s.task_name, s.slot, s.claimed_by AS old_by, s.claimed_at AS old_at,
           f.claimed_by AS new_by, f.claimed_at AS new_at,
           extract(epoch FROM s.claimed_at) > sw.switch_t AS after_switch
      FROM sup_slots s
      JOIN sw ON sw.node = s.node AND sw.tli = s.tli
      JOIN pgmaint.task_slots f USING (task_name, slot)
     WHERE (f.claimed_by, f.claimed_at) IS DISTINCT FROM (s.claimed_by, s.claimed_at)
), lines AS (
    SELECT 0 AS o, CASE WHEN NOT EXISTS (SELECT FROM dup) AND NOT EXISTS (SELECT FROM cross_server WHERE after_switch IS NOT FALSE)
                        THEN 'ok        slots-claimed-once: ' || (SELECT count(*) FROM pgmaint.task_slots) ||
                             ' slots on the final primary, none twice; ' || (SELECT count(*) FROM sup_slots) ||
                             ' slot rows compared on ' || (SELECT count(*) FROM sup) || ' superseded server copies' ||
                             CASE WHEN EXISTS (SELECT FROM cross_server)
                                  THEN ' (' || (SELECT count(*) FROM cross_server) || ' claimed before the switch, lost with the old primary''s WAL and claimed again: expected)'
                                  ELSE '' END
                        ELSE 'VIOLATION slots-claimed-once: ' || (SELECT count(*) FROM dup) || ' (task, slot) keys twice on the final primary, ' ||
                             (SELECT count(*) FROM cross_server WHERE after_switch IS NOT FALSE) ||
                             ' claimed on a superseded server after its switch and again on the final primary' END AS line
    UNION ALL
    SELECT 1, '    ' || task_name || ' ' || slot || ': ' || n || ' rows' FROM dup
    UNION ALL
    (SELECT 2, '    ' || task_name || ' slot ' || slot || ': on ' || node || ' (timeline ' || tli || ') claimed by ' || old_by ||
               ' at ' || old_at || CASE WHEN after_switch IS NOT FALSE THEN ', after its switch' ELSE ', before its switch (expected)' END ||
               '; on the final primary by ' || new_by || ' at ' || new_at
       FROM cross_server ORDER BY after_switch DESC NULLS FIRST, slot LIMIT 20)
)
SELECT line FROM lines ORDER BY o;

-- ---------------------------------------------------- uploads applied once ----
WITH twice AS (
    SELECT run_id, task_name, count(*) AS n FROM pgmaint.upload_tasks
     WHERE state = 'completed' GROUP BY 1, 2 HAVING count(*) > 1
), dup_findings AS (
    SELECT run_id, task_name, relation, row_key, finding, count(*) AS n FROM pgmaint.integrity_findings
     GROUP BY run_id, task_name, relation, row_key, finding HAVING count(*) > 1
), orphan AS (
    SELECT f.run_id, f.task_name, count(*) AS n, max(u.state) AS state
      FROM pgmaint.integrity_findings f
      LEFT JOIN pgmaint.upload_tasks u ON u.run_id = f.run_id AND u.task_name = f.task_name
     WHERE u.state IS DISTINCT FROM 'completed'
     GROUP BY 1, 2
), miscount AS (
    SELECT u.id, u.run_id, u.task_name, u.rows_applied, count(f.id) AS n
      FROM pgmaint.upload_tasks u
      LEFT JOIN pgmaint.integrity_findings f ON f.run_id = u.run_id AND f.task_name = u.task_name
     WHERE u.state = 'completed' AND u.apply_kind = 'findings'
     GROUP BY u.id HAVING count(f.id) <> coalesce(u.rows_applied, -1)
), on_superseded AS (
    SELECT x.node, x.tli, x.id, x.run_id, x.task_name, x.finished_at, sw.switch_t,
           (SELECT state FROM pgmaint.upload_tasks u WHERE u.run_id = x.run_id AND u.task_name = x.task_name) AS final_state
      FROM sup_uploads x JOIN sw ON sw.node = x.node AND sw.tli = x.tli
     WHERE x.state = 'completed' AND extract(epoch FROM x.finished_at) > sw.switch_t
), lines AS (
    SELECT 0 AS o, CASE WHEN NOT EXISTS (SELECT FROM twice) AND NOT EXISTS (SELECT FROM dup_findings)
                             AND NOT EXISTS (SELECT FROM orphan) AND NOT EXISTS (SELECT FROM miscount)
                             AND NOT EXISTS (SELECT FROM on_superseded)
                        THEN 'ok        uploads-applied-once: ' ||
                             (SELECT count(*) FROM pgmaint.upload_tasks WHERE state = 'completed') || ' uploads completed (' ||
                             (SELECT coalesce(string_agg(state || ' ' || n, ', ' ORDER BY state), 'none')
                                FROM (SELECT state, count(*) AS n FROM pgmaint.upload_tasks GROUP BY state) s) ||
                             '), each once; ' || (SELECT count(*) FROM pgmaint.integrity_findings) ||
                             ' findings rows, none duplicated, each of a completed upload with its rows_applied; none completed on a superseded server'
                        ELSE 'VIOLATION uploads-applied-once: ' || (SELECT count(*) FROM twice) || ' completed twice, ' ||
                             (SELECT count(*) FROM dup_findings) || ' duplicated findings, ' ||
                             (SELECT count(*) FROM orphan) || ' findings sets without a completed upload, ' ||
                             (SELECT count(*) FROM miscount) || ' uploads whose findings differ from rows_applied, ' ||
                             (SELECT count(*) FROM on_superseded) || ' completed on a superseded server after its switch' END AS line
    UNION ALL SELECT 1, '    run ' || run_id || ' task ' || task_name || ' completed ' || n || ' times' FROM twice
    UNION ALL (SELECT 2, '    run ' || run_id || ' ' || task_name || ' ' || relation || ' key ' || coalesce(row_key, 'NULL') ||
                         ' ' || finding || ': ' || n || ' rows' FROM dup_findings LIMIT 10)
    UNION ALL (SELECT 3, '    run ' || run_id || ' ' || task_name || ': ' || n || ' findings, upload ' || coalesce(state, 'missing')
                 FROM orphan LIMIT 10)
    UNION ALL (SELECT 4, '    upload ' || id || ' (run ' || run_id || ' ' || task_name || '): rows_applied ' ||
                         coalesce(rows_applied::text, 'NULL') || ', findings rows ' || n FROM miscount LIMIT 10)
    UNION ALL (SELECT 5, '    upload ' || id || ' (run ' || run_id || ' ' || task_name || ') completed on ' || node ||
                         ' (timeline ' || tli || ') at ' || finished_at || ', ' ||
                         round((extract(epoch FROM finished_at) - switch_t)::numeric, 1) || ' s after its switch; on the final primary: ' ||
                         coalesce(final_state, 'absent') || CASE WHEN final_state = 'completed' THEN ' (applied twice)' ELSE '' END
                 FROM on_superseded ORDER BY finished_at LIMIT 20)
)
SELECT line FROM lines ORDER BY o;

-- ---------------------------------------- no pgmaint write once superseded ----
WITH bad AS (
    SELECT sw.node, sw.tli, x.tbl, x.col, x.ts, x.ts - sw.switch_t AS after, x.row_text
      FROM sw JOIN sup_ts x ON x.node = sw.node AND x.tli = sw.tli
     WHERE x.col <> 'not_before'
       AND x.ts > sw.switch_t + CASE WHEN x.col = 'lease_expires_at' THEN :uploader_lease
                                     WHEN x.col LIKE '%expires_at' THEN :lease ELSE 0 END
), nosw AS (
    SELECT * FROM sw WHERE switch_t IS NULL
), lines AS (
    SELECT 0 AS o, 0::float8 AS k,
           CASE WHEN NOT EXISTS (SELECT FROM bad) AND NOT EXISTS (SELECT FROM nosw)
                THEN 'ok        no-write-after-superseded: ' || (SELECT count(*) FROM sup) ||
                     ' former primaries ran after they were superseded (' ||
                     coalesce((SELECT string_agg(node || ' on timeline ' || tli || ' for ' ||
                                                 round((dumped_at - coalesce(back_at, switch_t))::numeric) || ' s', ', ') FROM sw), 'none') ||
                     '); none holds a pgmaint row stamped after its switch (the others were not started after their death)'
                ELSE 'VIOLATION no-write-after-superseded: ' || (SELECT count(*) FROM bad) ||
                     ' pgmaint values stamped after the switch on a former primary (' ||
                     (SELECT string_agg(DISTINCT node || ' timeline ' || tli || ': ' || tbl, ', ') FROM bad) || ')' ||
                     CASE WHEN EXISTS (SELECT FROM nosw) THEN '; switch time unknown for ' ||
                          (SELECT string_agg(node, ', ') FROM nosw) ELSE '' END END AS line
    UNION ALL
    (SELECT 1, ts, '    ' || node || ' (timeline ' || tli || ') ' || tbl || '.' || col || ' = ' || to_timestamp(ts) || ', ' ||
               round(after::numeric, 1) || ' s after the switch: ' || left(row_text, 220)
       FROM bad ORDER BY ts LIMIT 25)
)
SELECT line FROM lines ORDER BY o, k;

-- --------------------------------------------------- one writable server ----
WITH p AS (
    SELECT t, node, tli FROM samples WHERE state = 'primary'
), top AS (
    SELECT t, max(tli) AS top, count(*) AS n FROM p GROUP BY t
), split AS (
    SELECT t, tli, string_agg(node, ',' ORDER BY node) AS nodes FROM p GROUP BY t, tli HAVING count(*) > 1
), ss AS (
    SELECT s.t, s.node, s.tli, s.fp, (s.state = 'primary' AND s.tli < top.top) AS superseded
      FROM samples s LEFT JOIN top USING (t)
), seq AS (
    SELECT *, lag(superseded) OVER w AS prev_sup, lag(fp) OVER w AS prev_fp
      FROM ss WINDOW w AS (PARTITION BY node ORDER BY t)
), changed AS (
    SELECT t, node, tli,
           (SELECT string_agg(split_part(e, '=', 1), ',') FROM unnest(string_to_array(fp, ',')) e
             WHERE e <> ALL (string_to_array(prev_fp, ','))) AS tables
      FROM seq WHERE superseded AND prev_sup AND fp IS DISTINCT FROM prev_fp
), lines AS (
    SELECT 0 AS o, 0::float8 AS k,
           CASE WHEN NOT EXISTS (SELECT FROM split) AND NOT EXISTS (SELECT FROM changed)
                THEN 'ok        one-writable-server: ' || (SELECT count(DISTINCT t) FROM samples) || ' samples; ' ||
                     (SELECT count(*) FROM top WHERE n > 1) || ' saw two servers out of recovery, always on different timelines, and ' ||
                     (SELECT count(*) FROM seq WHERE superseded) || ' samples of a superseded one saw no change to its pgmaint tables'
                ELSE 'VIOLATION one-writable-server: ' || (SELECT count(*) FROM split) ||
                     ' samples with two servers out of recovery on one timeline, ' || (SELECT count(*) FROM changed) ||
                     ' samples with pgmaint writes on a superseded server (of ' || (SELECT count(*) FROM seq WHERE superseded) || ')' END AS line
    UNION ALL (SELECT 1, t, '    ' || to_timestamp(t) || ': ' || nodes || ' out of recovery on timeline ' || tli FROM split ORDER BY t LIMIT 10)
    UNION ALL (SELECT 2, t, '    ' || to_timestamp(t) || ': ' || node || ' (timeline ' || tli ||
                            ', superseded) pgmaint tables changed since the previous second: ' || coalesce(tables, '?')
                 FROM changed ORDER BY t LIMIT 20)
)
SELECT line FROM lines ORDER BY o, k;

-- ------------------------------------------------- findings == planted ----
WITH cf AS (
    SELECT task_name, run_id, relation, row_key, finding FROM pgmaint.current_findings
), planted AS (
    SELECT unnest(:'planted'::bigint[])::text AS k
), missing AS (
    SELECT k FROM planted WHERE k NOT IN (SELECT row_key FROM cf WHERE task_name = 'blobs' AND row_key IS NOT NULL)
), extra AS (
    SELECT * FROM cf WHERE NOT (task_name = 'blobs' AND row_key IN (SELECT k FROM planted))
), dup AS (
    SELECT row_key, count(*) AS n FROM cf WHERE task_name = 'blobs' GROUP BY row_key HAVING count(*) > 1
), lines AS (
    SELECT 0 AS o, CASE WHEN NOT EXISTS (SELECT FROM missing) AND NOT EXISTS (SELECT FROM extra) AND NOT EXISTS (SELECT FROM dup)
                        THEN 'ok        findings-match-scans: pgmaint.current_findings holds exactly the planted ids ' ||
                             array_to_string(:'planted'::bigint[], ',') || ' (run ' ||
                             (SELECT string_agg(DISTINCT run_id::text, ',') FROM cf) || ')'
                        ELSE 'VIOLATION findings-match-scans: planted ' || array_to_string(:'planted'::bigint[], ',') ||
                             '; missing: ' || coalesce((SELECT string_agg(k, ',') FROM missing), 'none') ||
                             '; others: ' || (SELECT count(*) FROM extra) || '; listed twice: ' || (SELECT count(*) FROM dup) ||
                             '; succeeded blobs runs with a completed upload: ' ||
                             (SELECT count(*) FROM pgmaint.upload_tasks u JOIN pgmaint.runs r ON r.id = u.run_id
                               WHERE u.task_name = 'blobs' AND u.state = 'completed' AND r.state = 'succeeded') END AS line
    UNION ALL (SELECT 1, '    not planted: ' || task_name || ' run ' || run_id || ' ' || relation || ' ' ||
                         coalesce(row_key, 'NULL') || ' ' || finding FROM extra LIMIT 10)
    UNION ALL SELECT 2, '    listed ' || n || ' times: ' || row_key FROM dup
)
SELECT line FROM lines ORDER BY o;

-- ------------------------------------------------ committed writes kept ----
CREATE TEMP TABLE present AS SELECT id FROM public.soak_writes;
WITH req AS (
    SELECT w.* FROM w JOIN anc a ON a.tli = w.tli
     WHERE a.switch_lsn IS NULL OR w.lsn <= a.switch_lsn
), missing AS (
    SELECT r.*, a.switch_lsn FROM req r JOIN anc a USING (tli) WHERE r.id NOT IN (SELECT id FROM present)
), lost_ok AS (
    SELECT w.* FROM w WHERE w.id NOT IN (SELECT id FROM req) AND w.id NOT IN (SELECT id FROM present)
), nolsn_missing AS (
    SELECT wn.*, wn.tli = (SELECT tli FROM fin) AS required FROM wn WHERE wn.id NOT IN (SELECT id FROM present)
), lines AS (
    SELECT 0 AS o, 0::bigint AS k,
           CASE WHEN NOT EXISTS (SELECT FROM missing) AND NOT EXISTS (SELECT FROM nolsn_missing WHERE required)
                THEN 'ok        committed-writes-kept: ' || (SELECT count(*) FROM req) ||
                     ' writes committed on the final primary''s history (timelines ' ||
                     (SELECT string_agg(tli::text, '>' ORDER BY tli) FROM anc) || ') are all present; ' ||
                     (SELECT count(*) FROM lost_ok) || ' lost by an async failover (expected: committed on a server after its switch point)'
                ELSE 'VIOLATION committed-writes-kept: ' ||
                     ((SELECT count(*) FROM missing) + (SELECT count(*) FROM nolsn_missing WHERE required)) || ' of ' ||
                     (SELECT count(*) FROM req) || ' required writes missing on the final primary; ' ||
                     (SELECT count(*) FROM lost_ok) || ' lost by an async failover (expected)' END AS line
    UNION ALL (SELECT 1, id, '    missing id ' || id || ': committed on port ' || port || ', timeline ' || tli || ' at ' || lsn ||
                             coalesce(' (timeline left at ' || switch_lsn || ')', ' (the final timeline)') || ', ' || to_timestamp(t)
                 FROM missing ORDER BY id LIMIT 20)
    UNION ALL (SELECT 2, id, '    missing id ' || id || ': committed on port ' || port || ', timeline ' || tli ||
                             ' (the final timeline), LSN not read' FROM nolsn_missing WHERE required ORDER BY id LIMIT 10)
    UNION ALL (SELECT 3, 0, '    lost by an async failover (expected): ' || count(*) || ' writes, ids ' ||
                            string_agg(id::text, ',' ORDER BY id) || ' (port/timeline: ' ||
                            (SELECT string_agg(DISTINCT port || '/' || tli, ', ') FROM lost_ok) || ')'
                 FROM lost_ok HAVING count(*) > 0)
    UNION ALL (SELECT 4, 0, '    ' || count(*) || ' committed writes whose LSN was not read are missing (not counted: their place is unknown): ids ' ||
                            string_agg(id::text, ',' ORDER BY id)
                 FROM nolsn_missing WHERE NOT required HAVING count(*) > 0)
)
SELECT line FROM lines ORDER BY o, k;

-- ------------------------------------------------ promotions recorded ----
WITH lineage AS (
    SELECT tli, switch_lsn, lead(tli) OVER (ORDER BY tli) AS child FROM anc
), unrecorded AS (
    SELECT * FROM lineage
     WHERE switch_lsn IS NOT NULL
       AND NOT EXISTS (SELECT FROM pgmaint.promotions p WHERE p.new_timeline = lineage.child)
), lines AS (
    SELECT 0 AS o, 0 AS k,
           CASE WHEN NOT EXISTS (SELECT FROM unrecorded)
                THEN 'ok        promotions-recorded: each of the ' || (SELECT count(*) FROM lineage WHERE switch_lsn IS NOT NULL) ||
                     ' timeline switches of the final primary''s history has its pgmaint.promotions row'
                ELSE 'VIOLATION promotions-recorded: ' || (SELECT count(*) FROM unrecorded) || ' of ' ||
                     (SELECT count(*) FROM lineage WHERE switch_lsn IS NOT NULL) ||
                     ' promotions in the final primary''s history are not in pgmaint.promotions (so nothing fences the old primary by record)' END AS line
    UNION ALL SELECT 1, child, '    timeline ' || child || ' (from ' || tli || ' at ' || switch_lsn || '): no pgmaint.promotions row'
                FROM unrecorded
    UNION ALL SELECT 2, new_timeline, '    recorded: ' || replica || ' ' || old_timeline || '->' || new_timeline || ' at ' ||
                                      switch_lsn || ', ' || promoted_at || ', old primary ' || coalesce(old_primary, '?')
                FROM pgmaint.promotions
)
SELECT line FROM lines ORDER BY o, k;
