//! The one implementation of a small, private, versioned record file that
//! several qchat processes may change at once: the server pins
//! ([`known_hosts`](crate::known_hosts)) and the verified people (the
//! client's contacts) are both such a file, and what makes them safe —
//! the lock, the atomic rewrite, the 0600 mode, the version header, keeping
//! what cannot be parsed — must not differ between them.
//!
//! # File format
//!
//! A UTF-8 text file, one record per line:
//!
//! ```text
//! # qchat <kind> v1
//! # <the columns, as a comment>
//! <record>
//! ```
//!
//! - The first non-empty line is the version header `# qchat <kind> v1`.
//!   A file without it (for example an empty file) is read as version 1 and
//!   gets the header on the next write; a file claiming any other version is
//!   refused rather than rewritten, since a newer qchat may have written it.
//! - Comments (`#`), blank lines and lines that cannot be parsed are kept
//!   verbatim when the file is rewritten and ignored for lookups; unparseable
//!   lines are reported as warnings, so a hand edit gone wrong costs one
//!   record, not the whole file. If a key appears twice, the first line wins.
//!
//! # Concurrency
//!
//! Writers take an exclusive advisory lock on `<file>.lock`, re-read the file,
//! change it, and atomically rename a complete new file over it, so two qchat
//! processes changing different records at once never lose either, and
//! readers (which take no lock) always see a complete file.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::fsutil;

/// One kind of record a [`PinFile`] holds, and how it is written.
pub trait Record: Clone + fmt::Debug {
    /// What identifies a record: two records with equal keys are one.
    type Key: PartialEq + fmt::Display + Clone;
    /// The file's kind, as its header names it (`known_hosts`, `contacts`).
    const KIND: &'static str;
    /// The comment written under the header of a new file, naming the
    /// columns for a person reading it.
    const COLUMNS: &'static str;
    /// The error of every operation on the file: the file's own failures
    /// plus whatever the record's rules refuse.
    type Error: From<PinFileError>;

    /// Parses one non-comment line (trimmed); the error says what is wrong,
    /// for a `file:line:` warning.
    fn parse(text: &str) -> Result<Self, String>;
    /// The line for this record, without the line break.
    fn to_line(&self) -> String;
    /// Its key.
    fn key(&self) -> Self::Key;
    /// Remembers the 1-based line the record is on, for messages that point
    /// at it.
    fn set_line(&mut self, line: usize);
    /// The line set by [`set_line`](Self::set_line).
    fn line(&self) -> usize;
}

/// Why a record file could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum PinFileError {
    /// The file exists but could not be read.
    #[error("cannot read {}: {source}; check its permissions", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The new file (or its directory) could not be written.
    #[error(
        "cannot write {}: {source}; check free space and the directory's permissions (the old file is unchanged)",
        path.display()
    )]
    Write {
        /// The file or directory being written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {}: {source}; check the directory's permissions", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file declares a format this version does not understand.
    #[error(
        "{} starts with `{found}`, but this qchat only understands `{expected}`; upgrade qchat, or move the file aside to start with an empty one",
        path.display()
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The header line found.
        found: String,
        /// The header this version writes.
        expected: String,
    },
}

/// The header line of a version-1 file of kind `kind`.
pub fn header(kind: &str) -> String {
    format!("# qchat {kind} v1")
}

