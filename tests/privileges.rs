//! Least privilege: the README's recipe (`scripts/least-privilege.sql`) applied to a
//! fresh role `pgmaint`, then the whole cycle, the upload and a dump as that role; and
//! each grant taken away in turn, named by `pgmaint check` and by `pgmaint run`, which
//! refuses before any pause.

use std::path::{Path, PathBuf};

use pgmaint_e2e::*;

const RECIPE: &str = "scripts/least-privilege.sql";

/// The config of `c`, connecting as role `pgmaint`: every kind of task the recipe
/// grants for (the targets are the recipe's example tables).
fn pgmaint_config(c: &Cluster) -> PathBuf {
    let body = format!(
        "{}\
         [[tasks]]\nname = \"sums\"\nkind = \"materialize\"\n\
         query = \"SELECT id, payload_md5 FROM public.blobs\"\ntarget = \"public.blob_sums\"\n\
         [[tasks]]\nname = \"sizes\"\nkind = \"materialize\"\n\
         query = \"SELECT id, length(payload) AS size FROM public.blobs\"\n\
         target = \"public.blob_sizes\"\nmerge_key = [\"id\"]\n\
         [[tasks]]\nname = \"heap\"\nkind = \"amcheck\"\ntables = [\"public.blobs\"]\n\
         [[tasks]]\nname = \"exp\"\nkind = \"export\"\ntables = [\"public.blobs\"]\n",
        blobs_task("")
    );
    let path = c.write_config("pgmaint.toml", &body);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("user=postgres", "user=pgmaint")).unwrap();
    path
}

/// The `FAIL` line of `run` whose object is `name`.
fn fail_line<'a>(run: &'a Run, name: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.starts_with(&format!("FAIL {name}:")))
        .unwrap_or_else(|| panic!("no FAIL {name} line:\n{}", run.stdout))
}

/// Take a grant away (as the superuser, on the primary), wait until the replica has
/// replayed it, and check that `check` and `run` name `grant` on the line of `object`
/// (run: exit 2, before any pause: the replica is not paused, nothing was recorded as
/// paused); then give it back.
async fn refused_without(
    c: &Cluster,
    config: &Path,
    revoke: &str,
    regrant: &str,
    object: &str,
    grant: &str,
) {
    let p = c.primary().await;
    p.batch_execute(revoke).await.unwrap();
    c.wait_caught_up(1).await;

    let run = c.run(config, &["check"]).expect_code(1);
    let line = fail_line(&run, object);
    assert!(line.contains(grant), "{revoke}: {grant} not in {line}");
    assert!(!run.stdout.contains("not streaming"), "{}", run.stdout);
    assert!(run.error_line().unwrap().contains(object), "{}", run.stderr);

    let before: i64 = scalar(&p, "SELECT coalesce(max(id), 0) FROM pgmaint.runs", &[]).await;
    let run = c.run(config, &["run"]).expect_code(2);
    let line = run.error_line().unwrap();
    assert!(line.contains(grant), "{revoke}: {grant} not in {line}");
    assert!(!run.stderr.contains("not streaming"), "{}", run.stderr);
    assert_eq!(c.pause_state(1).await, "not paused", "{revoke}");
    let paused: i64 = scalar(
        &p,
        "SELECT count(*) FROM pgmaint.runs WHERE id > $1
            AND (paused_at IS NOT NULL OR pause_requested_at IS NOT NULL)",
        &[&before],
    )
    .await;
    assert_eq!(paused, 0, "{revoke}: a refused run asked for a pause");

    p.batch_execute(regrant).await.unwrap();
    c.wait_caught_up(1).await;
}

