//! Making text from the network safe to put on a terminal.
//!
//! A message is just bytes chosen by a stranger. Printed raw, an escape
//! sequence can recolour the screen, move the cursor, set the window title,
//! write to the clipboard (OSC 52) or hide the rest of a line; a
//! right-to-left override can make `evil.exe` read as `exe.live`. Everything
//! that came over the network goes through [`sanitize`] before display, and
//! what was neutralised stays visible so nobody is fooled by its absence.

use std::borrow::Cow;
use std::fmt::Write;

/// Characters that change the direction of the text around them.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that take no space and show nothing, so they can hide inside
/// a name or a link.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}' | '\u{180E}'
            | '\u{200B}'..='\u{200D}' | '\u{2060}'..='\u{2064}' | '\u{3164}' | '\u{FEFF}' | '\u{FFA0}'
            | '\u{FE00}'..='\u{FE0F}'
    )
}

fn needs_escape(c: char) -> bool {
    c.is_control() || is_bidi_control(c) || is_invisible(c)
}

/// Returns `text` with every control character, escape sequence introducer,
/// bidirectional control and invisible character replaced by a visible
/// escape: C0 controls as caret notation (`ESC` becomes `^[`), everything
/// else as `<U+XXXX>`. Text that needs nothing is returned without copying.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !needs_escape(c) {
            out.push(c);
        } else if (c as u32) < 0x20 {
            out.push('^');
            out.push(char::from(b'@' + c as u8));
        } else if c == '\u{7f}' {
            out.push_str("^?");
        } else {
            let _ = write!(out, "<U+{:04X}>", c as u32);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(sanitize("hello, wörld 👋"), Cow::Borrowed(_)));
    }

    #[test]
    fn escapes_are_shown_not_interpreted() {
        assert_eq!(sanitize("\u{1b}[31mred"), "^[[31mred");
        assert_eq!(sanitize("\u{1b}]52;c;aGk=\u{7}"), "^[]52;c;aGk=^G");
        assert_eq!(sanitize("a\rb\nc\td"), "a^Mb^Jc^Id");
        assert_eq!(sanitize("\u{9b}2J"), "<U+009B>2J");
        assert_eq!(sanitize("x\u{7f}"), "x^?");
    }

    #[test]
    fn direction_and_invisible_tricks_are_shown() {
        assert_eq!(sanitize("ad\u{202e}nimda"), "ad<U+202E>nimda");
        assert_eq!(sanitize("bo\u{200b}b"), "bo<U+200B>b");
    }

    proptest! {
        #[test]
        fn output_never_contains_controls(s in any::<String>()) {
            let out = sanitize(&s);
            prop_assert!(!out.chars().any(needs_escape));
        }
    }
}
