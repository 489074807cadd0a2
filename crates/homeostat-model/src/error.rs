/// Input that breaks a rule of the model, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct ValidationError {
    /// The offending field, as named on the wire.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationError {
    /// An error about `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// The most characters of a refused value an error message repeats.
const SHOWN_CHARS: usize = 80;

/// `value` quoted for an error message, cut to its first
/// [`SHOWN_CHARS`] characters: a refusal names what it refused without
/// echoing a body's worth of it back.
pub(crate) fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_value_is_shown_quoted_and_cut() {
        assert_eq!(shown("grpc"), "\"grpc\"");
        let long = "é".repeat(1000);
        let cut = shown(&long);
        assert_eq!(cut, format!("{:?}…", "é".repeat(SHOWN_CHARS)));
    }
}
