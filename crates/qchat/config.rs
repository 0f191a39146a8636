//! `qchat serve`'s settings file (TOML). Its keys are the serve flags
//! without the leading `--`, so there is one vocabulary and one set of
//! checks: every value is checked by the flag's own clap parser, and the
//! file's settings are given to clap as if typed after the real flags, for
//! the settings the command line did not give. Flags therefore override the
//! file, and the file overrides the defaults, without a second merge.

use std::any::TypeId;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// Serve flags that are actions or about the file itself, not settings a
/// file may hold: a file that replaced the identity would do it on every
/// start.
const NOT_SETTINGS: &[&str] = &["config", "check-config", "new-identity"];

/// Where an effective setting came from, for `--check-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The command line.
    Flag,
    /// The settings file, at this line.
    File(usize),
    /// The built-in default (or not set).
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag => f.write_str("flag"),
            Origin::File(line) => write!(f, "file, line {line}"),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// One line of `--check-config`: a setting, its value as TOML (None: not
/// set), and where it came from.
#[derive(Debug, Clone)]
pub struct Effective {
    /// The key (the flag's long name).
    pub key: String,
    /// The value, as it would be written in the file.
    pub value: Option<String>,
    /// Where it came from.
    pub origin: Origin,
}

/// What a value in the file must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Integer,
    Seconds,
    Text,
}

impl Kind {
    fn of(arg: &clap::Arg) -> Kind {
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            return Kind::Bool;
        }
        let t = arg.get_value_parser().type_id();
        if [
            TypeId::of::<u16>(),
            TypeId::of::<u32>(),
            TypeId::of::<u64>(),
            TypeId::of::<usize>(),
        ]
        .iter()
        .any(|id| t == *id)
        {
            Kind::Integer
        } else if t == TypeId::of::<crate::cli::Secs>() {
            Kind::Seconds
        } else {
            Kind::Text
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Bool => "true or false",
            Kind::Integer => "a whole number",
            Kind::Seconds => "a number of seconds",
            Kind::Text => "a string in quotes",
        }
    }
}

/// A settings file that cannot be used; the server does not start.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// Its line (1-based), when the error is about one place.
    pub line: Option<usize>,
    /// The key, when the error is about one setting.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A setting read from the file, as the flag that would say the same.
#[derive(Debug, Clone)]
pub struct Setting {
    /// The key (the flag's long name).
    pub key: String,
    /// `--key=value`, or `--key` for a true switch; None for a false switch
    /// (the default of every switch).
    pub flag: Option<OsString>,
    /// Where it is in the file.
    pub line: usize,
}

/// The file to read: `--config FILE`, else `$QCHAT_HOME/server.toml` when
/// it exists. An explicitly named file must exist (`load` says so); a
/// machine without a home folder simply has no default file, and the
/// server still starts from its flags (`--cert-dir`, `--data-dir`).
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let default = crate::home::home().ok()?.join("server.toml");
    default.is_file().then_some(default)
}

/// The `serve` subcommand's definition.
fn serve_command(root: &Command) -> Option<&Command> {
    root.find_subcommand("serve")
}

/// Reads and checks the file against the serve flags of `root`.
pub fn load(path: &Path, root: &Command) -> Result<Vec<Setting>, ConfigError> {
    let err = |line: Option<usize>, key: Option<&str>, message: String| ConfigError {
        path: path.to_path_buf(),
        line,
        key: key.map(str::to_string),
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(None, None, format!("cannot read the settings file: {e}")))?;
    parse(&text, root).map_err(|(line, key, message)| err(line, key.as_deref(), message))
}

type Failure = (Option<usize>, Option<String>, String);

/// Checks `text` against the serve flags: every key a setting, every value
/// of the right kind and accepted by the flag's own parser.
fn parse(text: &str, root: &Command) -> Result<Vec<Setting>, Failure> {
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
    };
    let doc = toml_edit::Document::parse(text).map_err(|e| {
        let line = line_of(e.span());
        (line, None, format!("not valid TOML: {}", e.message()))
    })?;
    let serve = serve_command(root).ok_or((None, None, "no serve command".to_string()))?;
    let mut out = Vec::new();
    for (key, item) in doc.as_table().iter() {
        let line = line_of(doc.as_table().key(key).and_then(|k| k.span()));
        let fail = |message: String| (line, Some(key.to_string()), message);
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(key) && !NOT_SETTINGS.contains(&key))
            .ok_or_else(|| {
                fail(
                    "unknown key; the keys are the `qchat serve` flags without their leading --"
                        .into(),
                )
            })?;
        let kind = Kind::of(arg);
        let value = item
            .as_value()
            .ok_or_else(|| fail(format!("must be {}, not a table", kind.describe())))?;
        let raw = match (kind, value) {
            (Kind::Bool, toml_edit::Value::Boolean(b)) => {
                if *b.value() {
                    String::new()
                } else {
                    out.push(Setting {
                        key: key.to_string(),
                        flag: None,
                        line: line.unwrap_or(0),
                    });
                    continue;
                }
            }
            (Kind::Integer | Kind::Seconds, toml_edit::Value::Integer(i)) => i.value().to_string(),
            (Kind::Seconds, toml_edit::Value::Float(f)) => f.value().to_string(),
            (Kind::Text, toml_edit::Value::String(s)) => s.value().clone(),
            (kind, other) => {
                return Err(fail(format!(
                    "must be {}, not {}",
                    kind.describe(),
                    other.type_name()
                )))
            }
        };
        let flag: OsString = if kind == Kind::Bool {
            format!("--{key}").into()
        } else {
            format!("--{key}={raw}").into()
        };
        // The flag's own parser decides, alone, so its message is about
        // this value only.
        root.clone()
            .try_get_matches_from([OsString::from("qchat"), "serve".into(), flag.clone()])
            .map_err(|e| fail(clap_message(&e)))?;
        out.push(Setting {
            key: key.to_string(),
            flag: Some(flag),
            line: line.unwrap_or(0),
        });
    }
    Ok(out)
}

