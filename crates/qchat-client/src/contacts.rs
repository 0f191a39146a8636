//! The people the user verified: `$QCHAT_HOME/contacts`, a name and the key
//! set the user checked with that person out of band.
//!
//! The file is a [`PinFile`] like `known_hosts` (locked, atomically
//! replaced, 0600, versioned, hand edits kept), one contact per line:
//!
//! ```text
//! # qchat contacts v1
//! # name fingerprint[,fingerprint...] verified-at
//! alice SHA256:abc...,SHA256:def... 2026-11-29T23:10:00Z
//! ```
//!
//! A contact is a name, not a name on one server: a person's key is the
//! same on every server they use, so an `alice` elsewhere with other keys is
//! worth the same warning. Names are compared as the room compares them
//! ([`qchat_proto::names::fold`]: case and look-alikes), and a name cannot
//! contain a space or a comma, which is what makes the line format safe.

use std::fmt;

use qchat_proto::names;
use qchat_tls::pinfile::{timestamp, PinFile, PinFileError, Record};
use qchat_tls::Fingerprint;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Why the contacts file could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum ContactsError {
    /// The file could not be read, locked or written, or is of a newer
    /// version.
    #[error(transparent)]
    File(#[from] PinFileError),
    /// A fingerprint given for a contact is not one of the keys stored for
    /// it.
    #[error(
        "the fingerprint given for {name} ({given}) is not one of the keys you verified for them ({}); nothing was changed",
        list(keys)
    )]
    NotTheirKey {
        /// The contact.
        name: String,
        /// What the user gave.
        given: Fingerprint,
        /// What is stored.
        keys: Vec<Fingerprint>,
    },
}

/// A contact's name: shown as written, compared as the room compares names.
#[derive(Clone, Debug)]
pub struct ContactName {
    name: String,
    folded: String,
}

impl ContactName {
    /// The name `name`.
    pub fn new(name: &str) -> Self {
        ContactName {
            name: name.to_owned(),
            folded: names::fold(name),
        }
    }
}

impl PartialEq for ContactName {
    fn eq(&self, other: &Self) -> bool {
        self.folded == other.folded
    }
}

impl fmt::Display for ContactName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// One verified person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// The name, as the server spelt it when the user verified it.
    pub name: String,
    /// The keys the name was registered to when the user verified it,
    /// sorted, each once.
    pub keys: Vec<Fingerprint>,
    /// When the user verified it (UTC).
    pub verified_at: OffsetDateTime,
    /// 1-based line number in the file.
    pub line: usize,
}

impl Contact {
    /// `name` with the key set `keys`, verified now.
    pub fn new(name: &str, keys: &[Fingerprint]) -> Self {
        Contact {
            name: name.to_owned(),
            keys: key_set(keys),
            verified_at: OffsetDateTime::now_utc(),
            line: 0,
        }
    }

    /// Whether `keys` is exactly the verified set: a key added is as much a
    /// change as a key replaced, since either could be someone else's.
    pub fn holds(&self, keys: &[Fingerprint]) -> bool {
        self.keys == key_set(keys)
    }

    /// Whether `name` is this contact's name.
    pub fn is(&self, name: &str) -> bool {
        names::same(&self.name, name)
    }
}

/// `keys` as a set: sorted, each once, so two answers listing the same keys
/// in another order are the same set.
pub fn key_set(keys: &[Fingerprint]) -> Vec<Fingerprint> {
    let mut set = keys.to_vec();
    set.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    set.dedup();
    set
}

