//! Scan kinds end to end against a real primary and a paused streaming replica:
//! file_checksum, amcheck, materialize, export, and the time limits of a scan.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use pgmaint_e2e::*;

/// `(row_key, finding)` pairs of a findings CSV.
fn findings(path: &Path) -> BTreeSet<(String, String)> {
    csv_rows(path)
        .into_iter()
        .map(|r| (r[1].clone(), r[2].clone()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn results_dir(summary: &serde_json::Value) -> std::path::PathBuf {
    summary["results_dir"].as_str().expect("results_dir").into()
}

/// Where task `task` carries on next run (`pgmaint.task_cursors`).
async fn cursor_of(c: &Cluster, task: &str) -> String {
    let sql = "SELECT cursor FROM pgmaint.task_cursors WHERE task_name = $1";
    scalar(&c.primary().await, sql, &[&task]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn file_checksum_finds_planted_corruptions_and_sweeps_with_a_cursor() {
    let c = Cluster::up("scans-files", 1);
    let root = c.dir.join("store");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(c.dir.join("secret.txt"), b"not yours").unwrap();
    // Ten good files (ids 1..=10), stored md5 and size as ingested.
    let p = c.primary().await;
    p.batch_execute(
        "CREATE TABLE store_files (id int PRIMARY KEY, rel_path text, md5 text, bytes bigint,
                                   ingested timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .unwrap();
    for id in 1..=10i32 {
        let rel = format!("sub/f{id:02}.bin");
        let data: Vec<u8> = (0..(1000 + id as usize * 37))
            .map(|i| (i * 7 + id as usize) as u8)
            .collect();
        std::fs::write(root.join(&rel), &data).unwrap();
        p.execute(
            "INSERT INTO store_files (id, rel_path, md5, bytes) VALUES ($1, $2, $3, $4)",
            &[&id, &rel, &md5_hex(&data), &(data.len() as i64)],
        )
        .await
        .unwrap();
    }
    // Plant: 2 a flipped byte, 3 truncated, 4 deleted, 5 a symlink leading out of the
    // root, 6 a `..` path, 12 a directory. Row 11 was ingested long ago (outside any age
    // window).
    let f = |id: i32| root.join(format!("sub/f{id:02}.bin"));
    let mut data = std::fs::read(f(2)).unwrap();
    data[500] ^= 0x01;
    std::fs::write(f(2), &data).unwrap();
    let data = std::fs::read(f(3)).unwrap();
    std::fs::write(f(3), &data[..data.len() / 2]).unwrap();
    std::fs::remove_file(f(4)).unwrap();
    std::fs::remove_file(f(5)).unwrap();
    std::os::unix::fs::symlink(c.dir.join("secret.txt"), f(5)).unwrap();
    p.batch_execute(
        "UPDATE store_files SET rel_path = '../secret.txt' WHERE id = 6;
         INSERT INTO store_files (id, rel_path, md5, bytes, ingested)
              VALUES (11, 'sub/old.bin', md5(''), 0, now() - interval '30 days');
         INSERT INTO store_files (id, rel_path, md5, bytes) VALUES (12, 'sub', md5(''), 0);",
    )
    .await
    .unwrap();
    std::fs::write(root.join("sub/old.bin"), b"").unwrap();
    std::fs::remove_file(root.join("sub/f06.bin")).unwrap();

    let common = format!(
        "kind = \"file_checksum\"\ntable = \"store_files\"\nkey = \"id\"\npath = \"rel_path\"\nchecksum = \"md5\"\nsize = \"bytes\"\nroot = \"{}\"\nparallelism = 2\n",
        root.display()
    );
    let cfg = c
        .ready_config(
            "files.toml",
            &format!(
            "[[tasks]]\nname = \"files\"\n{common}age_in_days = 7\ningested_at = \"ingested\"\n\
             [[tasks]]\nname = \"sweep\"\n{common}files_per_run = 5\n"
        ),
        )
        .await;

    // Every planted corruption, and nothing else; row 11 is outside the age window.
    let (run, s) = run_json(&c, &cfg, &["--task", "files"]);
    let run = run.expect_code(0);
    let t = task_entry(&s, "files");
    assert_eq!(
        (t["status"].as_str(), t["rows_scanned"].as_u64()),
        (Some("completed"), Some(11)),
        "{}",
        run.stdout
    );
    let expected = pairs(&[
        ("2", "mismatch"),
        ("3", "size_differs"),
        ("4", "missing"),
        ("5", "path_outside_root"),
        ("6", "path_outside_root"),
        ("12", "unreadable"),
    ]);
    assert_eq!(findings(&results_dir(&s).join("files.csv")), expected);
    assert_eq!(c.pause_state(1).await, "not paused");

    // The findings reach the primary.
    c.run(&cfg, &["uploader", "--once"]).expect_code(0);
    let rows = p
        .query(
            "SELECT row_key, finding FROM pgmaint.integrity_findings WHERE task_name = 'files' AND relation = 'public.store_files'",
            &[],
        )
        .await
        .unwrap();
    let got: BTreeSet<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, expected);

    // files_per_run = 5 over 12 files: the runs check ids 1..=5, 6..=10, then 11, 12 and
    // wrap to 1..=3. The first two and a half runs cover every file exactly once.
    let mut seen = Vec::new();
    for expected_cursor in ["5", "10", "3"] {
        let s = run_ok(&c, &cfg, &["--task", "sweep"]);
        assert_eq!(task_entry(&s, "sweep")["rows_scanned"].as_u64(), Some(5));
        assert_eq!(cursor_of(&c, "sweep").await, expected_cursor);
        seen.push(findings(&results_dir(&s).join("sweep.csv")));
    }
    let only = |keys: &[&str]| -> BTreeSet<(String, String)> {
        expected
            .iter()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .cloned()
            .collect()
    };
    assert_eq!(seen[0], only(&["2", "3", "4", "5"]));
    assert_eq!(seen[1], only(&["6"]));
    assert_eq!(
        seen[2],
        only(&["12", "2", "3"]),
        "11 and 12, then the wrap to 1..=3"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn amcheck_finds_a_corrupt_index_on_the_replica() {
    let (c, p) = cluster_with(
        "scans-amcheck",
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         CREATE INDEX t_v_idx ON t (v);
         CHECKPOINT;",
    )
    .await;
    let relpath: String = scalar(&p, "SELECT pg_relation_filepath('t_pkey')", &[]).await;
    let cfg = c.ready_config(
        "amcheck.toml",
        "[[tasks]]\nname = \"storage\"\nkind = \"amcheck\"\ntables = [\"t\"]\nheapallindexed = true\n",
    ).await;

    // A healthy replica: nothing found, three relations checked.
    let s = run_ok(&c, &cfg, &[]);
    assert_eq!(task_entry(&s, "storage")["rows_scanned"].as_u64(), Some(3));
    assert_eq!(task_entry(&s, "storage")["findings"].as_u64(), Some(0));

    // Zero a leaf page of the primary key index in the replica's copy only.
    c.server("stop", "r1");
    zero_block(&c, "r1", &relpath, 1);
    c.server("start", "r1");
    c.wait_caught_up(1).await;

    let s = run_ok(&c, &cfg, &[]);
    let t = task_entry(&s, "storage");
    assert_eq!(
        t["rows_scanned"].as_u64(),
        Some(3),
        "the other index and the heap are still checked"
    );
    let rows = csv_rows(&results_dir(&s).join("storage.csv"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0][0].as_str(), rows[0][2].as_str()),
        ("public.t_pkey", "index_corrupt")
    );
    assert_eq!(c.pause_state(1).await, "not paused");

    c.run(&cfg, &["uploader", "--once"]).expect_code(0);
    let n = count(
        &p,
        "SELECT count(*) FROM pgmaint.integrity_findings
          WHERE task_name = 'storage' AND relation = 'public.t_pkey' AND finding = 'index_corrupt'",
    )
    .await;
    assert_eq!(n, 1);

    // Without the extension the task is refused before any pause, naming the fix.
    p.batch_execute("DROP EXTENSION amcheck").await.unwrap();
    c.wait_caught_up(1).await;
    let run = c.run(&cfg, &["run"]).expect_code(2);
    let line = run.error_line().unwrap_or_default().to_string();
    assert!(
        line.contains("amcheck extension is not installed in database app: CREATE EXTENSION amcheck on the primary"),
        "{}",
        run.stderr
    );
}

/// A query that yields a row every 5 ms for 10 s: COPY streams it as it goes.
/// Rows are wide so that the server's 8 kB send buffer flushes every few rows.
const SLOW_QUERY: &str =
    "SELECT g AS n, rpad(pg_sleep(0.005)::text, 2000, 'x') AS z FROM generate_series(1, 2000) g";

/// `n` sparse files of `size` bytes under `c.dir/<table>` (reading them costs CPU, not
/// disk), listed in a new catalog table `table (id, path, md5)`: with their correct md5
/// if `with_md5`, else with a wrong one (for files no run is meant to finish).
async fn sparse_store(
    c: &Cluster,
    table: &str,
    n: i32,
    size: u64,
    with_md5: bool,
) -> std::path::PathBuf {
    let root = c.dir.join(table);
    std::fs::create_dir_all(&root).unwrap();
    for i in 1..=n {
        std::fs::File::create(root.join(format!("f{i}")))
            .unwrap()
            .set_len(size)
            .unwrap();
    }
    let md5 = if with_md5 {
        let out = std::process::Command::new("md5sum")
            .arg(root.join("f1"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()[..32].to_string()
    } else {
        md5_hex(b"")
    };
    let p = c.primary().await;
    p.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, path text, md5 text)"
    ))
    .await
    .unwrap();
    p.execute(
        &format!("INSERT INTO {table} SELECT g, 'f' || g, $1 FROM generate_series(1, $2) g"),
        &[&md5, &n],
    )
    .await
    .unwrap();
    root
}

fn file_task(name: &str, table: &str, root: &Path, extra: &str) -> String {
    format!(
        "[[tasks]]\nname = \"{name}\"\nkind = \"file_checksum\"\ntable = \"{table}\"\nkey = \"id\"\npath = \"path\"\n\
         checksum = \"md5\"\nroot = \"{}\"\nparallelism = 2\n{extra}",
        root.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn soft_timeout_stops_a_task_with_partial_results() {
    let c = Cluster::up("scans-soft-timeout", 1);
    // 48 x 128 MiB: about five seconds of hashing on two cores.
    let root = sparse_store(&c, "big_files", 48, 128 << 20, true).await;
    let cfg = c.ready_config(
        "soft.toml",
        &format!(
            "[[tasks]]\nname = \"slow\"\nkind = \"export\"\nquery = \"{SLOW_QUERY}\"\nsoft_timeout = \"1s\"\n{}",
            file_task("files", "big_files", &root, "soft_timeout = \"2s\"\nfiles_per_run = 1000\n")
        ),
    ).await;
    let started = Instant::now();
    let s = run_ok(&c, &cfg, &[]);
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "stopped at the soft time-outs, took {:?}",
        started.elapsed()
    );
    assert_eq!(c.pause_state(1).await, "not paused");
    let manifest = read_manifest(&results_dir(&s));

    // file_checksum: part of the files, all intact; the cursor is the last one checked,
    // so the next run carries on right after it.
    let t = &manifest["tasks"][1];
    assert_eq!(
        (
            t["name"].as_str(),
            t["status"].as_str(),
            t["findings"].as_u64()
        ),
        (Some("files"), Some("partial"), Some(0))
    );
    let checked = t["rows_scanned"].as_u64().unwrap();
    assert!(checked > 0 && checked < 48, "files checked: {checked}");
    assert_eq!(cursor_of(&c, "files").await, checked.to_string());

    // export: the rows streamed until the time-out.
    let t = &manifest["tasks"][0];
    assert_eq!(t["status"], "partial");
    let file = &t["files"][0];
    let rows = file["rows"].as_u64().unwrap();
    assert!(rows > 0 && rows < 2000, "partial rows: {rows}");
    // The file holds exactly the rows the manifest says, and its MD5.
    let path = results_dir(&s).join(file["name"].as_str().unwrap());
    assert_eq!(csv_rows(&path).len() as u64, rows);
    assert_eq!(
        md5_hex(&std::fs::read(&path).unwrap()),
        file["md5"].as_str().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_pause_aborts_the_cycle_and_uploads_nothing() {
    let c = Cluster::up("scans-max-pause", 1);
    // One 16 GiB file: half a minute of hashing, cut short by the limit.
    let root = sparse_store(&c, "huge_file", 1, 16 << 30, false).await;
    let cfg = c
        .ready_config(
            "maxpause.toml",
            &format!(
                "[limits]\nmax_pause = \"2s\"\n\
             [[tasks]]\nname = \"storage\"\nkind = \"amcheck\"\n\
             [[tasks]]\nname = \"slow\"\nkind = \"export\"\nquery = \"{SLOW_QUERY}\"\n{}",
                file_task("huge", "huge_file", &root, "")
            ),
        )
        .await;
    // A COPY on the replica, then a file being hashed: each is stopped at the limit.
    for slow in ["slow", "huge"] {
        let started = Instant::now();
        let (run, s) = run_json(&c, &cfg, &["--task", "storage", "--task", slow]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{slow}: aborted at max_pause, took {:?}",
            started.elapsed()
        );
        assert_eq!(s["state"], "aborted", "{s}");
        assert_eq!(c.pause_state(1).await, "not paused");
        let run_id = s["run_id"].as_i64().unwrap();
        let queued = uploads_of_run(&c, run_id).await;
        assert_eq!(queued, 0, "nothing of an aborted run is uploaded");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn export_writes_one_file_per_table_from_the_snapshot() {
    let (c, _p) = cluster_with(
        "scans-export",
        "CREATE SCHEMA s;
         CREATE TABLE a (id int PRIMARY KEY, v text);
         INSERT INTO a SELECT g, 'v' || g FROM generate_series(1, 500) g;
         CREATE TABLE s.\"Odd Name\" (x int);
         INSERT INTO s.\"Odd Name\" SELECT generate_series(1, 7);",
    )
    .await;
    let cfg = c
        .ready_config(
            "export.toml",
            "[[tasks]]\nname = \"dump\"\nkind = \"export\"\ntables = [\"a\", 's.\"Odd Name\"']\n",
        )
        .await;
    let s = run_ok(&c, &cfg, &[]);
    let dir = results_dir(&s);
    let manifest = read_manifest(&dir);
    let files = manifest["tasks"][0]["files"].as_array().unwrap().clone();
    let got: Vec<(String, u64)> = files
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("dump.public.a.csv".to_string(), 500),
            ("dump.s.Odd_Name.csv".to_string(), 7)
        ]
    );
    assert_files_as_listed(&dir, &files);
    assert_eq!(
        std::fs::read_to_string(dir.join("dump.s.Odd_Name.csv"))
            .unwrap()
            .lines()
            .next(),
        Some("x")
    );
    let lsn = manifest["snapshot"]["lsn"].as_str().unwrap();
    assert!(
        files.iter().all(|f| f["snapshot_lsn"] == lsn),
        "every file records the snapshot LSN"
    );
    assert_eq!(
        s["queued"].as_array().unwrap().len(),
        0,
        "exports are not uploaded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn materialize_swaps_the_target_under_a_reader() {
    let (c, p) = cluster_with(
        "scans-materialize",
        "CREATE TABLE words (id int PRIMARY KEY, word text NOT NULL);
         INSERT INTO words SELECT g, 'w' || (g % 100) FROM generate_series(1, 50000) g;
         CREATE TABLE word_counts (word text PRIMARY KEY, n bigint NOT NULL);
         CREATE INDEX word_counts_n ON word_counts (n);
         INSERT INTO word_counts VALUES ('stale', 1);
         CREATE ROLE reader;
         GRANT SELECT ON word_counts TO reader;
         CREATE TABLE word_totals (word text PRIMARY KEY, n bigint NOT NULL);
         INSERT INTO word_totals VALUES ('w1', 0), ('extra', 5);",
    )
    .await;
    let cfg = c.ready_config(
        "mat.toml",
        "[[tasks]]\nname = \"counts\"\nkind = \"materialize\"\n\
         query = \"SELECT word, count(*)::bigint AS n FROM words GROUP BY word\"\ntarget = \"public.word_counts\"\n\
         [[tasks]]\nname = \"totals\"\nkind = \"materialize\"\nmerge_key = [\"word\"]\n\
         query = \"SELECT word, count(*)::bigint AS n FROM words GROUP BY word\"\ntarget = \"word_totals\"\n",
    ).await;
    let s = run_ok(&c, &cfg, &[]);
    let t = task_entry(&s, "counts");
    assert_eq!(t["file"]["rows"].as_u64(), Some(100));

    // A reader queries the target in a loop while the uploader swaps it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (dsn, stop) = (c.primary_dsn(), stop.clone());
        tokio::spawn(async move {
            let r = connect(&dsn).await;
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n: i64 = r
                    .query_one("SELECT count(*) FROM word_counts", &[])
                    .await
                    .unwrap_or_else(|e| panic!("reader got an error during the swap: {e}"))
                    .get(0);
                assert!(n > 0, "reader saw an empty target");
                reads += 1;
            }
            reads
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.run(&cfg, &["uploader", "--once"]).expect_code(0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.await.unwrap() > 10);

    let row = p
        .query_one(
            "SELECT count(*), sum(n)::int8, bool_or(word = 'stale'),
                    (SELECT count(*) FROM pg_indexes WHERE tablename = 'word_counts'),
                    has_table_privilege('reader', 'word_counts', 'SELECT')
               FROM word_counts",
            &[],
        )
        .await
        .unwrap();
    let (count, sum, stale, indexes, granted): (i64, i64, bool, i64, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(
        (count, sum, stale),
        (100, 50000, false),
        "the target holds the snapshot's result"
    );
    assert_eq!(
        (indexes, granted),
        (2, true),
        "indexes and grants survive the swap"
    );

    // The merge task upserted by key: matching rows updated, others kept.
    let row = p
        .query_one(
            "SELECT count(*), (SELECT n FROM word_totals WHERE word = 'w1'), (SELECT n FROM word_totals WHERE word = 'extra')
               FROM word_totals",
            &[],
        )
        .await
        .unwrap();
    let (count, w1, extra): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((count, w1, extra), (101, 500, 5));
}

/// A FIFO listed in the catalog is reported as unreadable; it must not hang the reader
/// (and with it the pause, which would then last until the abort grace).
#[tokio::test(flavor = "multi_thread")]
async fn file_checksum_reports_a_fifo_without_hanging() {
    let c = Cluster::up("scans-fifo", 1);
    let root = c.dir.join("store");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.bin"), b"payload").unwrap();
    let ok = std::process::Command::new("mkfifo")
        .arg(root.join("pipe"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo");
    let p = c.primary().await;
    p.batch_execute(&format!(
        "CREATE TABLE files (id int PRIMARY KEY, rel_path text, md5 text);
         INSERT INTO files VALUES (1, 'a.bin', '{}'), (2, 'pipe', md5(''));",
        md5_hex(b"payload")
    ))
    .await
    .unwrap();
    let cfg = c.ready_config(
        "fifo.toml",
        &format!(
            "[[tasks]]\nname = \"files\"\nkind = \"file_checksum\"\ntable = \"files\"\nkey = \"id\"\n\
             path = \"rel_path\"\nchecksum = \"md5\"\nroot = \"{}\"\n",
            root.display()
        ),
    ).await;
    let mut child = spawn_piped(&c, &cfg, &["run", "--json"]);
    if exited_within(&mut child, Duration::from_secs(60))
        .await
        .is_none()
    {
        child.kill().unwrap();
        panic!("pgmaint run hung on a FIFO");
    }
    let s = run_summary(&finish(child).expect_code(0));
    let id = s["run_id"].as_i64().unwrap();
    let got = run_findings(&c, id, "files");
    assert_eq!(got, vec![("2".to_string(), "unreadable".to_string())]);
    assert_eq!(c.pause_state(1).await, "not paused");
}

/// A file_checksum whose root vanished once the replica was paused (after its checks
/// passed): its readers cannot open it; the task fails with that error at once, rather
/// than the cycle waiting for readers that are gone until `max_pause`.
#[tokio::test(flavor = "multi_thread")]
async fn file_checksum_whose_root_vanished_fails_at_once() {
    let c = Cluster::up("scans-root-gone", 1);
    let root = c.dir.join("store");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.bin"), b"payload").unwrap();
    let p = c.primary().await;
    p.batch_execute(&format!(
        "CREATE TABLE files (id int PRIMARY KEY, rel_path text, md5 text);
         INSERT INTO files SELECT g, 'a.bin', '{}' FROM generate_series(1, 500) g;",
        md5_hex(b"payload")
    ))
    .await
    .unwrap();
    let cfg = c
        .ready_config(
            "gone.toml",
            &format!(
                "{}[[tasks]]\nname = \"files\"\nkind = \"file_checksum\"\ntable = \"files\"\nkey = \"id\"\n\
                 path = \"rel_path\"\nchecksum = \"md5\"\nroot = \"{}\"\nparallelism = 2\n",
                sleepy_task("nap", 2.0, ""),
                root.display()
            ),
        )
        .await;
    let mut child = spawn_piped(&c, &cfg, &["run", "--json"]);
    wait_paused(&c, 1).await;
    std::fs::remove_dir_all(&root).unwrap();
    if exited_within(&mut child, Duration::from_secs(60))
        .await
        .is_none()
    {
        child.kill().unwrap();
        panic!("pgmaint run hung on a file_checksum without readers");
    }
    let s = run_summary(&finish(child).expect_code(1));
    let files = &s["tasks"][1];
    assert_eq!(files["name"], "files", "{s:#}");
    assert_eq!(files["status"], "failed", "{s:#}");
    assert!(
        files["error"]
            .as_str()
            .unwrap()
            .contains(root.to_str().unwrap()),
        "{s:#}"
    );
    assert_eq!(s["tasks"][0]["status"], "completed", "{s:#}");
    assert_eq!(c.pause_state(1).await, "not paused");
}

/// Issue 13, item 3: a row_checksum whose checksum column is the wrong one finds every
/// row. Past `max_findings` it stops, `failed` with the contract's message; nothing of it
/// is queued or uploaded, while the other task's findings are; the replica is resumed.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_findings_fails_the_task_and_uploads_nothing_of_it() {
    let (c, p) = blobs_cluster("scans-flood", 6_000).await;
    p.batch_execute(
        "ALTER TABLE public.blobs ADD COLUMN name_md5 text;
         UPDATE public.blobs SET name_md5 = md5(id::text);
         UPDATE public.blobs SET payload_md5 = md5('tampered') WHERE id = 4242;",
    )
    .await
    .unwrap();
    let tasks = blobs_task("")
        + &row_checksum_task(
            "wrong",
            BLOBS,
            "id",
            "payload",
            "name_md5",
            "max_findings = 100\nparallelism = 2",
        );
    let cfg = c.ready_config("flood.toml", &tasks).await;

    let (run, s) = run_json(&c, &cfg, &[]);
    assert_eq!(run.code, 1, "a failed task fails the run: {}", run.stderr);
    let message = "more than 100 findings: is the checksum column right?";
    let wrong = task_entry(&s, "wrong");
    assert_eq!(wrong["status"], "failed", "{s:#}");
    assert_eq!(wrong["error"], message, "{s:#}");
    let line = run.error_line().unwrap();
    assert!(
        line.contains(&format!("task wrong failed: {message}")),
        "{line}"
    );
    assert_eq!(c.pause_state(1).await, "not paused");

    let id = s["run_id"].as_i64().unwrap();
    let manifest = manifest(&c.results_dir(), id);
    assert!(
        task_entry(&manifest, "wrong")["file"].is_null(),
        "no data file of the flooded task in the manifest: {manifest:#}"
    );
    let queued: Vec<String> = c
        .primary()
        .await
        .query(
            "SELECT task_name FROM pgmaint.upload_tasks WHERE run_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(queued, ["blobs"]);

    c.run(&cfg, &["uploader", "--once"]).expect_code(0);
    let uploaded: Vec<(String, String)> = c
        .primary()
        .await
        .query(
            "SELECT task_name, row_key FROM pgmaint.integrity_findings WHERE run_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(uploaded, [("blobs".to_string(), "4242".to_string())]);
}
