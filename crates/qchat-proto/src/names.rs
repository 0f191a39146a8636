//! Member names: what is allowed, and when two names are "the same".
//!
//! Names are how people recognise each other, so the rules exist to stop
//! impersonation as much as to keep the display tidy. A name may not hold
//! anything [`crate::text::hazard`] flags (the same policy that escapes
//! message text), no whitespace or blank-looking character (so `/msg NAME
//! text` parses and nobody is called nothing), no combining or zero-width
//! character (which stacks onto a neighbour), and none of the characters the
//! line format puts around names (`<alice> hi`, `* alice waves`,
//! `[alice -> bob]`), so a name cannot fake the frame it is shown in.
//!
//! Uniqueness goes further than case: [`fold`] maps a name to its UTS #39
//! confusable skeleton after compatibility normalisation and case folding,
//! so `alice`, `ALICE`, `аlice` (Cyrillic а), `ａｌｉｃｅ` (fullwidth) and
//! `alıce` (dotless ı) are one name and the second to ask for it is refused.
//!
//! And a name may not mix scripts in a way UTS #39 does not deem safe
//! ([`validate`], the *moderately restrictive* level of its restriction
//! levels): one script, or Latin with Han, Hiragana, Katakana, Hangul or
//! Bopomofo as Japanese, Chinese and Korean are written, or Latin with one
//! other recommended script that is neither Cyrillic nor Greek — the two
//! whose letters pass for Latin ones. `аlice` with a Cyrillic `а` is
//! refused by this rule before its look-alike is even compared.

use unicode_normalization::UnicodeNormalization;

use crate::limits::MAX_NAME_CHARS;
use crate::text::hazard;

/// The characters the line format uses to frame names; see the plain
/// interface's formats.
pub const DELIMITERS: &[char] = &['<', '>', '*', '[', ']', '(', ')', '{', '}', ','];

/// Why a name was refused. Each message names the rule, so a user knows
/// what to change.
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
    /// Letters from scripts that may not be mixed (UTS #39).
    #[error(
        "the name mixes {scripts} letters, which Unicode's security guidelines (UTS #39, \
         moderately restrictive) do not deem a safe mix; use one script (Latin may go with one \
         other script, but not with Cyrillic or Greek)"
    )]
    MixedScript {
        /// The scripts found, for the user, e.g. `Latin and Cyrillic`.
        scripts: String,
    },
    /// A character the chat's line format puts around names.
    #[error("the name contains {0:?}, which qchat puts around names; leave out < > * [ ] ( ) {{ }} and ,")]
    Delimiter(char),
}

/// Checks a name against the rules: 1–32 characters, none of them a
/// display hazard, whitespace, blank, zero-width or a name delimiter, and
/// no unsafe mix of scripts.
pub fn validate(name: &str) -> Result<(), NameError> {
    validate_chars(name)?;
    script_mix(name)
}

fn validate_chars(name: &str) -> Result<(), NameError> {
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
        if DELIMITERS.contains(&c) {
            return Err(NameError::Delimiter(c));
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

/// UTS #39 restriction-level detection, up to *moderately restrictive*,
/// as `unicode-security` computes it — without its identifier-profile
/// check, which would refuse digits-and-emoji names that the character
/// rules above already judge.
fn script_mix(name: &str) -> Result<(), NameError> {
    use unicode_script::{Script, UnicodeScript};
    use unicode_security::mixed_script::AugmentedScriptSet;
    let mut all = AugmentedScriptSet::default();
    let mut without_latin = AugmentedScriptSet::default();
    for c in name.chars() {
        let set = AugmentedScriptSet::for_char(c);
        all.intersect_with(set);
        if !set.base.contains_script(Script::Latin) {
            without_latin.intersect_with(set);
        }
    }
    // One script (common characters such as digits and punctuation go
    // with any), or Latin with the scripts of Chinese, Japanese or Korean.
    if !all.is_empty() || without_latin.hanb || without_latin.jpan || without_latin.kore {
        return Ok(());
    }
    if without_latin.base.len() == 1 {
        if let Some(script) = without_latin.base.iter().next() {
            if script.is_recommended() && script != Script::Cyrillic && script != Script::Greek {
                return Ok(());
            }
        }
    }
    let mut found: Vec<&'static str> = Vec::new();
    for c in name.chars() {
        let script = c.script();
        if !matches!(script, Script::Common | Script::Inherited | Script::Unknown) {
            let name = script.full_name();
            if !found.contains(&name) {
                found.push(name);
            }
        }
    }
    let scripts = match found.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        Some((only, _)) => (*only).to_string(),
        None => "several scripts'".to_string(),
    };
    Err(NameError::MixedScript { scripts })
}

fn forbidden(c: char) -> Option<&'static str> {
    if let Some(h) = hazard(c) {
        Some(h.describe())
    } else if c.is_whitespace() {
        Some("whitespace")
    } else if c == '\u{2800}' {
        // Braille pattern blank: a symbol, not a space, yet it shows as
        // nothing at all.
        Some("a blank character")
    } else if unicode_width::UnicodeWidthChar::width(c).unwrap_or(0) == 0 {
        // Combining marks and other zero-width characters could stack onto
        // a neighbour and make two names look alike.
        Some("a zero-width or combining character")
    } else {
        None
    }
}

