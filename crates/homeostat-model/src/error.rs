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
    match clipped(value, SHOWN_CHARS) {
        Some(head) => format!("{head:?}…"),
        None => format!("{value:?}"),
    }
}

/// The first `max_chars` characters of `text`, if it has more: where an
/// error message cuts what it would otherwise repeat whole.
pub fn clipped(text: &str, max_chars: usize) -> Option<&str> {
    text.char_indices()
        .nth(max_chars)
        .map(|(cut, _)| &text[..cut])
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