/// clap's message without its `error:` prefix and usage lines.
pub fn clap_message(e: &clap::Error) -> String {
    let s = e.to_string();
    let first = s.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").to_string()
}

/// The command line with the file's settings added for every flag the
/// command line did not give.
pub fn merged_args(
    args: impl IntoIterator<Item = OsString>,
    given: &ArgMatches,
    settings: &[Setting],
    root: &Command,
) -> Vec<OsString> {
    let mut out: Vec<OsString> = args.into_iter().collect();
    for s in settings {
        if let (Some(flag), Some(id)) = (&s.flag, arg_id(root, &s.key)) {
            if given.value_source(&id) != Some(ValueSource::CommandLine) {
                out.push(flag.clone());
            }
        }
    }
    out
}

fn arg_id(root: &Command, key: &str) -> Option<String> {
    serve_command(root)?
        .get_arguments()
        .find(|a| a.get_long() == Some(key))
        .map(|a| a.get_id().to_string())
}

/// Every setting's effective value and origin, in the order of `--help`.
pub fn effective(
    root: &Command,
    given: &ArgMatches,
    merged: &ArgMatches,
    settings: &[Setting],
) -> Vec<Effective> {
    let Some(serve) = serve_command(root) else {
        return Vec::new();
    };
    serve
        .get_arguments()
        .filter_map(|arg| {
            let key = arg.get_long()?;
            if NOT_SETTINGS.contains(&key) {
                return None;
            }
            let id = arg.get_id().as_str();
            let origin = if given.value_source(id) == Some(ValueSource::CommandLine) {
                Origin::Flag
            } else if let Some(s) = settings.iter().find(|s| s.key == key) {
                Origin::File(s.line)
            } else {
                Origin::Default
            };
            let value = merged.get_raw(id).and_then(|mut v| v.next()).map(|raw| {
                let raw = raw.to_string_lossy().into_owned();
                match Kind::of(arg) {
                    Kind::Text => quote(&raw),
                    _ => raw,
                }
            });
            Some(Effective {
                key: key.to_string(),
                value,
                origin,
            })
        })
        .collect()
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn check(text: &str) -> Result<Vec<Setting>, Failure> {
        parse(text, &crate::cli::Cli::command())
    }

    #[test]
    fn every_kind_of_value_is_accepted() {
        let s = check(
            "rate = 5\nidle-timeout = 2.5\nlisten = \"127.0.0.1:9\"\nheadless = true\nno-bell = false\n",
        )
        .expect("valid");
        let flags: Vec<_> = s.iter().map(|s| s.flag.clone()).collect();
        assert_eq!(
            flags,
            vec![
                Some("--rate=5".into()),
                Some("--idle-timeout=2.5".into()),
                Some("--listen=127.0.0.1:9".into()),
                Some("--headless".into()),
                None,
            ]
        );
        assert_eq!(s[2].line, 3);
    }

    #[test]
    fn errors_name_line_and_key() {
        let (line, key, msg) = check("\n\nratee = 5\n").expect_err("unknown");
        assert_eq!((line, key.as_deref()), (Some(3), Some("ratee")));
        assert!(msg.contains("unknown key"), "{msg}");
        let (line, key, msg) = check("rate = \"fast\"\n").expect_err("type");
        assert_eq!((line, key.as_deref()), (Some(1), Some("rate")));
        assert!(msg.contains("whole number"), "{msg}");
        let (line, key, msg) = check("# c\nburst = 0\n").expect_err("range");
        assert_eq!((line, key.as_deref()), (Some(2), Some("burst")));
        assert!(msg.contains("0"), "{msg}");
        let (_, key, _) = check("new-identity = true\n").expect_err("an action");
        assert_eq!(key.as_deref(), Some("new-identity"));
        let (line, key, _) = check("rate = 5\nrate = \n").expect_err("syntax");
        assert_eq!((line, key), (Some(2), None));
        let (_, key, msg) = check("[limits]\nrate = 5\n").expect_err("table");
        assert_eq!(key.as_deref(), Some("limits"));
        assert!(msg.contains("unknown key"), "{msg}");
    }
}
