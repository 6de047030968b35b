-- pgmaint as a non-superuser role `pgmaint` (PostgreSQL 15 and later).
-- Run once as a superuser on the PRIMARY, connected to the application database
-- (psql -d app -f scripts/least-privilege.sql). Roles, grants and extensions
-- replicate: every standby gets them. Then give the role a password (\password
-- pgmaint) or another authentication method in pg_hba.conf, and put user=pgmaint in
-- primary.dsn and every replicas[].dsn.

-- The role. It needs no superuser, CREATEDB, CREATEROLE or REPLICATION attribute.
DO $$ BEGIN
  CREATE ROLE pgmaint LOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

-- `pgmaint init` runs AS pgmaint: it creates the schema pgmaint, which pgmaint then
-- owns with every table in it (runs, leases, the upload queue, findings), so no grant
-- on them is needed. CREATE on the database lets it create that schema; TEMPORARY lets
-- a merge upload load into a temporary table (PUBLIC has it by default).
DO $$ BEGIN
  EXECUTE format('GRANT CREATE, TEMPORARY ON DATABASE %I TO pgmaint', current_database());
END $$;

-- The cycle, on the replica: pause and resume WAL replay (pg_get_wal_replay_pause_state,
-- pg_last_wal_replay_lsn and the other read-only recovery functions are PUBLIC).
GRANT EXECUTE ON FUNCTION pg_catalog.pg_wal_replay_pause() TO pgmaint;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_wal_replay_resume() TO pgmaint;
-- The columns of pg_stat_wal_receiver (the replica: is it streaming?) and of
-- pg_stat_replication (the primary: is it a synchronous standby?). Without them both
-- views show NULLs. pg_read_all_stats alone is enough; pg_monitor includes it.
GRANT pg_monitor TO pgmaint;

-- Scans (row_checksum, file_checksum's catalog, materialize queries, export) and
-- `pgmaint dump` (pg_dump) read tables on the replica. Every table:
GRANT pg_read_all_data TO pgmaint;
-- or, instead, table by table (pg_dump then dumps only what it may read):
--   GRANT USAGE ON SCHEMA public TO pgmaint;
--   GRANT SELECT ON ALL TABLES IN SCHEMA public TO pgmaint;

-- amcheck tasks: the extension (created on the primary, it replicates) and EXECUTE on
-- the two functions pgmaint calls (a standby cannot run bt_index_parent_check).
CREATE EXTENSION IF NOT EXISTS amcheck;
GRANT EXECUTE ON FUNCTION bt_index_check(regclass, boolean) TO pgmaint;
GRANT EXECUTE ON FUNCTION verify_heapam(regclass, boolean, boolean, text, bigint, bigint) TO pgmaint;

-- Materialize targets, uploaded on the primary: one block per target. The tables
-- below are examples (those of tests/privileges.rs): put yours.
-- A swap builds the new table next to the target and renames: pgmaint owns the target
-- (or is a member of its owner role), and it and the owner may CREATE in its schema
-- (PostgreSQL 15 revoked CREATE on schema public from PUBLIC).
ALTER TABLE public.blob_sums OWNER TO pgmaint;
GRANT CREATE ON SCHEMA public TO pgmaint;
-- A merge reads, inserts and updates rows: SELECT and INSERT on the query's columns,
-- UPDATE on those outside merge_key, on the table or column by column.
GRANT SELECT, INSERT (id, size), UPDATE (size) ON public.blob_sizes TO pgmaint;

-- `pgmaint promote` (failover), on the replica it promotes and on those it re-points
-- at the new primary:
GRANT EXECUTE ON FUNCTION pg_catalog.pg_promote(boolean, integer) TO pgmaint;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_reload_conf() TO pgmaint;
GRANT ALTER SYSTEM ON PARAMETER primary_conninfo TO pgmaint;
-- the new timeline's history file (pg_wal/<TLI>.history), through a function that
-- reads that one file (owned by the superuser running this script): a grant on
-- pg_read_file itself would let the role read any file of the data directory,
-- server.key and postgresql.auto.conf included.
DO $$
BEGIN
    -- A schema of that name made by someone else (the pgmaint role may create
    -- schemas) would let its owner drop or replace what follows.
    IF EXISTS (SELECT FROM pg_namespace
                WHERE nspname = 'pgmaint_admin'
                  AND nspowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)) THEN
        RAISE EXCEPTION 'schema pgmaint_admin exists and is not owned by %: check it, drop it, run this again', current_user;
    END IF;
END $$;
CREATE SCHEMA IF NOT EXISTS pgmaint_admin;
CREATE OR REPLACE FUNCTION pgmaint_admin.timeline_history(tli integer) RETURNS text
    LANGUAGE sql STRICT SECURITY DEFINER SET search_path = pg_catalog
    AS $$ SELECT pg_read_file('pg_wal/' || lpad(upper(to_hex(tli)), 8, '0') || '.history')
           WHERE tli > 0 $$;
REVOKE ALL ON FUNCTION pgmaint_admin.timeline_history(integer) FROM PUBLIC;
GRANT USAGE ON SCHEMA pgmaint_admin TO pgmaint;
GRANT EXECUTE ON FUNCTION pgmaint_admin.timeline_history(integer) TO pgmaint;
-- and, only if replicas use primary_slot_name (their slot is created on the new primary):
--   ALTER ROLE pgmaint REPLICATION;