/// A record file's timestamp: RFC 3339 in UTC, to the second, which is all
/// a human needs. Formatting only fails for years beyond 9999, which `now`
/// and parsed values never are.
pub fn timestamp(when: OffsetDateTime) -> String {
    let when = when.to_offset(time::UtcOffset::UTC);
    let when = when.replace_nanosecond(0).unwrap_or(when);
    when.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// A line of the file; everything but records is carried through untouched.
#[derive(Clone, Debug)]
enum Entry<R> {
    Other(Vec<u8>),
    Record { raw: Vec<u8>, record: R },
}

impl<R> Entry<R> {
    fn record(&self) -> Option<&R> {
        match self {
            Entry::Record { record, .. } => Some(record),
            Entry::Other(_) => None,
        }
    }

    fn raw(&self) -> &[u8] {
        match self {
            Entry::Other(raw) | Entry::Record { raw, .. } => raw,
        }
    }
}

/// A parsed record file.
#[derive(Clone, Debug)]
pub struct PinFile<R> {
    path: PathBuf,
    entries: Vec<Entry<R>>,
    has_header: bool,
    records: Vec<R>,
    warnings: Vec<String>,
}

impl<R: Record> PinFile<R> {
    /// Reads the file at `path`; a missing file is an empty one.
    ///
    /// Takes no lock: writers replace the file atomically, so a reader sees
    /// either the old or the new file, never a partial one.
    pub fn load(path: &Path) -> Result<Self, R::Error> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(PinFileError::Read {
                    path: path.to_path_buf(),
                    source,
                }
                .into());
            }
        };
        let mut file = parse(path, &bytes).map_err(R::Error::from)?;
        file.warnings.extend(fsutil::check_private_file_mode(path));
        Ok(file)
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record for `key`, if any.
    pub fn get(&self, key: &R::Key) -> Option<&R> {
        self.records.iter().find(|r| &r.key() == key)
    }

    /// All records in file order (for a duplicate key, only the one in
    /// effect).
    pub fn records(&self) -> &[R] {
        &self.records
    }

    /// Problems found while reading: malformed lines as `<path>:<line>: <what>`,
    /// and a warning if other users can access the file.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Atomically changes the file at `path` and returns the result.
    ///
    /// Takes an exclusive lock on the sidecar `<path>.lock` (the data file
    /// itself cannot carry the lock because it is replaced by rename), re-reads
    /// the file under the lock so changes made by other processes are kept,
    /// applies `f`, then writes a complete new file under a temporary name
    /// (created 0600), syncs it, renames it over `path` and syncs the
    /// directory. Nothing is written if `f` fails or changes nothing. The
    /// directory is created (0700) if missing.
    pub fn update<F, T>(path: &Path, f: F) -> Result<(Self, T), R::Error>
    where
        F: FnOnce(&mut Edit<R>) -> Result<T, R::Error>,
    {
        let dir = fsutil::parent_dir(path);
        fsutil::create_private_dir(dir).map_err(|source| PinFileError::Write {
            path: dir.to_path_buf(),
            source,
        })?;

        let lock_path = lock_path_for(path);
        let lock = fsutil::open_private(&lock_path).map_err(|source| PinFileError::Lock {
            path: lock_path.clone(),
            source,
        })?;
        // Fully qualified: std's `File::lock*` methods would otherwise shadow
        // or clash with the trait's on newer toolchains.
        fs4::fs_std::FileExt::lock_exclusive(&lock).map_err(|source| PinFileError::Lock {
            path: lock_path.clone(),
            source,
        })?;
        // The lock is released when `lock` is dropped, on every return path.

        let current = Self::load(path)?;
        let mut edit = Edit {
            entries: current.entries.clone(),
            changed: false,
        };
        if !current.has_header {
            edit.entries
                .insert(0, Entry::Other(header(R::KIND).into_bytes()));
            if current
                .entries
                .iter()
                .all(|e| e.raw().trim_ascii().is_empty())
            {
                edit.entries.truncate(1);
                edit.entries
                    .push(Entry::Other(R::COLUMNS.as_bytes().to_vec()));
            }
            edit.renumber();
        }
        let value = f(&mut edit)?;
        if !edit.changed {
            return Ok((current, value));
        }

        let mut contents = Vec::new();
        for entry in &edit.entries {
            contents.extend_from_slice(entry.raw());
            contents.push(b'\n');
        }
        write_atomically(path, &contents).map_err(R::Error::from)?;
        let mut file = parse(path, &contents).map_err(R::Error::from)?;
        file.warnings.extend(fsutil::check_private_file_mode(path));
        drop(lock);
        Ok((file, value))
    }
}

/// Changes to a file, applied inside [`PinFile::update`]. The methods are
/// the mechanics; what may replace what is the caller's rule.
#[derive(Debug)]
pub struct Edit<R> {
    entries: Vec<Entry<R>>,
    changed: bool,
}

impl<R: Record> Edit<R> {
    /// The record for `key`, if any.
    pub fn get(&self, key: &R::Key) -> Option<&R> {
        self.entries
            .iter()
            .filter_map(Entry::record)
            .find(|r| &r.key() == key)
    }

    /// All records in effect, in file order.
    pub fn records(&self) -> impl Iterator<Item = &R> {
        let mut seen: Vec<R::Key> = Vec::new();
        self.entries
            .iter()
            .filter_map(Entry::record)
            .filter(move |r| {
                let key = r.key();
                if seen.contains(&key) {
                    return false;
                }
                seen.push(key);
                true
            })
    }