/// The key under which a name is unique: two names are the same name when
/// their keys are equal. Compatibility normalisation (NFKC: fullwidth `ａ`
/// is `a`, the Kelvin sign is `K`), then case folding, then the UTS #39
/// confusable skeleton (Cyrillic `а` is `a`, `ı` is `i`, `0` is `O`), then
/// case folding again because skeletons use both cases.
///
/// Known limit: folding case first means the capital `I` and the small `l`,
/// identical in many fonts, stay different names.
pub fn fold(name: &str) -> String {
    let folded: String = name.nfkc().flat_map(char::to_lowercase).collect();
    unicode_security::skeleton(&folded)
        .flat_map(char::to_lowercase)
        .collect()
}

/// The room everyone is in, and the only one clients before version 5
/// know: the room the server had before it had several.
pub const LOBBY: &str = "#lobby";

/// Why a room name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomNameError {
    /// The name does not start with `#`.
    #[error("a room's name starts with # (for example #dev)")]
    NoHash,
    /// What follows the `#` breaks the name rules.
    #[error("after the #, {0}")]
    Name(NameError),
}

/// Checks a room name: `#` and then 1–32 characters under the same rules
/// as a member's name ([`validate`]), so a room name cannot fake the line
/// format either, and look-alike rooms fold together ([`fold_room`]).
pub fn validate_room(room: &str) -> Result<(), RoomNameError> {
    let rest = room.strip_prefix('#').ok_or(RoomNameError::NoHash)?;
    if rest.starts_with('#') {
        return Err(RoomNameError::Name(NameError::BadChar {
            what: "a second #",
            code: u32::from('#'),
        }));
    }
    validate(rest).map_err(RoomNameError::Name)
}

/// The key for "the same room": `#` and the [`fold`] of the rest, so
/// `#Dev`, `#dev` and `#ԁev` (Cyrillic ԁ) are one room.
pub fn fold_room(room: &str) -> String {
    format!("#{}", fold(room.strip_prefix('#').unwrap_or(room)))
}

/// Whether `room` is the lobby, however it is spelt.
pub fn is_lobby(room: &str) -> bool {
    room.eq_ignore_ascii_case(LOBBY) || fold_room(room) == fold_room(LOBBY)
}

/// Whether two names are the same name (see [`fold`]).
pub fn same(a: &str, b: &str) -> bool {
    a == b || fold(a) == fold(b)
}

