//! `primary_conninfo` with another host and port: how a follower is re-pointed at a new
//! primary after a failover (`ALTER SYSTEM SET primary_conninfo`, then a reload).
//!
//! A libpq connection string is `keyword = value` pairs; a value may be single-quoted,
//! with `\'` and `\\` escapes inside (libpq's conninfo_parse). Only the host and port
//! change: `user`, `passfile`, `sslmode`, `application_name` and everything else that
//! the replica's operator set stay exactly as they were.

/// The `keyword=value` pairs of a conninfo string, in order.
pub fn parse(conninfo: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            // Never echo the text: it may be part of a password with a space in it.
            return Err(match pairs.last() {
                Some((prev, _)) => format!(
                    "missing \"=\" after the value of `{prev}` in connection string (a value with spaces must be \
                     single-quoted)"
                ),
                None => "missing \"=\" after the first word of the connection string".to_string(),
            });
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or("unterminated quoted value")?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value of {key:?}")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    value.push(chars.next().ok_or("trailing backslash")?);
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        pairs.push((key, value));
    }
}

/// Quote a value as libpq reads it back.
pub fn quote(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// `conninfo` pointed at `host`:`port`: `host` and `port` replaced (or added),
/// `hostaddr` removed (it would override the host), everything else kept.
pub fn with_host(conninfo: &str, host: &str, port: u16) -> Result<String, String> {
    let mut out: Vec<(String, String)> = parse(conninfo)?
        .into_iter()
        .filter(|(k, _)| k != "host" && k != "port" && k != "hostaddr")
        .collect();
    out.push(("host".into(), host.into()));
    out.push(("port".into(), port.to_string()));
    Ok(out
        .iter()
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect::<Vec<_>>()
        .join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_keeps_its_settings_and_gets_the_new_host() {
        let before = "user=postgres passfile='/var/lib/postgresql/.pgpass' channel_binding=prefer \
                      host=127.0.0.1 port=55432 sslmode=prefer application_name='my standby'";
        let after = with_host(before, "10.0.0.7", 5433).unwrap();
        assert_eq!(
            after,
            "user=postgres passfile=/var/lib/postgresql/.pgpass channel_binding=prefer sslmode=prefer \
             application_name='my standby' host=10.0.0.7 port=5433"
        );
        // Read back, it says the same.
        let pairs = parse(&after).unwrap();
        assert!(pairs.contains(&("application_name".into(), "my standby".into())));
        assert!(pairs.contains(&("host".into(), "10.0.0.7".into())));
        // hostaddr would win over host: it goes.
        assert_eq!(
            with_host("hostaddr=1.2.3.4 port=1 user=x", "h", 2).unwrap(),
            "user=x host=h port=2"
        );
    }

    #[test]
    fn quotes_and_escapes_survive_a_round_trip() {
        let pairs = parse(r"password='it\'s a \\ secret' dbname = app options='-c x=1'").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("password".to_string(), r"it's a \ secret".to_string()),
                ("dbname".to_string(), "app".to_string()),
                ("options".to_string(), "-c x=1".to_string()),
            ]
        );
        let again = with_host(r"password='it\'s a \\ secret'", "h", 1).unwrap();
        assert_eq!(parse(&again).unwrap()[0].1, r"it's a \ secret");
        assert!(parse("host").is_err());
        assert!(parse("a='open").is_err());
    }
}
