//! Errors as one line for an operator: the chain of causes without repeats, and the
//! server's message and SQLSTATE instead of the driver's bare "db error".

/// `anyhow`'s `{:#}` prints every cause of a chain, so an error whose message already
/// holds its cause ("path: No space left on device" caused by "No space left on
/// device") reads twice. This prints each piece once.
pub trait OneLine {
    /// The error and its causes, `: `-separated, each once, on one line.
    fn one_line(&self) -> String;
}

impl OneLine for anyhow::Error {
    fn one_line(&self) -> String {
        let mut out = String::new();
        for cause in self.chain() {
            let text = match cause.downcast_ref::<tokio_postgres::Error>() {
                Some(pg) => snapshot_runner::pg_error::describe(pg),
                None => cause.to_string(),
            };
            if !out.contains(&text) {
                if !out.is_empty() {
                    out.push_str(": ");
                }
                out.push_str(&text);
            }
            // The driver's description already holds the server's message.
            if cause.is::<tokio_postgres::Error>() {
                break;
            }
        }
        out.replace('\n', " ")
    }
}

/// `reason: error`, unless the error already says the reason (an abort reported by
/// the work it stopped: "cancelled by SIGTERM", not "cancelled by SIGTERM: cancelled
/// by SIGTERM").
pub fn with_reason(reason: &impl std::fmt::Display, e: &anyhow::Error) -> String {
    let (reason, text) = (reason.to_string(), e.one_line());
    if text.starts_with(&reason) {
        text
    } else {
        format!("{reason}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "No space left on device (os error 28)",
        );
        let msg = format!("/r/1/t.csv: {io}");
        let e = anyhow::Error::new(io).context(msg);
        assert_eq!(
            e.one_line(),
            "/r/1/t.csv: No space left on device (os error 28)"
        );
        let e: anyhow::Result<()> = Err(anyhow::anyhow!("primary unreachable")).context("writing");
        assert_eq!(e.unwrap_err().one_line(), "writing: primary unreachable");
    }

    #[test]
    fn an_abort_reason_is_said_once() {
        let e = anyhow::anyhow!("cancelled by SIGTERM");
        assert_eq!(
            with_reason(&"cancelled by SIGTERM", &e),
            "cancelled by SIGTERM"
        );
        let e = anyhow::anyhow!("results discarded, nothing queued");
        assert_eq!(
            with_reason(&"snapshot no longer valid: x", &e),
            "snapshot no longer valid: x: results discarded, nothing queued"
        );
    }
}
