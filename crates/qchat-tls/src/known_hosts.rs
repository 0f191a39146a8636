//! The client's pin store: which key each server is expected to present.
//!
//! # File format
//!
//! A UTF-8 text file, one pin per line:
//!
//! ```text
//! # qchat known_hosts v1
//! # host:port fingerprint first-seen verified|tofu
//! 192.0.2.7:8080 SHA256:abc... 2026-11-25T19:56:07Z tofu
//! [2001:db8::1]:8080 SHA256:... 2026-11-25T19:56:07Z verified
//! chat.example.org:8080 SHA256:... 2026-11-25T19:56:07Z verified
//! ```
//!
//! - The first non-empty line is the version header `# qchat known_hosts v1`.
//!   A file without it (for example an empty file) is read as version 1 and
//!   gets the header on the next write; a file claiming any other version is
//!   refused rather than rewritten, since a newer qchat may have written it.
//! - `host:port` has the host in lowercase; IPv6 addresses are bracketed.
//! - The fingerprint is `SHA256:` plus unpadded base64 of the SHA-256 of the
//!   server's SubjectPublicKeyInfo (see [`Fingerprint`]).
//! - `first-seen` is an RFC 3339 UTC timestamp of when the pin was recorded.
//! - `verified` means the user compared the fingerprint out of band; `tofu`
//!   ("trust on first use") means it was accepted on first sight.
//! - Comments (`#`), blank lines and lines that cannot be parsed are kept
//!   verbatim when the file is rewritten and ignored for lookups; unparseable
//!   lines are reported as warnings, so a hand edit gone wrong costs one pin,
//!   not the whole file. If a host appears twice, the first line wins.
//!
//! # Concurrency
//!
//! Writers take an exclusive advisory lock on `<file>.lock`, re-read the file,
//! change it, and atomically rename a complete new file over it, so two qchat
//! processes pinning different servers at once never lose either pin, and
//! readers (which take no lock) always see a complete file.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::fsutil;
use crate::host::HostKey;
use crate::Fingerprint;

/// The version header; the first non-empty line of every file we write.
pub const HEADER: &str = "# qchat known_hosts v1";
const HEADER_PREFIX: &str = "# qchat known_hosts ";
const COLUMNS_COMMENT: &str = "# host:port fingerprint first-seen verified|tofu";

/// Why the pin store could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum KnownHostsError {
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
        "{} starts with `{found}`, but this qchat only understands `{HEADER}`; upgrade qchat, or move the file aside to start with an empty one",
        path.display()
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The header line found.
        found: String,
    },
    /// Adding a pin would replace a different existing pin.
    #[error(
        "{host} is already pinned to {pinned}, not {offered}; nothing was changed. If the server's key really changed, replace the pin explicitly"
    )]
    PinConflict {
        /// The host.
        host: HostKey,
        /// The fingerprint already stored.
        pinned: Fingerprint,
        /// The fingerprint that was to be added.
        offered: Fingerprint,
    },
    /// A fingerprint given for verification differs from the stored pin.
    #[error(
        "the fingerprint given for {host} ({given}) does not match the pinned one ({pinned}); the pin stays unverified. Ask the server's operator which one is right"
    )]
    FingerprintMismatch {
        /// The host.
        host: HostKey,
        /// The fingerprint stored.
        pinned: Fingerprint,
        /// The fingerprint given by the user.
        given: Fingerprint,
    },
    /// The host has no pin to operate on.
    #[error(
        "{host} has no pin yet; connect to it once, or add it with the fingerprint you were given"
    )]
    NotPinned {
        /// The host.
        host: HostKey,
    },
}

/// One pinned server key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The server address.
    pub host: HostKey,
    /// The pinned key fingerprint.
    pub fingerprint: Fingerprint,
    /// When the pin was first recorded (UTC).
    pub first_seen: OffsetDateTime,
    /// Whether the user confirmed the fingerprint out of band, as opposed to
    /// trusting it on first use.
    pub verified: bool,
    /// 1-based line number of this pin in the file.
    pub line: usize,
}

impl Pin {
    fn to_line(&self) -> Vec<u8> {
        // Seconds precision is all a human needs; RFC 3339 formatting only
        // fails for years beyond 9999, which `now` and parsed values never are.
        let when = self.first_seen.to_offset(time::UtcOffset::UTC);
        let when = when.replace_nanosecond(0).unwrap_or(when);
        let when = when
            .format(&Rfc3339)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned());
        let status = if self.verified { "verified" } else { "tofu" };
        format!("{} {} {when} {status}", self.host, self.fingerprint).into_bytes()
    }
}

