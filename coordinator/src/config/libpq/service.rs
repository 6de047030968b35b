//! The connection service file (`pg_service.conf`), read as libpq's `parseServiceFile`
//! reads it (fe-connect.c): <https://www.postgresql.org/docs/current/libpq-pgservice.html>
//!
//! An INI file: `[name]` starts a service, `keyword=value` lines under it are libpq
//! connection keywords, `#` lines and blank lines are skipped, spaces around a line are
//! not part of it. A service is looked for in the user's file (`PGSERVICEFILE`, else
//! `~/.pg_service.conf`) and, when it is not there, in `PGSYSCONFDIR/pg_service.conf`.

use std::path::{Path, PathBuf};

/// The `keyword=value` pairs of service `name` in `text`, or `None` when the file has
/// no such service. `Err` names the line at fault.
pub fn find(text: &str, name: &str) -> Result<Option<Vec<(String, String)>>, String> {
    let mut in_service = false;
    let mut found = None::<Vec<(String, String)>>;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(group) = line.strip_prefix('[') {
            let group = group
                .strip_suffix(']')
                .ok_or_else(|| format!("line {}: a service name needs a closing ]", i + 1))?;
            in_service = group == name;
            if in_service && found.is_none() {
                found = Some(Vec::new());
            }
            continue;
        }
        if !in_service {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: syntax error (no \"=\")", i + 1))?;
        let key = key.trim();
        if key == "service" {
            return Err(format!(
                "line {}: nested service specifications not supported",
                i + 1
            ));
        }
        let pairs = found.as_mut().expect("set when the service starts");
        // As libpq: the first value of a keyword in the service stays.
        if !pairs.iter().any(|(k, _)| k == key) {
            pairs.push((key.to_string(), value.trim().to_string()));
        }
    }
    Ok(found)
}

/// The files searched for a service, in order: the user's, then the system's.
pub fn files(env: &dyn Fn(&str) -> Option<String>, home: Option<&Path>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    match env("PGSERVICEFILE") {
        Some(f) => files.push(PathBuf::from(f)),
        None => files.extend(home.map(|h| h.join(".pg_service.conf"))),
    }
    // Debian's libpq looks in /etc/postgresql-common when PGSYSCONFDIR is not set.
    let sysconf = env("PGSYSCONFDIR").unwrap_or_else(|| "/etc/postgresql-common".into());
    files.push(Path::new(&sysconf).join("pg_service.conf"));
    files
}

/// Service `name` from the first of `files` that defines it, with that file's path.
/// A missing file is skipped; an unreadable or malformed one, or a service defined
/// nowhere, is an error.
pub fn lookup(files: &[PathBuf], name: &str) -> Result<(PathBuf, Vec<(String, String)>), String> {
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read service file {}: {e}", file.display())),
        };
        match find(&text, name) {
            Ok(Some(pairs)) => return Ok((file.clone(), pairs)),
            Ok(None) => continue,
            Err(e) => return Err(format!("service file {}: {e}", file.display())),
        }
    }
    let looked: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    Err(format!(
        "definition of service {name:?} not found (looked in {})",
        looked.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# pgmaint's services
[other]
host=elsewhere

[main]
  host = db1.example
port=5433
dbname=app
user=pgm
password=a=b
host=ignored
[main-replica]
host=db2
";

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, x)| (k.to_string(), x.to_string()))
            .collect()
    }

    #[test]
    fn a_service_gives_its_own_keywords_only() {
        type Case = (&'static str, Option<Vec<(String, String)>>);
        let cases: &[Case] = &[
            (
                "main",
                Some(pairs(&[
                    ("host", "db1.example"),
                    ("port", "5433"),
                    ("dbname", "app"),
                    ("user", "pgm"),
                    ("password", "a=b"),
                ])),
            ),
            ("main-replica", Some(pairs(&[("host", "db2")]))),
            ("other", Some(pairs(&[("host", "elsewhere")]))),
            ("missing", None),
            ("mai", None),
        ];
        for (name, want) in cases {
            assert_eq!(&find(FILE, name).unwrap(), want, "{name}");
        }
    }

    #[test]
    fn malformed_lines_are_named() {
        assert_eq!(
            find("[s]\nhost db1\n", "s").unwrap_err(),
            "line 2: syntax error (no \"=\")"
        );
        assert_eq!(
            find("[s\n", "s").unwrap_err(),
            "line 1: a service name needs a closing ]"
        );
        assert!(find("[s]\nservice=t\n", "s")
            .unwrap_err()
            .contains("nested service"));
        // A malformed line of another service does not matter.
        assert_eq!(
            find("[t]\nnonsense\n[s]\nport=1\n", "s").unwrap(),
            Some(pairs(&[("port", "1")]))
        );
    }

    #[test]
    fn the_user_file_comes_first_then_the_system_one() {
        let dir = std::env::temp_dir().join(format!("pgsvc-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("user.conf"), "[a]\nhost=user\n").unwrap();
        std::fs::write(
            dir.join("etc/pg_service.conf"),
            "[a]\nhost=sys\n[b]\nhost=sys-b\n",
        )
        .unwrap();
        let etc = dir.join("etc").display().to_string();
        let user = dir.join("user.conf").display().to_string();
        let env = |k: &str| match k {
            "PGSERVICEFILE" => Some(user.clone()),
            "PGSYSCONFDIR" => Some(etc.clone()),
            _ => None,
        };
        let list = files(&env, None);
        assert_eq!(lookup(&list, "a").unwrap().1, pairs(&[("host", "user")]));
        let (file, b) = lookup(&list, "b").unwrap();
        assert_eq!(
            (file, b),
            (dir.join("etc/pg_service.conf"), pairs(&[("host", "sys-b")]))
        );
        assert!(lookup(&list, "c")
            .unwrap_err()
            .starts_with("definition of service \"c\" not found"));
        let none = |_: &str| None;
        assert_eq!(
            files(&none, Some(Path::new("/home/u"))),
            vec![
                PathBuf::from("/home/u/.pg_service.conf"),
                PathBuf::from("/etc/postgresql-common/pg_service.conf")
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
