//! Member names: what is allowed, and when two names are "the same".
//!
//! Names are how people recognise each other, so the rules exist to stop
//! impersonation as much as to keep the display tidy: no whitespace (so
//! `/msg NAME text` parses), no control characters, and no invisible or
//! direction-changing characters that could make two different names look
//! alike or reorder the text around them.

use crate::limits::MAX_NAME_CHARS;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// No characters at all.
    #[error("the name is empty")]
    Empty,
    /// More than [`MAX_NAME_CHARS`] characters.
    #[error("the name is longer than {max} characters")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// A character that is not allowed.
    #[error("the name contains {what} (U+{code:04X}); use letters, digits and punctuation")]
    BadChar {
        /// What kind of character it is.
        what: &'static str,
        /// Its code point.
        code: u32,
    },
}

/// Checks a name against the rules: 1–32 printable characters, no
/// whitespace, no control, invisible or bidirectional-control characters.
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let mut count = 0;
    for c in name.chars() {
        count += 1;
        if count > MAX_NAME_CHARS {
            return Err(NameError::TooLong {
                max: MAX_NAME_CHARS,
            });
        }
        if let Some(what) = forbidden(c) {
            return Err(NameError::BadChar {
                what,
                code: c as u32,
            });
        }
    }
    Ok(())
}

fn forbidden(c: char) -> Option<&'static str> {
    if c.is_whitespace() {
        Some("whitespace")
    } else if c.is_control() {
        Some("a control character")
    } else if crate::text::is_bidi_control(c) {
        Some("a text-direction control")
    } else if crate::text::is_invisible(c) {
        Some("an invisible character")
    } else if unicode_width::UnicodeWidthChar::width(c).unwrap_or(0) == 0 {
        // Combining marks and other zero-width characters could stack onto
        // a neighbour and make two names look alike.
        Some("a zero-width character")
    } else {
        None
    }
}

/// The key under which a name is unique: names that differ only in case are
/// the same name.
pub fn fold(name: &str) -> String {
    name.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in [
            "bob",
            "Alice",
            "zoë",
            "李雷",
            "a-b_c.d",
            "x",
            &"y".repeat(32),
        ] {
            assert_eq!(validate(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(validate(""), Err(NameError::Empty));
        assert!(matches!(
            validate(&"y".repeat(33)),
            Err(NameError::TooLong { .. })
        ));
        for n in [
            "a b",
            "a\tb",
            "a\u{1b}[31m",
            "ad\u{202e}nimda",
            "a\u{200b}b",
            "a\u{0301}",
            "\u{7f}",
        ] {
            assert!(
                matches!(validate(n), Err(NameError::BadChar { .. })),
                "{n:?}"
            );
        }
    }

    #[test]
    fn uniqueness_ignores_case() {
        assert_eq!(fold("Bob"), fold("bOB"));
        assert_ne!(fold("bob"), fold("bob2"));
    }
}
