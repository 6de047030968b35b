//! Errors and exit codes. An error is classed where it arises: the operator's input
//! (config, arguments, a server unreachable at start-up) is a [`UsageError`], exit
//! code 2; anything else is a runtime failure, exit code 1. [`ErrorClass::of`] is the
//! one place that reads the class back.

/// An error in the operator's input: config, arguments, a DSN unreachable at start-up.
#[derive(Debug, Clone)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

/// Whose problem an error is, and so the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorClass {
    /// A runtime failure: exit code 1.
    #[default]
    Runtime,
    /// Bad usage or config: exit code 2.
    Usage,
}

impl ErrorClass {
    /// The class of `e`: usage if a [`UsageError`] stands anywhere in its chain.
    pub fn of(e: &anyhow::Error) -> ErrorClass {
        if e.chain().any(|c| c.is::<UsageError>()) {
            ErrorClass::Usage
        } else {
            ErrorClass::Runtime
        }
    }

    /// The process exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorClass::Runtime => 1,
            ErrorClass::Usage => 2,
        }
    }

    /// An error of this class with the message `text`.
    pub fn error(self, text: String) -> anyhow::Error {
        match self {
            ErrorClass::Runtime => anyhow::anyhow!(text),
            ErrorClass::Usage => anyhow::anyhow!(UsageError(text)),
        }
    }
}
