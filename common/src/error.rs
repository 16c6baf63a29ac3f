//! Errors of a bad request: the user asked for something invalid. Each names the argument.

/// A request that cannot be run as given. `field` names the argument (as the CLI spells it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct RequestError {
    pub field: &'static str,
    pub message: String,
}

impl RequestError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        RequestError {
            field,
            message: message.into(),
        }
    }
}