    /// Puts `record` in place of the one with its key (where that one was,
    /// dropping any duplicates of it) or at the end; returns the previous one.
    pub fn put(&mut self, record: R) -> Option<R> {
        let key = record.key();
        let previous = self.get(&key).cloned();
        let new_entry = Entry::Record {
            raw: record.to_line().into_bytes(),
            record,
        };
        match self.position(&key) {
            Some(index) => {
                self.entries[index] = new_entry;
                let mut i = 0;
                self.entries.retain(|e| {
                    let keep = i <= index || e.record().is_none_or(|r| r.key() != key);
                    i += 1;
                    keep
                });
            }
            None => self.entries.push(new_entry),
        }
        self.changed = true;
        self.renumber();
        previous
    }

    /// Changes the record for `key` in place with `f`, which says whether it
    /// changed anything; `None` if there is no such record.
    pub fn modify(&mut self, key: &R::Key, f: impl FnOnce(&mut R) -> bool) -> Option<bool> {
        let index = self.position(key)?;
        let Entry::Record { raw, record } = &mut self.entries[index] else {
            return None;
        };
        let changed = f(record);
        if changed {
            *raw = record.to_line().into_bytes();
            self.changed = true;
        }
        Some(changed)
    }

    /// Removes every record for `key`; returns the one that was in effect.
    pub fn remove(&mut self, key: &R::Key) -> Option<R> {
        let previous = self.get(key).cloned();
        if previous.is_some() {
            self.entries
                .retain(|e| e.record().is_none_or(|r| &r.key() != key));
            self.changed = true;
            self.renumber();
        }
        previous
    }

    fn position(&self, key: &R::Key) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.record().is_some_and(|r| &r.key() == key))
    }

    fn renumber(&mut self) {
        for (i, entry) in self.entries.iter_mut().enumerate() {
            if let Entry::Record { record, .. } = entry {
                record.set_line(i + 1);
            }
        }
    }
}

fn lock_path_for(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Writes a complete new file beside the old one and renames it into place,
/// so readers (which take no lock) see the old file or the new one, never a
/// half-written one. tempfile creates it readable by the owner only and
/// removes it if anything fails before the rename.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), PinFileError> {
    let dir = fsutil::parent_dir(path);
    let write_err = |source| PinFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
    file.write_all(contents).map_err(write_err)?;
    file.as_file().sync_all().map_err(write_err)?;
    file.persist(path).map_err(|e| write_err(e.error))?;
    fsutil::sync_dir(dir).map_err(write_err)
}

fn parse<R: Record>(path: &Path, bytes: &[u8]) -> Result<PinFile<R>, PinFileError> {
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let prefix = format!("# qchat {} ", R::KIND);

    let mut file: PinFile<R> = PinFile {
        path: path.to_path_buf(),
        entries: Vec::with_capacity(lines.len()),
        has_header: false,
        records: Vec::new(),
        warnings: Vec::new(),
    };
    let mut seen_content = false;
    for (index, raw) in lines.into_iter().enumerate() {
        let number = index + 1;
        let mut warn = |what: String| {
            file.warnings
                .push(format!("{}:{number}: {what}", path.display()));
        };
        let other = Entry::Other(raw.to_vec());
        let Ok(text) = std::str::from_utf8(raw) else {
            seen_content = true;
            warn("not valid UTF-8; line ignored".to_owned());
            file.entries.push(other);
            continue;
        };
        let text = text.trim();
        if text.is_empty() {
            file.entries.push(other);
            continue;
        }
        if !seen_content {
            seen_content = true;
            if let Some(version) = text.strip_prefix(&prefix) {
                if version.trim() != "v1" {
                    return Err(PinFileError::UnsupportedVersion {
                        path: path.to_path_buf(),
                        found: text.to_owned(),
                        expected: header(R::KIND),
                    });
                }
                file.has_header = true;
                file.entries.push(other);
                continue;
            }
        }
        if text.starts_with('#') {
            file.entries.push(other);
            continue;
        }
        match R::parse(text) {
            Ok(mut record) => {
                record.set_line(number);
                let key = record.key();
                if let Some(first) = file.records.iter().find(|r| r.key() == key) {
                    warn(format!(
                        "{key} already appears on line {}; this line is ignored",
                        first.line()
                    ));
                } else {
                    file.records.push(record.clone());
                }
                file.entries.push(Entry::Record {
                    raw: raw.to_vec(),
                    record,
                });
            }
            Err(what) => {
                warn(format!("{what}; line ignored"));
                file.entries.push(other);
            }
        }
    }
    Ok(file)
}
