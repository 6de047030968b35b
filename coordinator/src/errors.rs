//! Errors and exit codes. An error is classed where it arises: the operator's input
//! (config, arguments, a server that turns the configured DSN down) is a
//! [`UsageError`], exit code 2; a server that cannot be reached (no answer, or no
//! connection taken now) is an [`UnreachableError`], exit code 3; anything else is a
//! runtime failure, exit code 1. [`ErrorClass::of`] is the one place that reads the
//! class back.

/// An error in the operator's input: config, arguments, a DSN a server turns down
/// (authentication, an unknown database).
#[derive(Debug, Clone)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

/// A server a command needs could not be reached: no answer (refused, timed out, no
/// route, name not resolved) or no connection taken now (too many connections, starting
/// up, shutting down). Often a blip: trying again later may succeed.
#[derive(Debug, Clone)]
pub struct UnreachableError(pub String);

impl std::fmt::Display for UnreachableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UnreachableError {}

/// Whose problem an error is, and so the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorClass {
    /// A runtime failure: exit code 1.
    #[default]
    Runtime,
    /// Bad usage or config: exit code 2.
    Usage,
    /// A server could not be reached: exit code 3.
    Unreachable,
}

impl ErrorClass {
    /// The class of `e`: that of the outermost [`UsageError`] or [`UnreachableError`]
    /// in its chain, else runtime.
    pub fn of(e: &anyhow::Error) -> ErrorClass {
        e.chain()
            .find_map(|c| {
                if c.is::<UsageError>() {
                    Some(ErrorClass::Usage)
                } else if c.is::<UnreachableError>() {
                    Some(ErrorClass::Unreachable)
                } else {
                    None
                }
            })
            .unwrap_or(ErrorClass::Runtime)
    }

    /// The process exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorClass::Runtime => 1,
            ErrorClass::Usage => 2,
            ErrorClass::Unreachable => 3,
        }
    }

    /// An error of this class with the message `text`.
    pub fn error(self, text: String) -> anyhow::Error {
        match self {
            ErrorClass::Runtime => anyhow::anyhow!(text),
            ErrorClass::Usage => anyhow::anyhow!(UsageError(text)),
            ErrorClass::Unreachable => anyhow::anyhow!(UnreachableError(text)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_outermost_class_in_the_chain_decides_the_exit_code() {
        let e = anyhow::anyhow!(UnreachableError("primary.dsn: no answer".into()));
        assert_eq!(ErrorClass::of(&e).exit_code(), 3);
        let e = Err::<(), _>(e).context("starting").unwrap_err();
        assert_eq!(ErrorClass::of(&e), ErrorClass::Unreachable);
        let e = anyhow::anyhow!(UsageError("primary.dsn: password".into()));
        assert_eq!(ErrorClass::of(&e).exit_code(), 2);
        assert_eq!(ErrorClass::of(&anyhow::anyhow!("boom")).exit_code(), 1);
    }
}