/// A cluster with `replicas` replicas, `public.blobs` (100 rows, one corrupt
/// checksum) and the recipe's example targets, owned by the superuser as an
/// application's tables would be; then the recipe applied.
async fn recipe_cluster(name: &str, replicas: usize) -> (Cluster, tokio_postgres::Client) {
    let c = Cluster::up(name, replicas);
    let p = c.primary().await;
    seed_blobs(&p, BLOBS, "bigint", "g", 100).await;
    p.batch_execute(
        "UPDATE public.blobs SET payload_md5 = 'bad' WHERE id = 7;
         CREATE TABLE public.blob_sums (id bigint PRIMARY KEY, payload_md5 text);
         CREATE TABLE public.blob_sizes (id bigint PRIMARY KEY, size int, note text DEFAULT 'kept');
         INSERT INTO public.blob_sizes VALUES (1, -1, 'mine');",
    )
    .await
    .unwrap();
    let recipe = std::fs::read_to_string(repo().join(RECIPE)).unwrap();
    p.batch_execute(&recipe).await.unwrap();
    // Applying it twice is harmless (the role exists already).
    p.batch_execute(&recipe).await.unwrap();
    (c, p)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_recipe_runs_everything_as_pgmaint_and_each_missing_grant_is_named() {
    let (c, p) = recipe_cluster("privileges", 1).await;
    let superuser: bool = scalar(
        &p,
        "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls
           FROM pg_roles WHERE rolname = 'pgmaint'",
        &[],
    )
    .await;
    assert!(!superuser, "the recipe's role has no special attribute");
    // The timeline history the failover reads, and no other file of the data
    // directory: the recipe's function, not a grant on pg_read_file.
    let as_pgmaint = connect(&c.primary_dsn().replace("user=postgres", "user=pgmaint")).await;
    let e = as_pgmaint
        .query_one("SELECT pg_read_file('postgresql.auto.conf')", &[])
        .await
        .unwrap_err();
    let message = |e: &tokio_postgres::Error| e.as_db_error().map(|d| d.message().to_string());
    assert!(message(&e).unwrap().contains("permission denied"), "{e:?}");
    let e = as_pgmaint
        .query_one("SELECT pgmaint_admin.timeline_history(1)", &[])
        .await
        .unwrap_err();
    assert!(
        message(&e)
            .unwrap()
            .starts_with("could not open file \"pg_wal/00000001.history\""),
        "the function reads the history file as its owner: {e:?}"
    );

    // init as pgmaint: it creates, and owns, pgmaint's schema.
    let config = pgmaint_config(&c);
    c.init_ready(&config).await;
    let owner: String = scalar(
        &p,
        "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'pgmaint'",
        &[],
    )
    .await;
    assert_eq!(owner, "pgmaint");

    // check passes, every line.
    let run = c.run(&config, &["check"]).expect_code(0);
    assert!(!run.stdout.contains("FAIL"), "{}", run.stdout);
    for want in [
        "ok   replica r1 privileges: role pgmaint may",
        "ok   primary privileges: role pgmaint may",
        "ok   target public.blob_sizes (task sizes): ",
        "ok   task heap on r1: ",
    ] {
        assert!(run.stdout.contains(want), "{want}:\n{}", run.stdout);
    }

    // The cycle: every task succeeds, replay is resumed.
    let s = run_ok(&c, &config, &[]);
    let id = s["run_id"].as_i64().unwrap();
    assert_eq!(s["state"], "succeeded", "{s:#}");
    for task in ["blobs", "sums", "sizes", "heap", "exp"] {
        assert_eq!(task_entry(&s, task)["status"], "completed", "{task}: {s:#}");
    }
    assert_eq!(c.pause_state(1).await, "not paused");
    assert_eq!(
        run_findings(&c, id, "blobs"),
        vec![("7".to_string(), "mismatch".to_string())]
    );
    let run_dir = c.results_dir().join(id.to_string());
    let exported: Vec<PathBuf> = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("exp"))
        .collect();
    assert_eq!(exported.len(), 1, "{exported:?}");
    assert_eq!(csv_rows(&exported[0]).len(), 100);

    // The upload, as pgmaint: findings, the swap, the merge through column grants.
    c.run(&config, &["uploader", "--once"]).expect_code(0);
    let findings: i64 = count(
        &p,
        "SELECT count(*) FROM pgmaint.current_findings
          WHERE task_name = 'blobs' AND row_key = '7' AND finding = 'mismatch'",
    )
    .await;
    assert_eq!(findings, 1);
    let (rows, bad): (i64, i64) = pair(
        &p,
        "SELECT count(*), count(*) FILTER (WHERE payload_md5 = 'bad') FROM public.blob_sums",
        &[],
    )
    .await;
    assert_eq!((rows, bad), (100, 1));
    let owner: String = scalar(
        &p,
        "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'public.blob_sums'::regclass",
        &[],
    )
    .await;
    assert_eq!(owner, "pgmaint", "the swapped-in table keeps its owner");
    let wrong: i64 = count(
        &p,
        "SELECT count(*) FROM public.blobs b FULL JOIN public.blob_sizes s USING (id)
          WHERE s.size IS DISTINCT FROM length(b.payload)",
    )
    .await;
    assert_eq!(wrong, 0, "every size merged");
    let notes: (String, i64) = pair(
        &p,
        "SELECT (SELECT note FROM public.blob_sizes WHERE id = 1),
                (SELECT count(*) FROM public.blob_sizes WHERE note = 'kept')",
        &[],
    )
    .await;
    assert_eq!(
        notes,
        ("mine".to_string(), 99),
        "the merge leaves note alone"
    );

    // A dump, as pgmaint.
    let out = c.dir.join("dump");
    c.run(&config, &["dump", "--out", out.to_str().unwrap()])
        .expect_code(0);
    assert!(out.join("toc.dat").is_file());
    assert!(out.join("manifest.json").is_file());
    assert_eq!(c.pause_state(1).await, "not paused");

    // Each grant taken away in turn: named by check and by run, nothing paused.
    refused_without(
        &c,
        &config,
        "REVOKE pg_monitor FROM pgmaint",
        "GRANT pg_monitor TO pgmaint",
        "replica r1 privileges",
        "GRANT pg_monitor TO pgmaint",
    )
    .await;
    refused_without(
        &c,
        &config,
        "REVOKE EXECUTE ON FUNCTION pg_wal_replay_pause() FROM pgmaint",
        "GRANT EXECUTE ON FUNCTION pg_wal_replay_pause() TO pgmaint",
        "replica r1 privileges",
        "GRANT EXECUTE ON FUNCTION pg_wal_replay_pause() TO pgmaint",
    )
    .await;
    refused_without(
        &c,
        &config,
        "REVOKE pg_read_all_data FROM pgmaint",
        "GRANT pg_read_all_data TO pgmaint",
        "task blobs on r1",
        "GRANT SELECT ON TABLE public.blobs TO pgmaint",
    )
    .await;
    refused_without(
        &c,
        &config,
        "REVOKE EXECUTE ON FUNCTION verify_heapam(regclass, boolean, boolean, text, bigint, bigint) FROM pgmaint",
        "GRANT EXECUTE ON FUNCTION verify_heapam(regclass, boolean, boolean, text, bigint, bigint) TO pgmaint",
        "task heap on r1",
        "GRANT EXECUTE ON FUNCTION verify_heapam(regclass,boolean,boolean,text,bigint,bigint) TO pgmaint",
    )
    .await;
    refused_without(
        &c,
        &config,
        "REVOKE UPDATE (size) ON public.blob_sizes FROM pgmaint",
        "GRANT UPDATE (size) ON public.blob_sizes TO pgmaint",
        "target public.blob_sizes (task sizes)",
        "GRANT UPDATE (size) ON TABLE public.blob_sizes TO pgmaint",
    )
    .await;

    // Everything given back: check passes again.
    c.run(&config, &["check"]).expect_code(0);

    // The replica takes no more connection of pgmaint's once check holds its control
    // session: the task checks cannot reach it, a blip (exit 3), not a failure.
    p.batch_execute("ALTER ROLE pgmaint CONNECTION LIMIT 1")
        .await
        .unwrap();
    c.wait_caught_up(1).await;
    let run = c.run(&config, &["check"]).expect_code(3);
    assert!(
        fail_line(&run, "task blobs on r1").contains("too many connections"),
        "{}",
        run.stdout
    );
    p.batch_execute("ALTER ROLE pgmaint CONNECTION LIMIT -1")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pool_says_which_grant_is_missing_not_that_replicas_do_not_stream() {
    let (c, p) = recipe_cluster("privileges-pool", 2).await;
    let config = pgmaint_config(&c);
    c.init_ready(&config).await;
    c.wait_caught_up(2).await;
    p.batch_execute("REVOKE pg_monitor FROM pgmaint")
        .await
        .unwrap();
    c.wait_caught_up(1).await;
    c.wait_caught_up(2).await;

    // Two replicas: the pool chooses, and says why it chose none.
    let run = c.run(&config, &["run", "--task", "blobs"]);
    let line = run.error_line().unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(line.contains("no replica can be paused now"), "{line}");
    for r in ["r1", "r2"] {
        assert!(
            line.contains(&format!(
                "{r}: role pgmaint lacks: GRANT pg_monitor TO pgmaint"
            )),
            "{r}: {line}"
        );
    }
    assert!(!line.contains("not streaming"), "{line}");
    assert_ne!(run.code, 0);
    assert_eq!(c.pause_state(1).await, "not paused");
    assert_eq!(c.pause_state(2).await, "not paused");

    // Given back, the pool pauses one of them.
    p.batch_execute("GRANT pg_monitor TO pgmaint")
        .await
        .unwrap();
    c.wait_caught_up(1).await;
    c.wait_caught_up(2).await;
    let s = run_ok(&c, &config, &["--task", "blobs"]);
    assert_eq!(s["state"], "succeeded", "{s:#}");
}

/// The README shows the recipe verbatim.
#[test]
fn the_readme_shows_the_recipe() {
    let recipe = std::fs::read_to_string(repo().join(RECIPE)).unwrap();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("```sql\n{recipe}```\n")),
        "README.md must show {RECIPE} verbatim in a ```sql block"
    );
}