/// A line of the file; everything but pins is carried through untouched.
#[derive(Clone, Debug)]
enum Entry {
    Other(Vec<u8>),
    Pin { raw: Vec<u8>, pin: Pin },
}

impl Entry {
    fn pin(&self) -> Option<&Pin> {
        match self {
            Entry::Pin { pin, .. } => Some(pin),
            Entry::Other(_) => None,
        }
    }

    fn raw(&self) -> &[u8] {
        match self {
            Entry::Other(raw) | Entry::Pin { raw, .. } => raw,
        }
    }
}

/// The parsed pin store.
#[derive(Clone, Debug)]
pub struct KnownHosts {
    path: PathBuf,
    entries: Vec<Entry>,
    has_header: bool,
    pins: Vec<Pin>,
    warnings: Vec<String>,
}

impl KnownHosts {
    /// Reads the store at `path`; a missing file is an empty store.
    ///
    /// Takes no lock: writers replace the file atomically, so a reader sees
    /// either the old or the new file, never a partial one.
    pub fn load(path: &Path) -> Result<KnownHosts, KnownHostsError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(KnownHostsError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut store = parse(path, &bytes)?;
        store.warnings.extend(fsutil::check_private_file_mode(path));
        Ok(store)
    }

    /// The file this store was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pin for `host`, if any.
    pub fn get(&self, host: &HostKey) -> Option<&Pin> {
        self.pins.iter().find(|p| &p.host == host)
    }

    /// All pins in file order (for duplicate hosts, only the one in effect).
    pub fn pins(&self) -> &[Pin] {
        &self.pins
    }

