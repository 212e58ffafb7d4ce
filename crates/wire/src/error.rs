//! The codec's one error type.

use std::fmt;

/// A decode failure, carrying the reply code the connection must be closed with
/// (all codec errors are connection-level in AMQP 0-9-1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// One of [`crate::reply`]: FRAME_ERROR, SYNTAX_ERROR, COMMAND_INVALID, NOT_IMPLEMENTED...
    pub code: u16,
    /// Class and method being decoded when the error happened, 0 if none.
    pub class_id: u16,
    pub method_id: u16,
    /// Human-readable reason, without the "CODE_NAME - " prefix.
    pub text: String,
}

impl WireError {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        WireError { code, class_id: 0, method_id: 0, text: text.into() }
    }

    pub fn frame(text: impl Into<String>) -> Self {
        Self::new(crate::reply::FRAME_ERROR, text)
    }

    pub fn syntax(text: impl Into<String>) -> Self {
        Self::new(crate::reply::SYNTAX_ERROR, text)
    }

    pub fn with_method(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} - {}", crate::reply::name(self.code), self.text)
    }
}

impl std::error::Error for WireError {}
