//! Making text from the network safe to put on a terminal.
//!
//! A message is just bytes chosen by a stranger. Printed raw, an escape
//! sequence can recolour the screen, move the cursor, set the window title,
//! write to the clipboard (OSC 52) or hide the rest of a line; a
//! right-to-left override can make `evil.exe` read as `exe.live`; tag
//! characters (U+E0000–E007F) are invisible and can carry a whole hidden
//! sentence; a line separator breaks a line where the interface did not
//! expect it. Everything that came over the network goes through
//! [`sanitize`] before display, and what was neutralised stays visible so
//! nobody is fooled by its absence.
//!
//! [`hazard`] is the one policy: message text escapes every character it
//! flags, and member names (see [`crate::names`]) refuse them, so a
//! character is never shown raw in one place and refused in another. The
//! one refinement is for emoji in text: a variation selector or zero-width
//! joiner *between emoji* is kept, because that is what emoji are made of
//! and there it hides nothing (see [`sanitize`]).

use std::borrow::Cow;
use std::fmt::Write;

use unicode_general_category::{get_general_category, GeneralCategory};

/// Why a character must not reach a terminal as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hazard {
    /// A C0 or C1 control (general category Cc): escape sequences start here.
    Control,
    /// A character that changes the direction of the text around it.
    DirectionControl,
    /// A tag character (U+E0000–E007F), invisible and able to spell hidden
    /// text.
    Tag,
    /// Takes no space and shows nothing: format characters (Cf) and the
    /// other default-ignorable code points (fillers, variation selectors).
    Invisible,
    /// U+2028 or U+2029 (Zl, Zp): a line break the interface did not make.
    LineBreak,
    /// A private-use character (Co): its look depends on the font, so it can
    /// be anything, including nothing.
    PrivateUse,
    /// A code point Unicode has not assigned (Cn), or a noncharacter: no
    /// terminal agrees on its width.
    Unassigned,
}

impl Hazard {
    /// A few words for a user: "a control character", "a tag character"…
    pub fn describe(self) -> &'static str {
        match self {
            Hazard::Control => "a control character",
            Hazard::DirectionControl => "a text-direction control",
            Hazard::Tag => "a tag character",
            Hazard::Invisible => "an invisible character",
            Hazard::LineBreak => "a line or paragraph separator",
            Hazard::PrivateUse => "a private-use character",
            Hazard::Unassigned => "an unassigned code point",
        }
    }
}

/// The one display policy: what, if anything, is wrong with showing `c`.
pub fn hazard(c: char) -> Option<Hazard> {
    // The common case first: printable ASCII is always fine.
    if (' '..='~').contains(&c) {
        return None;
    }
    if is_bidi_control(c) {
        return Some(Hazard::DirectionControl);
    }
    if ('\u{E0000}'..='\u{E007F}').contains(&c) {
        return Some(Hazard::Tag);
    }
    match get_general_category(c) {
        GeneralCategory::Control => Some(Hazard::Control),
        GeneralCategory::Format => Some(Hazard::Invisible),
        GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
            Some(Hazard::LineBreak)
        }
        GeneralCategory::PrivateUse => Some(Hazard::PrivateUse),
        // A `char` is never a surrogate; listed so that the match stays
        // exhaustive over the categories.
        GeneralCategory::Surrogate | GeneralCategory::Unassigned => Some(Hazard::Unassigned),
        _ if is_invisible(c) => Some(Hazard::Invisible),
        _ => None,
    }
}

/// Characters that change the direction of the text around them.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that take no space and show nothing, so they can hide inside
/// a name or a link: Unicode's Default_Ignorable_Code_Point set (16.0),
/// which covers more than the format category (Hangul fillers, variation
/// selectors, the combining grapheme joiner).
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
            | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}' | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}'
    )
}

fn needs_escape(c: char) -> bool {
    hazard(c).is_some()
}

