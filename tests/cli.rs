//! The command line itself (issue 12): shell completions and the man page, generated
//! without a config or a server, and the exit codes that tell a server that could not
//! be reached (3) from a bad config (2).

use std::path::{Path, PathBuf};
use std::process::Command;

use pgmaint_e2e::*;

/// `pgmaint ARGS…` with `config` as its config file and no DSN overrides.
fn pgmaint(config: &Path, args: &[&str]) -> Run {
    let out = Command::new(pgmaint_bin())
        .args(args)
        .env("PGMAINT_CONFIG", config)
        .env_remove("PGMAINT_PRIMARY")
        .env_remove("PGMAINT_REPLICA")
        .output()
        .expect("run pgmaint");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The one stderr line of a failed command, which must name `needle`.
fn only_error<'a>(run: &'a Run, needle: &str) -> &'a str {
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    let line = run.error_line().expect("an error line");
    assert!(line.contains(needle), "{needle}: {line}");
    line
}

fn scratch(name: &str) -> PathBuf {
    let dir = repo().join("target/e2e").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn completions_and_the_man_page_need_no_config_and_no_server() {
    let missing = Path::new("/nonexistent/pgmaint.toml");
    let bash = pgmaint(missing, &["completions", "bash"]).expect_code(0);
    assert!(bash.stderr.is_empty(), "{}", bash.stderr);
    // bash can source it, and it then completes pgmaint.
    let script = scratch("cli-completions").join("pgmaint.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    let sourced = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p pgmaint",
            script.display()
        ))
        .output()
        .unwrap();
    assert!(
        sourced.status.success(),
        "{}",
        String::from_utf8_lossy(&sourced.stderr)
    );
    assert!(String::from_utf8_lossy(&sourced.stdout).contains("pgmaint"));
    for shell in ["zsh", "fish"] {
        let out = pgmaint(missing, &["completions", shell]).expect_code(0);
        assert!(
            out.stdout.contains("pgmaint") && out.stdout.contains("daemon"),
            "{shell}: {}",
            out.stdout
        );
    }
    // An unknown shell is bad usage (clap's own message).
    pgmaint(missing, &["completions", "tcsh"])
        .expect_code(2)
        .expect_stderr("invalid value 'tcsh'");

    let man = pgmaint(missing, &["man"]).expect_code(0);
    // roff: the page header, then the sections.
    assert!(man.stdout.starts_with('.'), "{}", man.stdout);
    assert!(man.stdout.contains(".TH pgmaint 1"), "{}", man.stdout);
    assert!(man.stdout.contains("daemon") && man.stdout.contains(".SH"));
}

/// Without a server: a closed port is exit 3, a typo in the config exit 2; each one
/// line naming the field.
#[test]
fn an_unreachable_primary_is_exit_3_and_a_config_typo_exit_2() {
    let dir = scratch("cli-exit-codes");
    let base = format!(
        "[primary]\ndsn = \"host=127.0.0.1 port={} user=postgres dbname=app connect_timeout=2\"\n\
         [[replicas]]\nname = \"r1\"\ndsn = \"host=127.0.0.1 port={} user=postgres\"\n\
         [results]\ndir = \"{}\"\n",
        closed_port(),
        closed_port(),
        dir.join("results").display()
    );
    let cfg = dir.join("closed.toml");
    std::fs::write(&cfg, &base).unwrap();
    let out = dir.join("dump-out");
    let out = out.to_str().unwrap();
    let main_commands: [&[&str]; 11] = [
        &["status"],
        &["status", "--json"],
        &["init"],
        &["tasks", "list"],
        &["tasks", "list", "--json"],
        &["run"],
        &["run", "--json"],
        &["uploader", "--once"],
        &["recover"],
        &["dump", "--out", out],
        &["daemon"],
    ];
    for args in main_commands {
        let run = pgmaint(&cfg, args).expect_code(3);
        only_error(&run, "primary.dsn: cannot connect (host=127.0.0.1");
        // --json: nothing on stdout but a JSON document (here: nothing at all).
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
    }
    // check reports the unreachable servers as its own lines, then exit 3.
    let check = pgmaint(&cfg, &["check", "--json"]).expect_code(3);
    let doc = check.assert_json_document();
    assert_eq!(doc["ok"], false);
    // A name that does not resolve is no answer either.
    let dns = dir.join("dns.toml");
    std::fs::write(
        &dns,
        base.replacen("host=127.0.0.1", "host=pgmaint-test.invalid", 1),
    )
    .unwrap();
    only_error(&pgmaint(&dns, &["status"]).expect_code(3), "primary.dsn");

    let typo = dir.join("typo.toml");
    std::fs::write(&typo, format!("{base}[limits]\nmax_pause = \"2 hours\"\n")).unwrap();
    let run = pgmaint(&typo, &["status"]).expect_code(2);
    only_error(&run, "limits.max_pause: bad duration \"2 hours\"");
    // A misspelt field is exit 2 for every command that reads the config, before any
    // server is tried (the primary here does not answer: that would be 3).
    let misspelt = dir.join("misspelt.toml");
    std::fs::write(&misspelt, format!("{base}[limits]\nmax_pasue = \"2h\"\n")).unwrap();
    for args in
        main_commands
            .iter()
            .copied()
            .chain([&["check"][..], &["check", "--json"], &["promote"]])
    {
        let run = pgmaint(&misspelt, args).expect_code(2);
        only_error(&run, "max_pasue");
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
    }
}