    /// Problems found while reading: malformed lines as `<path>:<line>: <what>`,
    /// and a warning if other users can access the file.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Atomically changes the store at `path` and returns the result.
    ///
    /// Takes an exclusive lock on the sidecar `<path>.lock` (the data file
    /// itself cannot carry the lock because it is replaced by rename), re-reads
    /// the file under the lock so changes made by other processes are kept,
    /// applies `f`, then writes a complete new file under a temporary name
    /// (created 0600), syncs it, renames it over `path` and syncs the
    /// directory. Nothing is written if `f` fails or changes nothing. The
    /// directory is created (0700) if missing.
    pub fn update<F, T>(path: &Path, f: F) -> Result<(KnownHosts, T), KnownHostsError>
    where
        F: FnOnce(&mut KnownHostsEdit) -> Result<T, KnownHostsError>,
    {
        let dir = fsutil::parent_dir(path);
        fsutil::create_private_dir(dir).map_err(|source| KnownHostsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;

        let lock_path = lock_path_for(path);
        let lock = fsutil::open_private(&lock_path).map_err(|source| KnownHostsError::Lock {
            path: lock_path.clone(),
            source,
        })?;
        // Fully qualified: std's `File::lock*` methods would otherwise shadow
        // or clash with the trait's on newer toolchains.
        fs4::fs_std::FileExt::lock_exclusive(&lock).map_err(|source| KnownHostsError::Lock {
            path: lock_path.clone(),
            source,
        })?;
        // The lock is released when `lock` is dropped, on every return path.

        let current = KnownHosts::load(path)?;
        let mut edit = KnownHostsEdit {
            entries: current.entries.clone(),
            changed: false,
        };
        if !current.has_header {
            edit.entries
                .insert(0, Entry::Other(HEADER.as_bytes().to_vec()));
            if current
                .entries
                .iter()
                .all(|e| e.raw().trim_ascii().is_empty())
            {
                edit.entries.truncate(1);
                edit.entries
                    .push(Entry::Other(COLUMNS_COMMENT.as_bytes().to_vec()));
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
        write_atomically(path, &contents)?;
        let mut store = parse(path, &contents)?;
        store.warnings.extend(fsutil::check_private_file_mode(path));
        drop(lock);
        Ok((store, value))
    }
}

/// Changes to the store, applied inside [`KnownHosts::update`].
///
/// No method ever replaces a pin implicitly: changing a host's key takes an
/// explicit [`replace`](Self::replace).
#[derive(Debug)]
pub struct KnownHostsEdit {
    entries: Vec<Entry>,
    changed: bool,
}

impl KnownHostsEdit {
    /// The pin for `host`, if any.
    pub fn get(&self, host: &HostKey) -> Option<&Pin> {
        self.entries
            .iter()
            .filter_map(Entry::pin)
            .find(|p| &p.host == host)
    }

    /// All pins in effect, in file order.
    pub fn pins(&self) -> impl Iterator<Item = &Pin> {
        let mut seen = std::collections::HashSet::new();
        self.entries
            .iter()
            .filter_map(Entry::pin)
            .filter(move |p| seen.insert(&p.host))
    }

    /// Pins `host` to `fingerprint`, first seen now.
    ///
    /// Adding the pin that already exists is not an error (two clients may
    /// race to pin the same server); with `verified` it marks it verified.
    /// A different existing pin is an error, never silently replaced.
    pub fn add(
        &mut self,
        host: &HostKey,
        fingerprint: Fingerprint,
        verified: bool,
    ) -> Result<(), KnownHostsError> {
        if let Some(existing) = self.get(host) {
            if existing.fingerprint != fingerprint {
                return Err(KnownHostsError::PinConflict {
                    host: host.clone(),
                    pinned: existing.fingerprint,
                    offered: fingerprint,
                });
            }
            if verified {
                self.mark_verified(host, fingerprint)?;
            }
            return Ok(());
        }
        let pin = Pin {
            host: host.clone(),
            fingerprint,
            first_seen: now(),
            verified,
            line: 0,
        };
        self.entries.push(Entry::Pin {
            raw: pin.to_line(),
            pin,
        });
        self.changed = true;
        self.renumber();
        Ok(())
    }

    /// Replaces whatever is pinned for `host` with `fingerprint`, marked
    /// verified and first seen now; returns the previous pin.
    ///
    /// Meant for the user explicitly accepting a changed key after checking
    /// it, hence `verified`.
    pub fn replace(&mut self, host: &HostKey, fingerprint: Fingerprint) -> Option<Pin> {
        let previous = self.get(host).cloned();
        let pin = Pin {
            host: host.clone(),
            fingerprint,
            first_seen: now(),
            verified: true,
            line: 0,
        };
        let new_entry = Entry::Pin {
            raw: pin.to_line(),
            pin,
        };
        match self.position(host) {
            Some(index) => {
                self.entries[index] = new_entry;
                let mut i = 0;
                self.entries.retain(|e| {
                    let keep = i <= index || e.pin().is_none_or(|p| &p.host != host);
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

    /// Removes every pin for `host`; returns whether there was one.
    pub fn remove(&mut self, host: &HostKey) -> bool {
        let before = self.entries.len();
        self.entries
            .retain(|e| e.pin().is_none_or(|p| &p.host != host));
        let removed = self.entries.len() != before;
        if removed {
            self.changed = true;
            self.renumber();
        }
        removed
    }

    /// Records that the user confirmed `fingerprint` for `host` out of band.
    ///
    /// Fails if the pin differs from what the user confirmed: that mismatch
    /// is exactly what verification exists to catch.
    pub fn mark_verified(
        &mut self,
        host: &HostKey,
        fingerprint: Fingerprint,
    ) -> Result<(), KnownHostsError> {
        let index = self
            .position(host)
            .ok_or_else(|| KnownHostsError::NotPinned { host: host.clone() })?;
        if let Entry::Pin { raw, pin } = &mut self.entries[index] {
            if pin.fingerprint != fingerprint {
                return Err(KnownHostsError::FingerprintMismatch {
                    host: host.clone(),
                    pinned: pin.fingerprint,
                    given: fingerprint,
                });
            }
            if !pin.verified {
                pin.verified = true;
                *raw = pin.to_line();
                self.changed = true;
            }
        }
        Ok(())
    }

    fn position(&self, host: &HostKey) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.pin().is_some_and(|p| &p.host == host))
    }

    fn renumber(&mut self) {
        for (i, entry) in self.entries.iter_mut().enumerate() {
            if let Entry::Pin { pin, .. } = entry {
                pin.line = i + 1;
            }
        }
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
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
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), KnownHostsError> {
    let dir = fsutil::parent_dir(path);
    let write_err = |source| KnownHostsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
    file.write_all(contents).map_err(write_err)?;
    file.as_file().sync_all().map_err(write_err)?;
    file.persist(path).map_err(|e| write_err(e.error))?;
    fsutil::sync_dir(dir).map_err(write_err)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<KnownHosts, KnownHostsError> {
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }

    let mut store = KnownHosts {
        path: path.to_path_buf(),
        entries: Vec::with_capacity(lines.len()),
        has_header: false,
        pins: Vec::new(),
        warnings: Vec::new(),
    };
    let mut seen_content = false;
    for (index, raw) in lines.into_iter().enumerate() {
        let number = index + 1;
        let mut warn = |what: String| {
            store
                .warnings
                .push(format!("{}:{number}: {what}", path.display()));
        };
        let other = Entry::Other(raw.to_vec());
        let Ok(text) = std::str::from_utf8(raw) else {
            seen_content = true;
            warn("not valid UTF-8; line ignored".to_owned());
            store.entries.push(other);
            continue;
        };
        let text = text.trim();
        if text.is_empty() {
            store.entries.push(other);
            continue;
        }
        if !seen_content {
            seen_content = true;
            if let Some(version) = text.strip_prefix(HEADER_PREFIX) {
                if version.trim() != "v1" {
                    return Err(KnownHostsError::UnsupportedVersion {
                        path: path.to_path_buf(),
                        found: text.to_owned(),
                    });
                }
                store.has_header = true;
                store.entries.push(other);
                continue;
            }
        }
        if text.starts_with('#') {
            store.entries.push(other);
            continue;
        }
        match parse_pin_line(text, number) {
            Ok(pin) => {
                if let Some(first) = store.pins.iter().find(|p| p.host == pin.host) {
                    warn(format!(
                        "{} is already pinned on line {}; this line is ignored",
                        pin.host, first.line
                    ));
                } else {
                    store.pins.push(pin.clone());
                }
                store.entries.push(Entry::Pin {
                    raw: raw.to_vec(),
                    pin,
                });
            }
            Err(what) => {
                warn(format!("{what}; line ignored"));
                store.entries.push(other);
            }
        }
    }
    Ok(store)
}

fn parse_pin_line(text: &str, line: usize) -> Result<Pin, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [host, fingerprint, first_seen, status] = fields[..] else {
        return Err(format!(
            "expected `host:port fingerprint first-seen verified|tofu`, found {} fields",
            fields.len()
        ));
    };
    let host: HostKey = host
        .parse()
        .map_err(|_| format!("`{host}` is not a host:port address"))?;
    let fingerprint: Fingerprint = fingerprint
        .parse()
        .map_err(|_| format!("`{fingerprint}` is not a SHA256 fingerprint"))?;
    let first_seen = OffsetDateTime::parse(first_seen, &Rfc3339)
        .map_err(|_| format!("`{first_seen}` is not an RFC 3339 timestamp"))?;
    let verified = match status {
        "verified" => true,
        "tofu" => false,
        other => return Err(format!("`{other}` should be `verified` or `tofu`")),
    };
    Ok(Pin {
        host,
        fingerprint,
        first_seen,
        verified,
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    fn host(s: &str) -> HostKey {
        HostKey::parse(s, 7777).expect("valid host")
    }

    /// Test files are made private like real ones, so that the permission
    /// warning does not mix with the warnings under test.
    fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
        fs::write(path, contents)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    fn store_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("qchat").join("known_hosts")
    }

    #[test]
    fn missing_file_is_an_empty_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = KnownHosts::load(&store_path(&dir)).expect("load");
        assert!(store.pins().is_empty());
        assert!(store.warnings().is_empty());
    }

    #[test]
    fn add_then_get() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        let (store, ()) =
            KnownHosts::update(&path, |e| e.add(&host("a.example:1"), fp(1), false)).expect("add");
        let pin = store.get(&host("A.example:1")).expect("pinned");
        assert_eq!(pin.fingerprint, fp(1));
        assert!(!pin.verified);
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.starts_with(HEADER), "{text}");
        assert_eq!(pin.line, 3, "{text}");
        let reloaded = KnownHosts::load(&path).expect("load");
        assert_eq!(reloaded.get(&host("a.example:1")), Some(pin));
        assert!(reloaded.warnings().is_empty(), "{:?}", reloaded.warnings());
    }

    #[test]
    fn file_format_is_as_documented() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        KnownHosts::update(&path, |e| {
            e.add(&host("[2001:db8::1]:8080"), fp(2), true)?;
            e.add(&host("192.0.2.7:8080"), fp(3), false)
        })
        .expect("update");
        let text = fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], HEADER);
        assert_eq!(lines[1], COLUMNS_COMMENT);
        let f: Vec<&str> = lines[2].split(' ').collect();
        assert_eq!(f[0], "[2001:db8::1]:8080");
        assert_eq!(f[1], fp(2).canonical());
        assert!(f[2].ends_with('Z') && f[2].len() == 20, "{}", f[2]);
        assert_eq!(f[3], "verified");
        assert!(lines[3].starts_with("192.0.2.7:8080 ") && lines[3].ends_with(" tofu"));
    }

    #[cfg(unix)]
    #[test]
    fn written_file_is_private() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        KnownHosts::update(&path, |e| e.add(&host("a:1"), fp(1), false)).expect("add");
        assert_eq!(fs::metadata(&path).expect("meta").mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(path.parent().expect("dir"))
                .expect("meta")
                .mode()
                & 0o777,
            0o700
        );
    }