/// Returns `text` with every character [`hazard`] flags replaced by a
/// visible escape: C0 controls as caret notation (`ESC` becomes `^[`),
/// everything else as `<U+XXXX>`. Text that needs nothing is returned
/// without copying.
///
/// One exception, for message text only: the joiners that emoji are built
/// from are kept where they join emoji ([`joins_emoji`]) — `❤️` is a heart
/// and a variation selector, `👩🏽‍💻` three characters and a zero-width joiner.
/// Between emoji they can hide nothing (the sequence draws as one picture or
/// as its parts); anywhere else they are escaped as before, and names never
/// contain them.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    // One pass finds the first character that is really escaped (a hazard
    // that joins no emoji); text without one is borrowed as it is, and the
    // clean prefix is copied in one piece.
    let escaped = |&(i, c): &(usize, char)| needs_escape(c) && !joins_emoji(text, i, c);
    let Some((first, _)) = text.char_indices().find(escaped) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    for (i, c) in text[first..].char_indices() {
        if !escaped(&(first + i, c)) {
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

/// Zero-width joiner.
const ZWJ: char = '\u{200D}';
/// The variation selectors that choose text (FE0E) or emoji (FE0F)
/// presentation.
const VS_TEXT: char = '\u{FE0E}';
const VS_EMOJI: char = '\u{FE0F}';
/// Combining enclosing keycap: `1️⃣` is `1`, FE0F, 20E3.
const KEYCAP: char = '\u{20E3}';

fn is_pictograph(c: char) -> bool {
    !c.is_ascii() && get_general_category(c) == GeneralCategory::OtherSymbol
}

/// The skin-tone modifiers U+1F3FB–1F3FF.
fn is_skin_tone(c: char) -> bool {
    ('\u{1F3FB}'..='\u{1F3FF}').contains(&c)
}

/// Whether `c`, at byte `i` of `text`, is a joiner inside an emoji
/// sequence: a variation selector right after a pictograph (or after a
/// keycap base followed by the keycap), or a zero-width joiner between a
/// pictograph (possibly with its skin tone or selector) and the next
/// pictograph. Its neighbours are read off the string itself, so escaping
/// needs no copy of the text as a `Vec<char>`.
fn joins_emoji(text: &str, i: usize, c: char) -> bool {
    let mut before = text[..i].chars().rev();
    let prev = before.next();
    let next = text[i + c.len_utf8()..].chars().next();
    match c {
        VS_TEXT | VS_EMOJI => match prev {
            Some(p) if is_pictograph(p) => true,
            Some('0'..='9' | '#' | '*') => next == Some(KEYCAP),
            _ => false,
        },
        ZWJ => {
            let after_emoji = match prev {
                Some(p) if is_pictograph(p) || is_skin_tone(p) => true,
                Some(VS_EMOJI) => before.next().is_some_and(is_pictograph),
                _ => false,
            };
            after_emoji && next.is_some_and(is_pictograph)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(sanitize("hello, wörld 👋🏽"), Cow::Borrowed(_)));
    }

    #[test]
    fn emoji_keep_their_joiners_and_nothing_else_does() {
        for emoji in [
            "\u{2764}\u{FE0F}",                            // red heart
            "\u{1F469}\u{1F3FD}\u{200D}\u{1F4BB}",         // woman technologist, medium skin
            "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}", // family
            "\u{1F3F3}\u{FE0F}\u{200D}\u{1F308}",          // rainbow flag
            "1\u{FE0F}\u{20E3}",                           // keycap one
        ] {
            let text = format!("look {emoji} here");
            assert_eq!(sanitize(&text), text, "{emoji:?}");
        }
        // The same joiners anywhere else still show.
        assert_eq!(sanitize("a\u{200D}b"), "a<U+200D>b");
        assert_eq!(sanitize("x\u{FE0F}"), "x<U+FE0F>");
        assert_eq!(sanitize("\u{2764}\u{200D}"), "\u{2764}<U+200D>");
        assert_eq!(sanitize("\u{200D}\u{2764}"), "<U+200D>\u{2764}");
        assert_eq!(sanitize("1\u{FE0F}"), "1<U+FE0F>");
        // A tag sequence (a subdivision flag) can spell hidden text: shown.
        assert_eq!(
            sanitize("\u{1F3F4}\u{E0067}\u{E007F}"),
            "\u{1F3F4}<U+E0067><U+E007F>"
        );
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

    #[test]
    fn hidden_text_line_breaks_and_private_use_are_shown() {
        // "hi" spelled in tag characters after a visible word.
        assert_eq!(sanitize("ok\u{E0068}\u{E0069}"), "ok<U+E0068><U+E0069>");
        assert_eq!(sanitize("a\u{2028}b\u{2029}c"), "a<U+2028>b<U+2029>c");
        assert_eq!(sanitize("x\u{E000}\u{F8FF}"), "x<U+E000><U+F8FF>");
        assert_eq!(sanitize("\u{10FFFD}"), "<U+10FFFD>");
        assert_eq!(sanitize("\u{FFFF}"), "<U+FFFF>");
    }

    /// What the policy does with a whole general category.
    #[derive(Debug, PartialEq, Eq)]
    enum Expect {
        /// Every character of the category is shown as it is, except the
        /// default-ignorable ones.
        Shown,
        /// Every character of the category is escaped.
        Escaped,
    }

    /// The policy per category, each named: a category the crate adds
    /// fails the walk below until someone decides what it means for a
    /// terminal.
    fn expected(cat: GeneralCategory) -> Expect {
        use GeneralCategory::*;
        match cat {
            Control | Format | LineSeparator | ParagraphSeparator | PrivateUse | Surrogate
            | Unassigned => Expect::Escaped,
            UppercaseLetter | LowercaseLetter | TitlecaseLetter | ModifierLetter | OtherLetter
            | NonspacingMark | SpacingMark | EnclosingMark | DecimalNumber | LetterNumber
            | OtherNumber | ConnectorPunctuation | DashPunctuation | OpenPunctuation
            | ClosePunctuation | InitialPunctuation | FinalPunctuation | OtherPunctuation
            | MathSymbol | CurrencySymbol | ModifierSymbol | OtherSymbol | SpaceSeparator => {
                Expect::Shown
            }
            other => panic!("no policy for the general category {other:?}"),
        }
    }

    #[test]
    fn every_code_point_follows_its_category() {
        let mut seen = std::collections::HashSet::new();
        for c in '\0'..=char::MAX {
            let cat = get_general_category(c);
            seen.insert(format!("{cat:?}"));
            let s = c.to_string();
            let out = sanitize(&s);
            let escaped = out != s;
            let want = match expected(cat) {
                Expect::Escaped => true,
                Expect::Shown => is_invisible(c),
            };
            assert_eq!(escaped, want, "U+{:04X} ({cat:?}) became {out:?}", c as u32);
            if escaped {
                // What replaced it is plain ASCII, so it cannot itself be a
                // hazard.
                assert!(out.chars().all(|o| (' '..='~').contains(&o)), "{out:?}");
                assert!(hazard(c).is_some());
            }
            if ('\u{E0000}'..='\u{E007F}').contains(&c) {
                assert_eq!(hazard(c), Some(Hazard::Tag));
            }
        }
        // Every category exists in 16.0 except surrogates, which a `char`
        // cannot hold.
        assert_eq!(seen.len(), 29, "{seen:?}");
    }

    /// The input the property below once met at random: a pictograph
    /// with its text-presentation selector keeps it, a letter does not.
    #[test]
    fn a_selector_is_kept_after_a_pictograph_only() {
        assert_eq!(sanitize("\u{1FACE}\u{FE0E}"), "\u{1FACE}\u{FE0E}");
        assert_eq!(sanitize("a\u{FE0E}"), "a<U+FE0E>");
    }

    proptest! {
        #[test]
        fn output_never_contains_hazards(s in any::<String>()) {
            // The one exception `sanitize` makes: a joiner kept where it
            // joins emoji, which it still does in the output.
            let out = sanitize(&s);
            for (i, c) in out.char_indices() {
                prop_assert!(!needs_escape(c) || joins_emoji(&out, i, c), "{out:?}");
            }
        }
    }
}