/// An invalid `--log` filter is one line and exit 2, before anything else (no config
/// is read, no server tried); a valid one is taken.
#[test]
fn an_invalid_log_filter_is_exit_2_not_a_silent_fallback() {
    let missing = Path::new("/nonexistent/pgmaint.toml");
    for filter in ["debg", "pgmaint=loud", ""] {
        let run = pgmaint(missing, &["--log", filter, "status"]).expect_code(2);
        only_error(&run, "--log");
    }
    // The environment variable is checked the same way.
    let out = Command::new(pgmaint_bin())
        .args(["status"])
        .env("PGMAINT_CONFIG", missing)
        .env("PGMAINT_LOG", "verbose")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log \"verbose\""));
    // A valid filter gets as far as the config (missing: exit 2, naming the file).
    let run = pgmaint(missing, &["--log", "warn,pgmaint::cycle=debug", "status"]).expect_code(2);
    only_error(&run, "/nonexistent/pgmaint.toml");
}

/// With a server: one that turns the DSN down is the config's problem (2); one that
/// takes no connection now (SQLSTATE class 53), or a replica the command needs that
/// does not answer, is exit 3.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_says_no_is_exit_2_one_that_cannot_be_reached_exit_3() {
    let c = Cluster::up("cli-reach", 1);
    let init = c.write_config("init.toml", "");
    c.run(&init, &["init"]).expect_code(0);
    let p = c.primary().await;
    p.batch_execute("CREATE ROLE capped LOGIN CONNECTION LIMIT 0")
        .await
        .unwrap();
    let port = c.primary_port();
    let with_primary = |file: &str, dsn: String| {
        let text = std::fs::read_to_string(&init)
            .unwrap()
            .replacen(&c.primary_dsn(), &dsn, 1);
        let path = c.dir.join(file);
        std::fs::write(&path, text).unwrap();
        path
    };
    let no_role = with_primary(
        "no-role.toml",
        format!("host=127.0.0.1 port={port} user=nosuchrole dbname=app"),
    );
    let run = c.run(&no_role, &["status"]).expect_code(2);
    only_error(&run, "primary.dsn: cannot connect");
    assert!(run.stderr.contains("nosuchrole"), "{}", run.stderr);
    let no_db = with_primary(
        "no-db.toml",
        format!("host=127.0.0.1 port={port} user=postgres dbname=nosuchdb"),
    );
    only_error(
        &c.run(&no_db, &["tasks", "list"]).expect_code(2),
        "primary.dsn",
    );
    let capped = with_primary(
        "capped.toml",
        format!("host=127.0.0.1 port={port} user=capped dbname=app"),
    );
    let run = c.run(&capped, &["status"]).expect_code(3);
    only_error(&run, "too many connections");

    // A replica the run needs, silent: by name, and every one the pool could choose.
    let gone = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        closed_port()
    );
    let cfg = c.write_config(
        "gone.toml",
        &format!(
            "[[replicas]]\nname = \"gone\"\ndsn = \"{gone}\"\n{}",
            blobs_task("")
        ),
    );
    let run = c.run(&cfg, &["run", "--replica", "gone"]).expect_code(3);
    only_error(&run, "cannot connect");
    assert!(run.stderr.contains("replicas[1].dsn"), "{}", run.stderr);
    let body = |name: &str| {
        format!(
            "[[replicas]]\nname = \"{name}\"\ndsn = \"host=127.0.0.1 port={} user=postgres dbname=app connect_timeout=2\"\n",
            closed_port()
        )
    };
    let all_gone = c.dir.join("all-gone.toml");
    std::fs::write(
        &all_gone,
        format!(
            "[primary]\ndsn = \"{}\"\n{}{}[results]\ndir = \"{}\"\n{}",
            c.primary_dsn(),
            body("a"),
            body("b"),
            c.results_dir().display(),
            blobs_task("")
        ),
    )
    .unwrap();
    // The pool logs each replica it skipped; the error is one line naming both.
    let run = c.run(&all_gone, &["run"]).expect_code(3);
    let line = run.error_line().expect("an error line");
    assert!(
        line.contains("no replica can be paused now")
            && line.contains("replicas[0].dsn")
            && line.contains("replicas[1].dsn"),
        "{line}"
    );
    assert_eq!(c.pause_state(1).await, "not paused");
}
