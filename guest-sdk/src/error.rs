//! The error a task returns.

use std::fmt;

use crate::abi::ErrorCode;

/// A task failure: a message, and the host's error code when a host call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    code: Option<ErrorCode>,
}

impl Error {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            code: None,
        }
    }

    /// A host call's error, with what was being done.
    pub fn host(what: impl fmt::Display, code: ErrorCode) -> Self {
        Self {
            message: format!("{what}: {code}"),
            code: Some(code),
        }
    }

    /// The host's error code, when a host call caused this error.
    pub fn code(&self) -> Option<ErrorCode> {
        self.code
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<ErrorCode> for Error {
    fn from(code: ErrorCode) -> Self {
        Self {
            message: code.to_string(),
            code: Some(code),
        }
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(e: E) -> Self {
        Self::msg(e)
    }
}
