//! The crate's error types: one for changes and imports, one for logins.

/// Why a change or an import was refused. Messages are meant for an operator: they name the
/// entry (user, vhost, policy...) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The change names something that does not exist (a user, a vhost, a permission...).
    #[error("{0}")]
    NotFound(String),
    /// The change or the definitions file is malformed (bad regex, bad hash, bad key...).
    #[error("{0}")]
    Invalid(String),
}

/// Why a password login failed. The server answers every kind with the same
/// ACCESS_REFUSED text (as RabbitMQ does, so a client cannot probe for user names) and logs
/// this one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("user '{0}' - not found")]
    UnknownUser(String),
    #[error("user '{0}' - invalid credentials")]
    BadPassword(String),
    /// The user exists but has no password hash (only other mechanisms could log it in).
    #[error("user '{0}' - no password set")]
    NoPassword(String),
}
