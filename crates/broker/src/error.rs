//! The broker core's one error type: an AMQP reply code and RabbitMQ-style text.

use std::fmt;

use wire::reply;

/// An error to answer a client with. Whether it closes the channel or the connection
/// follows from the code ([`wire::reply::is_hard`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    pub code: u16,
    /// Text without the "CODE_NAME - " prefix.
    pub text: String,
}

impl AmqpError {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        AmqpError { code, text: text.into() }
    }
    pub fn not_found(text: impl Into<String>) -> Self {
        Self::new(reply::NOT_FOUND, text)
    }
    pub fn access_refused(text: impl Into<String>) -> Self {
        Self::new(reply::ACCESS_REFUSED, text)
    }
    pub fn precondition_failed(text: impl Into<String>) -> Self {
        Self::new(reply::PRECONDITION_FAILED, text)
    }
    pub fn resource_locked(text: impl Into<String>) -> Self {
        Self::new(reply::RESOURCE_LOCKED, text)
    }
    pub fn command_invalid(text: impl Into<String>) -> Self {
        Self::new(reply::COMMAND_INVALID, text)
    }
    pub fn not_allowed(text: impl Into<String>) -> Self {
        Self::new(reply::NOT_ALLOWED, text)
    }
    pub fn not_implemented(text: impl Into<String>) -> Self {
        Self::new(reply::NOT_IMPLEMENTED, text)
    }
    pub fn is_hard(&self) -> bool {
        reply::is_hard(self.code)
    }
    /// The reply_text RabbitMQ would send: "NOT_FOUND - no queue 'q' in vhost '/'".
    pub fn reply_text(&self) -> String {
        let mut s = format!("{} - {}", reply::name(self.code), self.text);
        // reply_text is a short string: at most 255 bytes, cut on a char boundary.
        if s.len() > 255 {
            let mut end = 255;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
        s
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reply_text())
    }
}

impl std::error::Error for AmqpError {}
