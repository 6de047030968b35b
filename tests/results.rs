//! Who may read results (`results.mode`), and `pgmaint.current_findings`, against a
//! real primary and streaming replica.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pgmaint_e2e::*;

/// The permission bits of `path`.
fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file and directory under `dir` (not `dir` itself), with its mode, sorted.
fn modes_under(dir: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let is_dir = path.is_dir();
        all.push((path.clone(), mode_of(&path), is_dir));
        if is_dir {
            all.extend(modes_under(&path));
        }
    }
    all.sort();
    all
}

/// `dir` has mode `dir_mode`, and everything in it `file_mode` (files) or `dir_mode`
/// (subdirectories); it holds at least `min_files` files.
fn assert_modes(dir: &Path, dir_mode: u32, file_mode: u32, min_files: usize) {
    assert_eq!(mode_of(dir), dir_mode, "{}", dir.display());
    let all = modes_under(dir);
    for (path, mode, is_dir) in &all {
        let want = if *is_dir { dir_mode } else { file_mode };
        assert_eq!(*mode, want, "{:o} for {}", mode, path.display());
    }
    let files = all.iter().filter(|(_, _, d)| !d).count();
    assert!(
        files >= min_files,
        "{files} files in {}: {all:?}",
        dir.display()
    );
}

const EXPORT: &str = "[[tasks]]\nname = \"exp\"\nkind = \"export\"\ntables = [\"blobs\"]\n";

#[tokio::test(flavor = "multi_thread")]
async fn results_and_dumps_are_private_unless_results_mode_lets_the_group_read() {
    let (c, _p) = blobs_cluster("results-mode", 50).await;
    let tasks = format!("{EXPORT}{}", blobs_task(""));
    let cfg = c.ready_config("private.toml", &tasks).await;

    // Default: files 0600, the run directory 0700 (export, findings CSV, manifest).
    let id = run_ok(&c, &cfg, &[])["run_id"].as_i64().unwrap();
    assert_modes(&c.results_dir().join(id.to_string()), 0o700, 0o600, 3);

    // `dump --out` that pgmaint creates: 0700, pg_dump's files and the manifest 0600.
    let out = c.dir.join("dump-new");
    c.run(&cfg, &["dump", "--out", out.to_str().unwrap()])
        .expect_code(0);
    assert_modes(&out, 0o700, 0o600, 3);
    assert!(out.join("toc.dat").is_file() && out.join("manifest.json").is_file());

    // An existing empty --out is the operator's: its mode is left, the files are 0600.
    let existing = c.dir.join("dump-existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
    c.run(&cfg, &["dump", "--out", existing.to_str().unwrap()])
        .expect_code(0);
    assert_eq!(mode_of(&existing), 0o755);
    for (path, mode, _) in modes_under(&existing) {
        assert_eq!(mode, 0o600, "{}", path.display());
    }

    // results.mode = "0640": files 0640, directories pgmaint creates 0750, a named
    // dump's directory and its subdirectory included (with the marker).
    let named = c.dir.join("named");
    let group = c.write_config(
        "group.toml",
        &format!(
            "mode = \"0640\"\n{tasks}[[dumps]]\nname = \"nightly\"\nout = \"{}\"\n",
            named.display()
        ),
    );
    let id = run_ok(&c, &group, &[])["run_id"].as_i64().unwrap();
    assert_modes(&c.results_dir().join(id.to_string()), 0o750, 0o640, 3);
    c.run(&group, &["dump", "--name", "nightly"]).expect_code(0);
    assert_modes(&named, 0o750, 0o640, 4);
    let sub = std::fs::read_dir(&named)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(sub.join("pgmaint-dump.json").is_file(), "{}", sub.display());

    // A world bit is refused before anything runs: one line naming the field, exit 2.
    let world = c.write_config("world.toml", &format!("mode = \"0644\"\n{tasks}"));
    let refused = c.run(&world, &["run"]).expect_code(2);
    let line = refused.error_line().unwrap();
    assert!(line.contains("results.mode: 0644"), "{}", refused.stderr);
    assert_eq!(c.pause_state(1).await, "not paused");
}

/// The rows of `pgmaint.current_findings` for task `blobs`: (run_id, row_key).
async fn current(c: &Cluster) -> Vec<(i64, String)> {
    let p = c.primary().await;
    pair_rows(
        &p,
        "SELECT run_id, row_key FROM pgmaint.current_findings WHERE task_name = $1
          ORDER BY row_key::int",
        &[&"blobs"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn current_findings_are_those_of_the_latest_uploaded_run_that_still_hold() {
    let (c, p) = blobs_cluster("results-current", 50).await;
    p.execute(
        "UPDATE public.blobs SET payload_md5 = 'x' WHERE id = ANY($1)",
        &[&vec![3i64, 5, 7]],
    )
    .await
    .unwrap();
    let cfg = c.ready_config("t.toml", &blobs_task("")).await;
    let run = |c: &Cluster| run_ok(c, &cfg, &[])["run_id"].as_i64().unwrap();

    let first = run(&c);
    c.run(&cfg, &["uploader", "--once"]).expect_code(0);
    let keys = |rows: &[(i64, String)]| rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>();
    let now = current(&c).await;
    assert_eq!(keys(&now), ["3", "5", "7"]);
    assert!(now.iter().all(|r| r.0 == first), "{now:?}");

    // Row 3 fixed before the second run; row 5 after its snapshot, before its upload.
    let fix = "UPDATE public.blobs SET payload_md5 = md5(payload) WHERE id = $1";
    p.execute(fix, &[&3i64]).await.unwrap();
    c.wait_caught_up(1).await;
    let second = run(&c);
    assert_eq!(run_findings(&c, second, "blobs").len(), 2);
    // Not uploaded yet: the first run's findings are still the current ones.
    assert_eq!(keys(&current(&c).await), ["3", "5", "7"]);
    p.execute(fix, &[&5i64]).await.unwrap();
    c.run(&cfg, &["uploader", "--once"]).expect_code(0);
    assert_eq!(current(&c).await, [(second, "7".to_string())]);
    let holds: Option<bool> = scalar(
        &p,
        "SELECT still_holds FROM pgmaint.integrity_findings WHERE run_id = $1 AND row_key = '5'",
        &[&second],
    )
    .await;
    assert_eq!(holds, Some(false), "fixed after the snapshot");

    // A latest run that found nothing: no current findings for the task.
    p.execute(fix, &[&7i64]).await.unwrap();
    c.wait_caught_up(1).await;
    let third = run(&c);
    assert!(run_findings(&c, third, "blobs").is_empty());
    c.run(&cfg, &["uploader", "--once"]).expect_code(0);
    assert_eq!(current(&c).await, []);
    // The history stays in pgmaint.integrity_findings.
    assert_eq!(
        count(&p, "SELECT count(*) FROM pgmaint.integrity_findings").await,
        5
    );
}
