//! Tab completion: command names at the start of the line, member names
//! everywhere else. Pressing Tab again cycles through the candidates.

use qchat_proto::names::fold;

/// One completion in progress: what to replace and with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Where the completed word starts, in characters.
    pub start: usize,
    /// The replacements, in the order Tab cycles through them.
    pub candidates: Vec<String>,
    /// Which candidate is shown.
    pub index: usize,
}

impl Completion {
    /// The text the current candidate puts in place of the word.
    pub fn current(&self) -> &str {
        &self.candidates[self.index]
    }

    /// Moves to the next candidate.
    pub fn advance(&mut self) {
        self.index = (self.index + 1) % self.candidates.len();
    }
}

/// Candidates for the word that ends at `cursor` in `line`, or `None` if
/// nothing matches. `commands` are names with their slash; `names` are the
/// members. A name completed at the start of a line gets `: ` after it (the
/// IRC way of addressing someone), elsewhere a space.
pub fn complete(
    line: &[char],
    cursor: usize,
    commands: &[&str],
    names: &[String],
) -> Option<Completion> {
    let cursor = cursor.min(line.len());
    let mut start = cursor;
    while start > 0 && !line[start - 1].is_whitespace() {
        start -= 1;
    }
    let word: String = line[start..cursor].iter().collect();
    let mut candidates: Vec<String> = if start == 0 && word.starts_with('/') {
        let word = word.to_lowercase();
        commands
            .iter()
            .filter(|c| c.starts_with(&word))
            .map(|c| format!("{c} "))
            .collect()
    } else {
        // Names match as the server compares them.
        let word = fold(&word);
        let suffix = if start == 0 { ": " } else { " " };
        let mut matching: Vec<&String> = names
            .iter()
            .filter(|n| fold(n).starts_with(&word))
            .collect();
        matching.sort_by_key(|n| fold(n));
        matching
            .into_iter()
            .map(|n| format!("{n}{suffix}"))
            .collect()
    };
    candidates.dedup();
    if candidates.is_empty() {
        return None;
    }
    Some(Completion {
        start,
        candidates,
        index: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    const COMMANDS: &[&str] = &["/help", "/me", "/msg", "/nick"];

    #[test]
    fn commands_at_the_start() {
        let c = complete(&chars("/m"), 2, COMMANDS, &[]).expect("matches");
        assert_eq!(c.start, 0);
        assert_eq!(c.candidates, ["/me ", "/msg "]);
        assert!(complete(&chars("/x"), 2, COMMANDS, &[]).is_none());
    }

    #[test]
    fn names_elsewhere_cycling() {
        let names = vec!["bob".to_string(), "Bea".to_string(), "alice".to_string()];
        let mut c = complete(&chars("/msg b"), 6, COMMANDS, &names).expect("matches");
        assert_eq!(c.start, 5);
        assert_eq!(c.current(), "Bea ");
        c.advance();
        assert_eq!(c.current(), "bob ");
        c.advance();
        assert_eq!(c.current(), "Bea ");
        let c = complete(&chars("al"), 2, COMMANDS, &names).expect("matches");
        assert_eq!(c.current(), "alice: ");
    }
}
