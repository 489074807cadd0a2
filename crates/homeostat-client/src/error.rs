//! The client's one error: what the server answered (its status and the
//! API's stable code), or why no answer came.

use homeostat_model::ErrorCode;

/// A call that did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{operation}: {status} {code}: {message}")]
    Api {
        /// What was asked.
        operation: &'static str,
        /// The HTTP status.
        status: u16,
        /// The API's code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// No answer: the server is unreachable, the connection broke, or the
    /// call timed out.
    #[error("{operation}: the server did not answer")]
    Transport {
        /// What was asked.
        operation: &'static str,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// An answer that is not what the API documents.
    #[error("{operation}: unexpected answer: {detail}")]
    Decode {
        /// What was asked.
        operation: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// The client was built with something unusable (a bad URL).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// The API's code, or [`ErrorCode::Unreachable`] when no answer came.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Api { code, .. } => *code,
            ClientError::Transport { .. } => ErrorCode::Unreachable,
            ClientError::Decode { .. } => ErrorCode::Unknown,
            ClientError::Config(_) => ErrorCode::Invalid,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the request never reached a server (the connection was
    /// refused or could not be made): repeating it cannot do anything twice.
    pub fn never_sent(&self) -> bool {
        matches!(self, ClientError::Transport { source, .. } if source.is_connect())
    }

    /// Whether the same call may succeed later: the server was unreachable
    /// or said so (`unavailable`, 503; a request `timeout`, 408).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Api { status, .. } => matches!(status, 408 | 429 | 502 | 503 | 504),
            _ => false,
        }
    }
}