/// row_checksum reads each partition of a partitioned table directly (by block
/// ranges): a grant on the parent alone is refused before any pause, naming the
/// partition's grant; with it, every partition's rows are checked.
#[tokio::test(flavor = "multi_thread")]
async fn row_checksum_names_the_grant_each_partition_needs_and_checks_them_all() {
    let (c, p) = recipe_cluster("privileges-parts", 1).await;
    p.batch_execute(
        "CREATE TABLE public.parts (id bigint, payload bytea, payload_md5 text) PARTITION BY RANGE (id);
         CREATE TABLE public.parts_1 PARTITION OF public.parts FOR VALUES FROM (0) TO (100);
         CREATE TABLE public.parts_2 PARTITION OF public.parts FOR VALUES FROM (100) TO (1000);
         INSERT INTO public.parts SELECT g, sha256(g::text::bytea), md5(sha256(g::text::bytea))
           FROM generate_series(1, 300) g;
         UPDATE public.parts SET payload_md5 = md5('x') WHERE id IN (42, 250);
         REVOKE pg_read_all_data FROM pgmaint;
         GRANT SELECT ON public.parts TO pgmaint;",
    )
    .await
    .unwrap();
    let body = row_checksum_task("parts", "public.parts", "id", "payload", "payload_md5", "");
    let config = c.write_config("parts.toml", &body);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("user=postgres", "user=pgmaint")).unwrap();
    c.init_ready(&config).await;

    let grants = "GRANT SELECT ON TABLE public.parts_1 TO pgmaint; GRANT SELECT ON TABLE public.parts_2 TO pgmaint";
    let check = c.run(&config, &["check"]).expect_code(1);
    assert!(check.stdout.contains(grants), "{}", check.stdout);
    let run = c.run(&config, &["run"]).expect_code(2);
    assert!(run.error_line().unwrap().contains(grants), "{}", run.stderr);
    assert_eq!(c.pause_state(1).await, "not paused");

    p.batch_execute("GRANT SELECT ON public.parts_1, public.parts_2 TO pgmaint")
        .await
        .unwrap();
    c.wait_caught_up(1).await;
    let run = c.run(&config, &["run", "--json"]).expect_code(0);
    let s: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(s["tasks"][0]["rows_scanned"], 300, "{s:#}");
    assert_eq!(s["tasks"][0]["findings"], 2, "{s:#}");
}