/// Says why `wanted` counts as the name `holder` already has, for the
/// rejection a user reads: the same name, the same but for case, or one that
/// only looks the same. `holder` is the name as its member registered it.
pub fn clash(wanted: &str, holder: &str) -> String {
    if wanted == holder {
        format!("the name {wanted:?} is taken")
    } else if wanted.to_lowercase() == holder.to_lowercase() {
        format!("the name {wanted:?} is taken: {holder:?} differs only in letter case")
    } else {
        format!(
            "the name {wanted:?} is taken: it looks the same as {holder:?} \
             (look-alike letters from other scripts, fullwidth forms and the like count as the same)"
        )
    }
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
            "jo:sé",
            "👍🏽",
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
    fn blank_looking_and_hidden_characters_are_refused_with_the_rule() {
        let cases = [
            ("alice\u{2800}", "a blank character"),
            ("\u{2800}", "a blank character"),
            ("\u{3164}", "an invisible character"),
            ("bob\u{E0041}", "a tag character"),
            ("bob\u{E000}", "a private-use character"),
            ("a\u{2028}", "a line or paragraph separator"),
            ("a\u{3000}b", "whitespace"),
            ("\u{202E}x", "a text-direction control"),
        ];
        for (name, rule) in cases {
            match validate(name) {
                Err(e @ NameError::BadChar { what, .. }) => {
                    assert_eq!(what, rule, "{name:?}");
                    assert!(e.to_string().contains(rule), "{e}");
                }
                other => panic!("{name:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn names_refuse_everything_text_escapes() {
        for c in '\0'..=char::MAX {
            if let Some(h) = hazard(c) {
                let name = format!("a{c}");
                assert_eq!(
                    validate(&name),
                    Err(NameError::BadChar {
                        what: h.describe(),
                        code: c as u32
                    }),
                    "U+{:04X}",
                    c as u32
                );
            }
        }
    }

    #[test]
    fn unsafe_script_mixes_are_refused_and_safe_ones_pass() {
        for n in [
            "\u{0430}lice",
            "p\u{0430}ypal",
            "\u{03B1}lpha-x",
            "\u{0430}\u{03B2}",
        ] {
            let e = validate(n).expect_err(n);
            assert!(matches!(e, NameError::MixedScript { .. }), "{n}: {e:?}");
            assert!(e.to_string().contains("UTS #39"), "{e}");
        }
        let e = validate("\u{0430}lice").expect_err("Cyrillic а");
        assert!(e.to_string().contains("Cyrillic and Latin"), "{e}");
        for n in [
            "\u{0430}\u{043B}\u{0438}\u{0441}\u{0430}", // алиса, all Cyrillic
            "\u{03B1}\u{03BB}\u{03B5}\u{03BE}",         // αλεξ, all Greek
            "tanaka\u{7530}\u{4E2D}",                   // Latin and Han
            "kim\u{AE40}",                              // Latin and Hangul
            "ali\u{0639}\u{0644}\u{064A}",              // Latin and Arabic
            "bob42",
            "👍🏽",
        ] {
            assert_eq!(validate(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn delimiters_of_the_line_format_are_refused() {
        for n in ["alice>", "<bob", "*x", "a[1]", "a(b)", "a,b", "{x}"] {
            let e = validate(n).expect_err(n);
            assert!(matches!(e, NameError::Delimiter(_)), "{n}: {e:?}");
            assert!(e.to_string().contains("puts around names"), "{e}");
        }
    }

    #[test]
    fn uniqueness_ignores_case() {
        assert_eq!(fold("Bob"), fold("bOB"));
        assert_ne!(fold("bob"), fold("bob2"));
    }

    #[test]
    fn look_alikes_are_the_same_name() {
        for twin in [
            "\u{FF41}\u{FF4C}\u{FF49}\u{FF43}\u{FF45}", // fullwidth
            "al\u{0131}ce",                             // dotless ı
            "ALICE",
            "\u{0430}\u{04CF}\u{0456}\u{0441}\u{0435}", // all Cyrillic look-alikes
        ] {
            assert_eq!(validate(twin), Ok(()), "{twin}");
            assert!(same("alice", twin), "{twin} vs alice");
        }
        // Mixed with Latin it is refused outright, and would still be
        // the same name.
        assert!(validate("\u{0430}lice").is_err());
        assert!(same("alice", "\u{0430}lice"));
        assert!(same("\u{212A}im", "kim"), "Kelvin sign");
        assert!(same("b0b", "bob"), "digit zero");
        assert!(!same("alice", "alicia"));
        assert!(clash("\u{0430}lice", "alice").contains("looks the same as \"alice\""));
        assert!(clash("ALICE", "alice").contains("letter case"));
        assert_eq!(clash("alice", "alice"), "the name \"alice\" is taken");
        assert!(!same("bob", "rob"));
    }

    #[test]
    fn room_names_follow_the_name_rules_after_the_hash() {
        assert_eq!(validate_room("#dev"), Ok(()));
        assert_eq!(validate_room("dev"), Err(RoomNameError::NoHash));
        assert!(matches!(
            validate_room("#"),
            Err(RoomNameError::Name(NameError::Empty))
        ));
        assert!(matches!(
            validate_room("##dev"),
            Err(RoomNameError::Name(_))
        ));
        assert!(matches!(validate_room("#a b"), Err(RoomNameError::Name(_))));
        assert!(validate_room(&format!("#{}", "x".repeat(MAX_NAME_CHARS))).is_ok());
        assert!(validate_room(&format!("#{}", "x".repeat(MAX_NAME_CHARS + 1))).is_err());
        assert_eq!(fold_room("#Dev"), fold_room("#dev"));
        assert_eq!(fold_room("#\u{FF44}ev"), fold_room("#dev"));
        assert_ne!(fold_room("#dev"), fold_room("#ops"));
        assert!(is_lobby("#Lobby") && !is_lobby("#dev"));
    }
}
