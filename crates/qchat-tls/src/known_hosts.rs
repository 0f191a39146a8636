//! The client's pin store: which key each server is expected to present.
//!
//! A [`PinFile`] of [`Pin`]s: the locking, atomic rewrites, private mode,
//! version header and tolerance of hand edits are that module's, shared with
//! the contacts file; this one adds what a pin is and the rule that a
//! server's key is never replaced implicitly.
//!
//! # File format
//!
//! ```text
//! # qchat known_hosts v1
//! # host:port fingerprint first-seen verified|tofu
//! 192.0.2.7:8080 SHA256:abc... 2026-11-25T19:56:07Z tofu
//! [2001:db8::1]:8080 SHA256:... 2026-11-25T19:56:07Z verified
//! chat.example.org:8080 SHA256:... 2026-11-25T19:56:07Z verified
//! ```
//!
//! - `host:port` has the host in lowercase; IPv6 addresses are bracketed.
//! - The fingerprint is `SHA256:` plus unpadded base64 of the SHA-256 of the
//!   server's SubjectPublicKeyInfo (see [`Fingerprint`]).
//! - `first-seen` is an RFC 3339 UTC timestamp of when the pin was recorded.
//! - `verified` means the user compared the fingerprint out of band; `tofu`
//!   ("trust on first use") means it was accepted on first sight.
//! - Header, comments, malformed lines, duplicates and concurrency: see
//!   [`crate::pinfile`].

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::host::HostKey;
use crate::pinfile::{timestamp, Edit, PinFile, PinFileError, Record};
use crate::Fingerprint;

/// The version header; the first non-empty line of every file we write.
pub const HEADER: &str = "# qchat known_hosts v1";
#[cfg(test)]
const COLUMNS_COMMENT: &str = <Pin as Record>::COLUMNS;

/// Why the pin store could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum KnownHostsError {
    /// The file could not be read, locked or written, or is of a newer
    /// version.
    #[error(transparent)]
    File(#[from] PinFileError),
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

impl Record for Pin {
    type Key = HostKey;
    const KIND: &'static str = "known_hosts";
    const COLUMNS: &'static str = "# host:port fingerprint first-seen verified|tofu";
    type Error = KnownHostsError;

    fn parse(text: &str) -> Result<Self, String> {
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
            line: 0,
        })
    }

    fn to_line(&self) -> String {
        let status = if self.verified { "verified" } else { "tofu" };
        format!(
            "{} {} {} {status}",
            self.host,
            self.fingerprint,
            timestamp(self.first_seen)
        )
    }

    fn key(&self) -> HostKey {
        self.host.clone()
    }

    fn set_line(&mut self, line: usize) {
        self.line = line;
    }

    fn line(&self) -> usize {
        self.line
    }
}

/// The parsed pin store.
pub type KnownHosts = PinFile<Pin>;

/// Changes to the store, applied inside [`KnownHosts::update`].
///
/// No method ever replaces a pin implicitly: changing a host's key takes an
/// explicit [`replace`](Edit::replace).
pub type KnownHostsEdit = Edit<Pin>;

impl PinFile<Pin> {
    /// All pins in file order (for duplicate hosts, only the one in effect).
    pub fn pins(&self) -> &[Pin] {
        self.records()
    }
}

impl Edit<Pin> {
    /// All pins in effect, in file order.
    pub fn pins(&self) -> impl Iterator<Item = &Pin> {
        self.records()
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
        self.put(Pin {
            host: host.clone(),
            fingerprint,
            first_seen: OffsetDateTime::now_utc(),
            verified,
            line: 0,
        });
        Ok(())
    }

    /// Replaces whatever is pinned for `host` with `fingerprint`, marked
    /// verified and first seen now; returns the previous pin.
    ///
    /// Meant for the user explicitly accepting a changed key after checking
    /// it, hence `verified`.
    pub fn replace(&mut self, host: &HostKey, fingerprint: Fingerprint) -> Option<Pin> {
        self.put(Pin {
            host: host.clone(),
            fingerprint,
            first_seen: OffsetDateTime::now_utc(),
            verified: true,
            line: 0,
        })
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
        let pinned = self
            .get(host)
            .ok_or_else(|| KnownHostsError::NotPinned { host: host.clone() })?
            .fingerprint;
        if pinned != fingerprint {
            return Err(KnownHostsError::FingerprintMismatch {
                host: host.clone(),
                pinned,
                given: fingerprint,
            });
        }
        self.modify(host, |pin| !std::mem::replace(&mut pin.verified, true));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::{Path, PathBuf};

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
            KnownHosts::update(&path, |e| Ok(e.remove(&host("a:1")).is_some())).expect("remove");
        assert!(removed);
        assert!(store.get(&host("a:1")).is_none());
        let (_, removed) =
            KnownHosts::update(&path, |e| Ok(e.remove(&host("a:1")).is_some())).expect("remove");
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
            matches!(
                err,
                KnownHostsError::File(PinFileError::UnsupportedVersion { .. })
            ),
            "{err}"
        );
        let err = KnownHosts::update(&path, |e| e.add(&host("a:1"), fp(1), false)).expect_err("v2");
        assert!(
            matches!(
                err,
                KnownHostsError::File(PinFileError::UnsupportedVersion { .. })
            ),
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
            KnownHosts::update(&path, |e| Ok(e.remove(&host("a:1")).is_some())).expect("remove");
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