/// Row-level security on a scanned table, which the role does not bypass
/// (`pg_read_all_data` does not): the task is refused before the pause saying so,
/// never a "completed" scan that read none of the rows the policy hides.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_whose_row_security_hides_rows_is_refused_not_scanned_in_part() {
    let (c, p) = recipe_cluster("privileges-rls", 1).await;
    p.batch_execute("ALTER TABLE public.blobs ENABLE ROW LEVEL SECURITY")
        .await
        .unwrap();
    let config = c.write_config("rls.toml", &blobs_task(""));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("user=postgres", "user=pgmaint")).unwrap();
    c.init_ready(&config).await;
    // Refused before any pause, saying why and what to do.
    let run = c.run(&config, &["run", "--json"]).expect_code(2);
    let s: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(s["paused_at"].is_null(), "{s:#}");
    let line = run.error_line().unwrap();
    assert!(line.contains("row-level security"), "{line}");
    assert!(line.contains("BYPASSRLS"), "{line}");
    assert_eq!(c.pause_state(1).await, "not paused");
    // With BYPASSRLS, every row is read.
    p.batch_execute("ALTER ROLE pgmaint BYPASSRLS")
        .await
        .unwrap();
    c.wait_caught_up(1).await;
    let run = c.run(&config, &["run", "--json"]).expect_code(0);
    let s: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(s["tasks"][0]["rows_scanned"], 100, "{s:#}");
    assert_eq!(s["tasks"][0]["findings"], 1, "{s:#}");
}