/// Fingerprints for a sentence: canonical forms, comma-separated.
pub fn list(keys: &[Fingerprint]) -> String {
    keys.iter()
        .map(Fingerprint::canonical)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Record for Contact {
    type Key = ContactName;
    type Error = ContactsError;
    const KIND: &'static str = "contacts";
    const COLUMNS: &'static str = "# name fingerprint[,fingerprint...] verified-at";

    fn parse(text: &str) -> Result<Self, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [name, keys, verified_at] = fields[..] else {
            return Err(format!(
                "expected `name fingerprint[,fingerprint...] verified-at`, found {} fields",
                fields.len()
            ));
        };
        names::validate(name).map_err(|e| format!("`{name}` is not a name: {e}"))?;
        let keys = keys
            .split(',')
            .map(|k| {
                k.parse::<Fingerprint>()
                    .map_err(|_| format!("`{k}` is not a SHA256 fingerprint"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let verified_at = OffsetDateTime::parse(verified_at, &Rfc3339)
            .map_err(|_| format!("`{verified_at}` is not an RFC 3339 timestamp"))?;
        Ok(Contact {
            name: name.to_owned(),
            keys: key_set(&keys),
            verified_at,
            line: 0,
        })
    }

    fn to_line(&self) -> String {
        let keys: Vec<String> = self.keys.iter().map(Fingerprint::canonical).collect();
        format!(
            "{} {} {}",
            self.name,
            keys.join(","),
            timestamp(self.verified_at)
        )
    }

    fn key(&self) -> ContactName {
        ContactName::new(&self.name)
    }

    fn set_line(&mut self, line: usize) {
        self.line = line;
    }

    fn line(&self) -> usize {
        self.line
    }
}

/// The parsed contacts file.
pub type Contacts = PinFile<Contact>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    fn path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("home").join("contacts")
    }

    #[test]
    fn a_contact_round_trips_through_the_documented_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path(&dir);
        let (file, previous) = Contacts::update(&path, |e| {
            Ok(e.put(Contact::new("Alice", &[fp(2), fp(1), fp(2)])))
        })
        .expect("put");
        assert!(previous.is_none());
        let text = fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# qchat contacts v1");
        assert_eq!(lines[1], Contact::COLUMNS);
        let fields: Vec<&str> = lines[2].split(' ').collect();
        assert_eq!(fields[0], "Alice");
        assert_eq!(
            fields[1],
            format!("{},{}", fp(1).canonical(), fp(2).canonical())
        );
        assert!(fields[2].ends_with('Z'), "{}", fields[2]);

        let contact = file.get(&ContactName::new("ALICE")).expect("found by fold");
        assert_eq!(contact.keys, [fp(1), fp(2)]);
        assert_eq!(contact.line, 3);
        assert!(contact.holds(&[fp(2), fp(1)]));
        assert!(!contact.holds(&[fp(1)]), "a key removed is a change");
        assert!(!contact.holds(&[fp(1), fp(2), fp(3)]), "so is one added");
        let reloaded = Contacts::load(&path).expect("load");
        assert_eq!(reloaded.records(), file.records());
        assert!(reloaded.warnings().is_empty(), "{:?}", reloaded.warnings());
    }

    #[test]
    fn look_alike_names_are_one_contact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path(&dir);
        Contacts::update(&path, |e| {
            e.put(Contact::new("alice", &[fp(1)]));
            // All Cyrillic, looks like "alice": the room treats it as the
            // same name, so must we.
            let previous = e.put(Contact::new("аӏісе", &[fp(2)]));
            assert_eq!(previous.map(|c| c.keys), Some(vec![fp(1)]));
            Ok(())
        })
        .expect("put");
        assert_eq!(Contacts::load(&path).expect("load").records().len(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path(&dir);
        Contacts::update(&path, |e| Ok(e.put(Contact::new("alice", &[fp(1)])))).expect("put");
        assert_eq!(fs::metadata(&path).expect("meta").mode() & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_line_costs_that_line_and_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("contacts");
        let good = format!("bob {} 2026-11-29T23:10:00Z", fp(2));
        let original = format!(
            "# qchat contacts v1\nalice SHA256:nope 2026-11-29T23:10:00Z\n{good}\nwho<ever> {} 2026-11-29T23:10:00Z\n",
            fp(3)
        );
        fs::write(&path, &original).expect("write");
        let file = Contacts::load(&path).expect("load");
        assert_eq!(file.records().len(), 1);
        assert_eq!(file.records()[0].name, "bob");
        let damaged: Vec<&String> = file
            .warnings()
            .iter()
            .filter(|w| w.contains(":2: ") || w.contains(":4: "))
            .collect();
        assert_eq!(damaged.len(), 2, "{:?}", file.warnings());

        Contacts::update(&path, |e| Ok(e.put(Contact::new("carol", &[fp(4)])))).expect("put");
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.starts_with(&original), "{text}");
    }

    #[test]
    fn a_newer_version_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("contacts");
        fs::write(&path, "# qchat contacts v2\nwhatever\n").expect("write");
        let err = Contacts::load(&path).expect_err("v2");
        assert!(
            matches!(
                err,
                ContactsError::File(PinFileError::UnsupportedVersion { .. })
            ),
            "{err}"
        );
        let err = Contacts::update(&path, |e| Ok(e.put(Contact::new("alice", &[fp(1)]))))
            .expect_err("v2");
        assert!(err.to_string().contains("# qchat contacts v1"), "{err}");
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            "# qchat contacts v2\nwhatever\n"
        );
    }
}
