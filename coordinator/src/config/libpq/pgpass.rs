//! The password file (`~/.pgpass`, `PGPASSFILE`, the `passfile` key), read as libpq's
//! `passwordFromFile` reads it (fe-connect.c):
//! <https://www.postgresql.org/docs/current/libpq-pgpass.html>
//!
//! - one `hostname:port:database:username:password` entry a line; `#` lines are
//!   comments; the first entry that matches wins;
//! - a field that is exactly `*` matches anything; `\:` and `\\` stand for `:` and `\`;
//! - the password runs to the end of the line (or to an unescaped `:`);
//! - an empty host or a Unix-socket directory is matched as `localhost` too;
//! - a file that is not a plain file, or that its group or others may read, write or
//!   execute, is ignored with a warning naming it (libpq: "permissions should be u=rw
//!   (0600) or less").

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What a connection attempt is matched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// Host name, address or socket directory; empty when none.
    pub host: &'a str,
    /// Port, as text.
    pub port: &'a str,
    /// Database name.
    pub dbname: &'a str,
    /// Role name.
    pub user: &'a str,
}

/// Whether the host is matched as `localhost` as well: none, or a Unix socket.
fn is_local(host: &str) -> bool {
    host.is_empty() || host.starts_with('/') || host.starts_with('@')
}

/// The rest of `line` after its next field if that field matches `value` (or is `*`).
fn match_field<'l>(line: &'l str, value: &str) -> Option<&'l str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut field = String::new();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, e)) => field.push(e),
                None => return None,
            },
            ':' => return (field == value).then(|| &line[i + 1..]),
            c => field.push(c),
        }
    }
    None
}

/// The password field of a matching line: up to an unescaped `:`, de-escaped.
fn password_field(rest: &str) -> String {
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e) => out.push(e),
                None => out.push('\\'),
            },
            ':' => break,
            c => out.push(c),
        }
    }
    out
}

/// The password of the first line of `text` that matches `target`, if any (an empty
/// password counts as none, as in libpq).
pub fn lookup(text: &str, target: &Target) -> Option<String> {
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let after_host = match_field(line, target.host).or_else(|| {
            is_local(target.host)
                .then(|| match_field(line, "localhost"))
                .flatten()
        });
        let rest = after_host
            .and_then(|r| match_field(r, target.port))
            .and_then(|r| match_field(r, target.dbname))
            .and_then(|r| match_field(r, target.user));
        if let Some(rest) = rest {
            let password = password_field(rest);
            return (!password.is_empty()).then_some(password);
        }
    }
    None
}

/// The text of the password file at `path`, or `None` when it is missing, not a plain
/// file or readable by group or others (then with a warning naming it, as libpq).
pub fn read(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!(file = %path.display(), "password file is not a plain file; ignored");
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            "password file has group or world access; permissions should be u=rw (0600) or less; ignored"
        );
        return None;
    }
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the password file; ignored");
            None
        }
    }
}

/// One line for `password` that matches every host, port, database and role: what
/// pgmaint hands pg_dump in a private password file.
pub fn wildcard_line(password: &str) -> String {
    let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:*:{escaped}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Target = Target {
        host: "db1",
        port: "5432",
        dbname: "app",
        user: "alice",
    };

    fn with(
        host: &'static str,
        port: &'static str,
        dbname: &'static str,
        user: &'static str,
    ) -> Target<'static> {
        Target {
            host,
            port,
            dbname,
            user,
        }
    }

    #[test]
    fn lines_match_as_libpq_matches_them() {
        let cases: &[(&str, Target, Option<&str>)] = &[
            ("db1:5432:app:alice:s3cret", T, Some("s3cret")),
            ("db2:5432:app:alice:no", T, None),
            ("db1:5433:app:alice:no", T, None),
            ("db1:5432:other:alice:no", T, None),
            ("db1:5432:app:bob:no", T, None),
            ("*:*:*:*:any", T, Some("any")),
            ("*:5432:*:alice:w", T, Some("w")),
            // `*` is a wildcard only as a whole field.
            ("db*:5432:app:alice:no", T, None),
            // Escapes: `\:` in a field and in the password, `\\` for a backslash.
            (
                r"h\:1:5432:app:alice:a\:b\\c",
                with("h:1", "5432", "app", "alice"),
                Some(r"a:b\c"),
            ),
            (r"db1:5432:app:alice:ends:here", T, Some("ends")),
            // `localhost` matches no host and a Unix socket, and the socket's own name too.
            (
                "localhost:5432:app:alice:local",
                with("", "5432", "app", "alice"),
                Some("local"),
            ),
            (
                "localhost:5432:app:alice:sock",
                with("/var/run/postgresql", "5432", "app", "alice"),
                Some("sock"),
            ),
            (
                "/tmp:5432:app:alice:tmp",
                with("/tmp", "5432", "app", "alice"),
                Some("tmp"),
            ),
            (
                "localhost:5432:app:alice:no",
                with("127.0.0.1", "5432", "app", "alice"),
                None,
            ),
            // Comments, blank lines, short lines, empty passwords, CRLF.
            ("# db1:5432:app:alice:no", T, None),
            ("", T, None),
            ("db1:5432:app", T, None),
            ("db1:5432:app:alice:", T, None),
            ("db1:5432:app:alice:crlf\r", T, Some("crlf")),
        ];
        for (line, target, want) in cases {
            assert_eq!(
                lookup(line, target).as_deref(),
                *want,
                "{line:?} for {target:?}"
            );
        }
    }

    #[test]
    fn the_first_matching_line_wins() {
        let text = "other:*:*:*:x\n*:5432:app:alice:first\ndb1:5432:app:alice:second\n";
        assert_eq!(lookup(text, &T).as_deref(), Some("first"));
    }

    #[test]
    fn a_file_others_may_read_is_refused_and_a_private_one_read() {
        let dir = std::env::temp_dir().join(format!("pgpass-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(&file, "*:*:*:*:pw\n").unwrap();
        for (mode, readable) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o660, false),
        ] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(read(&file).is_some(), readable, "mode {mode:o}");
        }
        assert!(read(&dir).is_none(), "a directory");
        assert!(read(&dir.join("missing")).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_wildcard_line_gives_back_the_password() {
        for pw in ["plain", r"a:b\c", "trailing\\"] {
            assert_eq!(lookup(&wildcard_line(pw), &T).as_deref(), Some(pw));
        }
    }
}