    #[cfg(unix)]
    #[test]
    fn readable_file_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        fs::write(&path, format!("{HEADER}\n")).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let store = KnownHosts::load(&path).expect("load");
        assert_eq!(store.warnings().len(), 1);
        assert!(store.warnings()[0].contains("chmod 600"));
    }

    #[test]
    fn add_never_replaces_a_different_pin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        KnownHosts::update(&path, |e| e.add(&host("a:1"), fp(1), false)).expect("add");
        let before = fs::read(&path).expect("read");
        let err =
            KnownHosts::update(&path, |e| e.add(&host("a:1"), fp(2), true)).expect_err("conflict");
        assert!(matches!(err, KnownHostsError::PinConflict { .. }), "{err}");
        assert_eq!(fs::read(&path).expect("read"), before);
    }

    #[test]
    fn adding_the_same_pin_again_is_fine_and_can_verify_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        KnownHosts::update(&path, |e| e.add(&host("a:1"), fp(1), false)).expect("add");
        let (store, ()) =
            KnownHosts::update(&path, |e| e.add(&host("a:1"), fp(1), true)).expect("re-add");
        assert_eq!(store.pins().len(), 1);
        assert!(store.pins()[0].verified);
    }

    #[test]
    fn replace_marks_verified_and_returns_previous() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        KnownHosts::update(&path, |e| e.add(&host("a:1"), fp(1), false)).expect("add");
        let (store, previous) =
            KnownHosts::update(&path, |e| Ok(e.replace(&host("a:1"), fp(2)))).expect("replace");
        assert_eq!(previous.map(|p| p.fingerprint), Some(fp(1)));
        let pin = store.get(&host("a:1")).expect("pinned");
        assert_eq!(pin.fingerprint, fp(2));
        assert!(pin.verified);
        assert_eq!(store.pins().len(), 1);
    }

    #[test]
    fn remove_reports_whether_a_pin_existed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        KnownHosts::update(&path, |e| e.add(&host("a:1"), fp(1), false)).expect("add");
        let (store, removed) =
            KnownHosts::update(&path, |e| Ok(e.remove(&host("a:1")))).expect("remove");
        assert!(removed);
        assert!(store.get(&host("a:1")).is_none());
        let (_, removed) =
            KnownHosts::update(&path, |e| Ok(e.remove(&host("a:1")))).expect("remove");
        assert!(!removed);
    }

    #[test]
    fn mark_verified_requires_the_same_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        KnownHosts::update(&path, |e| e.add(&host("a:1"), fp(1), false)).expect("add");
        let err = KnownHosts::update(&path, |e| e.mark_verified(&host("a:1"), fp(9)))
            .expect_err("mismatch");
        assert!(
            matches!(err, KnownHostsError::FingerprintMismatch { .. }),
            "{err}"
        );
        assert!(!KnownHosts::load(&path).expect("load").pins()[0].verified);

        let (store, ()) =
            KnownHosts::update(&path, |e| e.mark_verified(&host("a:1"), fp(1))).expect("verify");
        assert!(store.pins()[0].verified);

        let err = KnownHosts::update(&path, |e| e.mark_verified(&host("b:1"), fp(1)))
            .expect_err("not pinned");
        assert!(matches!(err, KnownHostsError::NotPinned { .. }), "{err}");
    }

    #[test]
    fn comments_and_malformed_lines_survive_rewrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        let good = format!("b.example:2 {} 2026-11-25T19:56:07Z verified", fp(2));
        let original = format!(
            "{HEADER}\n# my servers\n\nthis line is junk\n{good}\nc:3 SHA256:nope 2026-11-25T19:56:07Z tofu\n"
        );
        write_private(&path, &original).expect("write");

        let store = KnownHosts::load(&path).expect("load");
        assert_eq!(store.pins().len(), 1);
        assert_eq!(store.pins()[0].line, 5);
        let warnings = store.warnings().to_vec();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with(&format!("{}:4: ", path.display())),
            "{warnings:?}"
        );
        assert!(
            warnings[1].starts_with(&format!("{}:6: ", path.display())),
            "{warnings:?}"
        );

        KnownHosts::update(&path, |e| e.add(&host("a:1"), fp(1), false)).expect("add");
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.starts_with(&original), "{text}");
        assert_eq!(text.lines().count(), 7);
    }

    #[test]
    fn headerless_file_is_v1_and_gets_a_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        let line = format!("b:2 {} 2026-11-25T19:56:07Z tofu", fp(2));
        write_private(&path, format!("{line}\n")).expect("write");
        let store = KnownHosts::load(&path).expect("load");
        assert_eq!(store.pins()[0].line, 1);

        let (store, ()) =
            KnownHosts::update(&path, |e| e.add(&host("a:1"), fp(1), false)).expect("add");
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().next(), Some(HEADER));
        assert_eq!(text.lines().nth(1), Some(line.as_str()));
        assert_eq!(store.get(&host("b:2")).map(|p| p.line), Some(2));
    }

    #[test]
    fn empty_file_is_v1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        write_private(&path, "").expect("write");
        let store = KnownHosts::load(&path).expect("load");
        assert!(store.pins().is_empty());
        assert!(store.warnings().is_empty());
    }

    #[test]
    fn newer_version_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        write_private(&path, "\n# qchat known_hosts v2\nwhatever\n").expect("write");
        let err = KnownHosts::load(&path).expect_err("v2");
        assert!(
            matches!(err, KnownHostsError::UnsupportedVersion { .. }),
            "{err}"
        );
        let err = KnownHosts::update(&path, |e| e.add(&host("a:1"), fp(1), false)).expect_err("v2");
        assert!(
            matches!(err, KnownHostsError::UnsupportedVersion { .. }),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            "\n# qchat known_hosts v2\nwhatever\n"
        );
    }

    #[test]
    fn duplicate_host_first_wins_with_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        write_private(
            &path,
            format!(
                "{HEADER}\na:1 {} 2026-11-25T19:56:07Z tofu\nA:1 {} 2026-11-25T19:56:07Z tofu\n",
                fp(1),
                fp(2)
            ),
        )
        .expect("write");
        let store = KnownHosts::load(&path).expect("load");
        assert_eq!(store.get(&host("a:1")).map(|p| p.fingerprint), Some(fp(1)));
        assert_eq!(store.pins().len(), 1);
        assert_eq!(store.warnings().len(), 1, "{:?}", store.warnings());

        let (store, removed) =
            KnownHosts::update(&path, |e| Ok(e.remove(&host("a:1")))).expect("remove");
        assert!(removed);
        assert!(store.get(&host("a:1")).is_none(), "all duplicates go");
    }

    #[test]
    fn failed_edit_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        let err = KnownHosts::update(&path, |e| {
            e.add(&host("a:1"), fp(1), false)?;
            e.mark_verified(&host("a:1"), fp(2))
        })
        .expect_err("mismatch");
        assert!(matches!(err, KnownHostsError::FingerprintMismatch { .. }));
        assert!(!path.exists());
    }

    #[test]
    fn no_temp_files_are_left_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        KnownHosts::update(&path, |e| e.add(&host("a:1"), fp(1), false)).expect("add");
        let mut names: Vec<String> = fs::read_dir(path.parent().expect("dir"))
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["known_hosts", "known_hosts.lock"]);
    }

    #[test]
    fn concurrent_updates_never_lose_a_pin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for round in 0..4u8 {
                        let h = HostKey::parse(&format!("host{i}-{round}"), 1).expect("host");
                        KnownHosts::update(&path, |e| e.add(&h, fp(i), false)).expect("update");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let store = KnownHosts::load(&path).expect("load");
        assert_eq!(store.pins().len(), 32);
        assert!(store.warnings().is_empty(), "{:?}", store.warnings());
        for i in 0..8u8 {
            for round in 0..4u8 {
                let h = HostKey::parse(&format!("host{i}-{round}"), 1).expect("host");
                assert_eq!(store.get(&h).map(|p| p.fingerprint), Some(fp(i)));
            }
        }
    }

    #[test]
    fn edit_pins_lists_each_host_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        let (_, count) = KnownHosts::update(&path, |e| {
            e.add(&host("a:1"), fp(1), false)?;
            e.add(&host("b:1"), fp(2), false)?;
            Ok(e.pins().count())
        })
        .expect("update");
        assert_eq!(count, 2);
    }
}
