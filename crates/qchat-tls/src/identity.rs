//! Self-signed identities on disk: the server's, and each person's.
//!
//! An identity directory holds `cert.pem` (the self-signed certificate) and
//! `key.pem` (its private key, PKCS#8, mode 0600). A server's key is ECDSA
//! P-256; a person's is Ed25519 (see [`Role`]). Others pin or register the
//! fingerprint of the key — clients pin the server's, the server binds a
//! person's name to theirs — so losing or silently replacing these files
//! would look like a changed key to everyone: this module therefore never
//! regenerates an identity unless asked to with [`create_new_as`], never
//! deletes an old identity, and refuses to guess when only one of the two
//! files is present. Both roles go through the same code; only the key
//! algorithm, the certificate's name and the words of the errors differ.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use crate::fsutil::check_private_file_mode;
use crate::fsutil::{self, check_private_dir_mode};
use crate::{config, Fingerprint};

/// File name of the certificate inside an identity directory.
pub const CERT_FILE: &str = "cert.pem";
/// File name of the private key inside an identity directory.
pub const KEY_FILE: &str = "key.pem";

/// Whose identity a directory holds: it decides the key algorithm and what
/// an error tells the user to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A server's: ECDSA P-256, which every TLS 1.3 client verifies.
    Server,
    /// A person's (`$QCHAT_HOME/identity`), presented as a TLS client
    /// certificate. Ed25519: deterministic signatures (no randomness needed
    /// at signing time), 64-byte signatures and 32-byte public keys, and in
    /// aws-lc-rs faster to sign than P-256 — it will sign every message
    /// once messages are signed. rustls' aws-lc-rs provider verifies it in
    /// TLS 1.3 client authentication, and rcgen generates it.
    Person,
}

impl Role {
    /// What to tell a user whose identity files are damaged. Both ways out
    /// are explicit: restoring keeps pins and names valid, a new identity
    /// does not.
    fn recovery(self) -> &'static str {
        match self {
            Role::Server => {
                "restore it from backup, or run `qchat serve --new-identity` to create a new \
                 identity (the old files are kept, but clients will see a changed key)"
            }
            Role::Person => {
                "restore it from backup, or run `qchat identity new` to create a new key (the \
                 old files are kept, but the names your old key registered on servers stay \
                 theirs until they expire)"
            }
        }
    }

    fn create_hint(self) -> &'static str {
        match self {
            Role::Server => "start `qchat serve` once to create one",
            Role::Person => "`qchat connect` creates one on first use",
        }
    }

    fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Role::Server => &rcgen::PKCS_ECDSA_P256_SHA256,
            Role::Person => &rcgen::PKCS_ED25519,
        }
    }

    fn common_name(self) -> &'static str {
        match self {
            Role::Server => "qchat server",
            Role::Person => "qchat user",
        }
    }
}

/// A server identity: certificate, private key and the fingerprint clients pin.
pub struct Identity {
    /// The self-signed certificate as sent in the TLS handshake.
    pub cert_der: CertificateDer<'static>,
    /// The certificate's private key.
    pub key_der: PrivateKeyDer<'static>,
    /// Fingerprint of the certificate's public key.
    pub fingerprint: Fingerprint,
    /// Where the certificate is stored.
    pub cert_path: PathBuf,
    /// Where the private key is stored.
    pub key_path: PathBuf,
}

impl Identity {
    /// The key a QUIC endpoint signs its stateless-reset tokens with,
    /// derived from the private key so that it is the same after every
    /// restart of the same server. A client whose server restarted sends to
    /// a connection the new process does not know; with the same key the
    /// new process's reset is one the client recognises, and the client
    /// learns at once that its connection is gone and reconnects — instead
    /// of waiting out its idle timeout. Derived (HKDF-SHA-256, its own
    /// label), never the private key itself: knowing it reveals nothing of
    /// the key, and it can only end connections to this server.
    pub fn stateless_reset_key(&self) -> aws_lc_rs::hmac::Key {
        use aws_lc_rs::{hkdf, hmac};
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"qchat stateless reset");
        let prk = salt.extract(self.key_der.secret_der());
        let okm = prk
            .expand(&[b"hmac-sha256 key v1"], hmac::HMAC_SHA256)
            // HKDF fails only for outputs over 255 hash lengths; this is one.
            .expect("HKDF-SHA-256 expands to one hash length");
        hmac::Key::from(okm)
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert_der: self.cert_der.clone(),
            key_der: self.key_der.clone_key(),
            fingerprint: self.fingerprint,
            cert_path: self.cert_path.clone(),
            key_path: self.key_path.clone(),
        }
    }
}

/// Written by hand so that the private key can never end up in a log.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// Whether [`load_or_create`] found an identity or made a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadOutcome {
    /// An existing identity was loaded and validated.
    Loaded,
    /// No identity existed; a new one was generated and saved.
    Created,
}

/// Why an identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The identity directory could not be created.
    #[error(
        "cannot create the identity directory {}: {source}; check that its parent exists and is writable",
        dir.display()
    )]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// [`load`] was asked for an identity that does not exist.
    #[error(
        "no identity in {}: neither {CERT_FILE} nor {KEY_FILE} exists; {}",
        dir.display(),
        role.create_hint()
    )]
    NotFound {
        /// The directory that was searched.
        dir: PathBuf,
        /// Whose identity was looked for.
        role: Role,
    },
    /// Exactly one of the two identity files exists.
    #[error(
        "{} is missing but {} exists; {}",
        missing.display(),
        present.display(),
        role.recovery()
    )]
    Incomplete {
        /// Whose identity it is.
        role: Role,
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// An identity file exists but could not be read.
    #[error("cannot read {}: {source}; check its permissions, or {}", path.display(), role.recovery())]
    Read {
        /// Whose identity it is.
        role: Role,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The certificate file does not contain a usable certificate.
    #[error("{} does not contain a valid PEM certificate ({reason}); {}", path.display(), role.recovery())]
    BadCertificate {
        /// Whose identity it is.
        role: Role,
        /// The certificate file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key file does not contain a usable private key.
    #[error("{} does not contain a usable PEM private key ({reason}); {}", path.display(), role.recovery())]
    BadKey {
        /// Whose identity it is.
        role: Role,
        /// The key file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key and the certificate belong to different key pairs.
    #[error(
        "{} does not belong to the certificate {} (their public keys differ); {}",
        key_path.display(),
        cert_path.display(),
        role.recovery()
    )]
    KeyMismatch {
        /// Whose identity it is.
        role: Role,
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
    },
    /// Key or certificate generation failed.
    #[error("cannot generate a new identity: {0}; this is a bug or a broken crypto library, please report it")]
    Generate(#[from] rcgen::Error),
    /// Writing the new identity failed.
    #[error("cannot write {}: {source}; check free space and permissions of the directory", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An existing identity file could not be moved aside for a new identity.
    #[error(
        "cannot move {} aside to {}: {source}; nothing was replaced, check the directory's permissions",
        from.display(),
        to.display()
    )]
    MoveAside {
        /// The existing file.
        from: PathBuf,
        /// Where it was to be moved.
        to: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Loads the server identity in `dir`, creating a new one if neither file
/// exists (see [`load_or_create_as`]).
pub fn load_or_create(dir: &Path) -> Result<(Identity, LoadOutcome), IdentityError> {
    load_or_create_as(dir, Role::Server)
}

/// Loads the identity in `dir`, creating a new one for `role` if neither
/// file exists.
///
/// If only one of `cert.pem` / `key.pem` exists, or either is unreadable or
/// corrupt, this fails without touching anything: regenerating would silently
/// change the key everyone has pinned or registered.
pub fn load_or_create_as(dir: &Path, role: Role) -> Result<(Identity, LoadOutcome), IdentityError> {
    let (cert_path, key_path) = paths(dir);
    let cert_exists = exists(&cert_path, role)?;
    let key_exists = exists(&key_path, role)?;
    if !cert_exists && !key_exists {
        return Ok((create_in(dir, role)?, LoadOutcome::Created));
    }
    Ok((load_as(dir, role)?, LoadOutcome::Loaded))
}

/// Loads and validates the server identity in `dir`; never creates one.
pub fn load(dir: &Path) -> Result<Identity, IdentityError> {
    load_as(dir, Role::Server)
}

/// Loads and validates the identity in `dir`; never creates one.
///
/// Validation checks that the certificate and key parse and that the key is
/// the certificate's key. Either role's key algorithm is accepted: what
/// matters is that the provider can sign with it.
pub fn load_as(dir: &Path, role: Role) -> Result<Identity, IdentityError> {
    let (cert_path, key_path) = paths(dir);
    match (exists(&cert_path, role)?, exists(&key_path, role)?) {
        (true, true) => {}
        (false, false) => {
            return Err(IdentityError::NotFound {
                dir: dir.to_path_buf(),
                role,
            });
        }
        (true, false) => {
            return Err(IdentityError::Incomplete {
                role,
                present: cert_path,
                missing: key_path,
            });
        }
        (false, true) => {
            return Err(IdentityError::Incomplete {
                role,
                present: key_path,
                missing: cert_path,
            });
        }
    }

    let cert_pem = read(&cert_path, role)?;
    let key_pem = read(&key_path, role)?;

    let bad_cert = |reason: String| IdentityError::BadCertificate {
        role,
        path: cert_path.clone(),
        reason,
    };
    let bad_key = |reason: String| IdentityError::BadKey {
        role,
        path: key_path.clone(),
        reason,
    };
    let cert_der =
        CertificateDer::from_pem_slice(&cert_pem).map_err(|e| bad_cert(e.to_string()))?;
    let fingerprint = Fingerprint::from_cert_der(&cert_der).map_err(|e| bad_cert(e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad_key(e.to_string()))?;

    // Load the key with the provider rustls will sign with, so a key that
    // parses here is a key the handshake can actually use.
    let signing_key = config::provider()
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| bad_key(e.to_string()))?;
    let cert_spki = cert_spki(&cert_der).map_err(bad_cert)?;
    let key_matches = signing_key
        .public_key()
        .is_some_and(|key_spki| key_spki.as_ref() == cert_spki.as_slice());
    if !key_matches {
        return Err(IdentityError::KeyMismatch {
            role,
            cert_path,
            key_path,
        });
    }

    Ok(Identity {
        cert_der,
        key_der,
        fingerprint,
        cert_path,
        key_path,
    })
}

/// Creates a new server identity in `dir` (see [`create_new_as`]).
pub fn create_new(dir: &Path) -> Result<Identity, IdentityError> {
    create_new_as(dir, Role::Server)
}

/// Creates a new identity for `role` in `dir`, keeping any existing one.
///
/// Existing `cert.pem` / `key.pem` are renamed to `cert.pem.old-<unix time>` /
/// `key.pem.old-<unix time>`; they are never deleted, so an accidental
/// rotation can be undone by renaming them back.
pub fn create_new_as(dir: &Path, role: Role) -> Result<Identity, IdentityError> {
    let (cert_path, key_path) = paths(dir);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Certificate first: an interruption then leaves a key without a
    // certificate, the same half-state creation can leave, and never a
    // certificate without its key.
    for path in [&cert_path, &key_path] {
        if exists(path, role)? {
            let to = aside_name(path, stamp, role)?;
            std::fs::rename(path, &to).map_err(|source| IdentityError::MoveAside {
                from: path.clone(),
                to: to.clone(),
                source,
            })?;
        }
    }
    create_in(dir, role)
}

/// Warnings about identity files that other users could read or replace.
pub fn permission_warnings(identity: &Identity) -> Vec<String> {
    let mut warnings = Vec::new();
    warnings.extend(check_private_file_mode(&identity.key_path));
    warnings.extend(check_private_dir_mode(fsutil::parent_dir(
        &identity.key_path,
    )));
    warnings
}

fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(CERT_FILE), dir.join(KEY_FILE))
}

/// Distinguishes "absent" from "cannot tell": an unreadable directory must
/// not be mistaken for an empty one, or a new identity would be created.
fn exists(path: &Path, role: Role) -> Result<bool, IdentityError> {
    path.try_exists().map_err(|source| IdentityError::Read {
        role,
        path: path.to_path_buf(),
        source,
    })
}

fn read(path: &Path, role: Role) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Read {
        role,
        path: path.to_path_buf(),
        source,
    })
}

fn cert_spki(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| e.to_string())?;
    Ok(cert.tbs_certificate.subject_pki.raw.to_vec())
}

/// `<file>.old-<stamp>`, with a counter if that name is taken, because an
/// existing old identity must never be overwritten.
fn aside_name(path: &Path, stamp: u64, role: Role) -> Result<PathBuf, IdentityError> {
    let base = path.as_os_str().to_string_lossy().into_owned();
    let mut candidate = PathBuf::from(format!("{base}.old-{stamp}"));
    let mut n = 1u32;
    while exists(&candidate, role)? {
        candidate = PathBuf::from(format!("{base}.old-{stamp}-{n}"));
        n += 1;
    }
    Ok(candidate)
}

/// Generates a key pair and self-signed certificate and stores them in `dir`.
fn create_in(dir: &Path, role: Role) -> Result<Identity, IdentityError> {
    fsutil::create_private_dir(dir).map_err(|source| IdentityError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let (cert_path, key_path) = paths(dir);

    let key = rcgen::KeyPair::generate_for(role.algorithm())?;
    let mut params = rcgen::CertificateParams::new(vec!["qchat".to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, role.common_name());
    // Peers trust the pinned or registered key, not the validity period,
    // so the dates only need to keep ordinary X.509 parsers happy: a day of slack for
    // clock skew and a lifetime the server will never outlive.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(100 * 365);
    let cert = params.self_signed(&key)?;

    let cert_der = cert.der().clone();
    let fingerprint =
        Fingerprint::from_cert_der(&cert_der).map_err(|e| IdentityError::BadCertificate {
            role,
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));

    // Both files are fully written and synced under temporary names before
    // either is renamed into place, and the key goes first: a crash can leave
    // a key without certificate (reported, never guessed at), but never a
    // certificate whose key was lost. tempfile creates them owner-only and
    // removes whichever is left if a step fails.
    let key_tmp = write_synced(dir, &key_path, key.serialize_pem().as_bytes())?;
    let cert_tmp = write_synced(dir, &cert_path, cert.pem().as_bytes())?;
    persist(key_tmp, &key_path)?;
    persist(cert_tmp, &cert_path)?;
    fsutil::sync_dir(dir).map_err(|source| IdentityError::Write {
        path: dir.to_path_buf(),
        source,
    })?;

    Ok(Identity {
        cert_der,
        key_der,
        fingerprint,
        cert_path,
        key_path,
    })
}

/// Writes `contents` to a new owner-only temporary file in `dir`, synced,
/// to be renamed to `target` by [`persist`].
fn write_synced(
    dir: &Path,
    target: &Path,
    contents: &[u8],
) -> Result<tempfile::NamedTempFile, IdentityError> {
    let write = || -> io::Result<tempfile::NamedTempFile> {
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        file.write_all(contents)?;
        file.as_file().sync_all()?;
        Ok(file)
    };
    write().map_err(|source| IdentityError::Write {
        path: target.to_path_buf(),
        source,
    })
}

fn persist(file: tempfile::NamedTempFile, to: &Path) -> Result<(), IdentityError> {
    file.persist(to)
        .map(drop)
        .map_err(|e| IdentityError::Write {
            path: to.to_path_buf(),
            source: e.error,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    /// A restarted server must sign stateless resets as before, or its old
    /// clients ignore them; another server must not.
    #[test]
    fn the_stateless_reset_key_survives_a_reload_and_is_the_servers_own() {
        use aws_lc_rs::hmac;
        let dir = tempdir();
        let (first, _) = load_or_create(&dir.path().join("a")).expect("create");
        let (again, _) = load_or_create(&dir.path().join("a")).expect("load");
        let (other, _) = load_or_create(&dir.path().join("b")).expect("create another");
        let tag = |id: &Identity| {
            hmac::sign(&id.stateless_reset_key(), b"connection id")
                .as_ref()
                .to_vec()
        };
        assert_eq!(tag(&first), tag(&again));
        assert_ne!(tag(&first), tag(&other));
    }

    #[test]
    fn creates_then_loads_the_same_identity() {
        let dir = tempdir();
        let id_dir = dir.path().join("identity");
        let (created, outcome) = load_or_create(&id_dir).expect("create");
        assert_eq!(outcome, LoadOutcome::Created);
        let (loaded, outcome) = load_or_create(&id_dir).expect("load");
        assert_eq!(outcome, LoadOutcome::Loaded);
        assert_eq!(created.fingerprint, loaded.fingerprint);
        assert_eq!(created.cert_der, loaded.cert_der);
        assert_eq!(created.key_der.secret_der(), loaded.key_der.secret_der());
    }

    #[test]
    fn fingerprint_is_the_certificates_spki_hash() {
        let dir = tempdir();
        let (id, _) = load_or_create(dir.path()).expect("create");
        let expected = Fingerprint::from_cert_der(&id.cert_der).expect("fingerprint");
        assert_eq!(id.fingerprint, expected);
    }

    #[cfg(unix)]
    #[test]
    fn files_and_directory_are_private() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempdir();
        let id_dir = dir.path().join("identity");
        let (id, _) = load_or_create(&id_dir).expect("create");
        let mode = |p: &Path| fs::metadata(p).expect("metadata").mode() & 0o777;
        assert_eq!(mode(&id.key_path), 0o600);
        assert_eq!(mode(&id_dir), 0o700);
        assert!(permission_warnings(&id).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn readable_key_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir();
        let (id, _) = load_or_create(dir.path()).expect("create");
        fs::set_permissions(&id.key_path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let warnings = permission_warnings(&id);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("key.pem"), "{warnings:?}");
        assert!(warnings[0].contains("chmod 600"), "{warnings:?}");
    }

    #[test]
    fn missing_key_is_an_error_and_nothing_is_touched() {
        let dir = tempdir();
        let (id, _) = load_or_create(dir.path()).expect("create");
        fs::remove_file(&id.key_path).expect("remove key");
        let cert_before = fs::read(&id.cert_path).expect("read cert");
        let err = load_or_create(dir.path()).expect_err("must not regenerate");
        assert!(matches!(err, IdentityError::Incomplete { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("key.pem"), "{msg}");
        assert!(msg.contains("--new-identity"), "{msg}");
        assert!(!id.key_path.exists());
        assert_eq!(fs::read(&id.cert_path).expect("read cert"), cert_before);
    }

    #[test]
    fn missing_cert_is_an_error() {
        let dir = tempdir();
        let (id, _) = load_or_create(dir.path()).expect("create");
        fs::remove_file(&id.cert_path).expect("remove cert");
        let err = load_or_create(dir.path()).expect_err("must not regenerate");
        assert!(err.to_string().contains("cert.pem"), "{err}");
        assert!(!id.cert_path.exists());
    }

    #[test]
    fn corrupt_cert_is_an_error() {
        let dir = tempdir();
        let (id, _) = load_or_create(dir.path()).expect("create");
        fs::write(&id.cert_path, "garbage").expect("write");
        let err = load_or_create(dir.path()).expect_err("corrupt");
        assert!(matches!(err, IdentityError::BadCertificate { .. }), "{err}");
        assert_eq!(fs::read(&id.cert_path).expect("read"), b"garbage");
    }

    #[test]
    fn corrupt_key_is_an_error() {
        let dir = tempdir();
        let (id, _) = load_or_create(dir.path()).expect("create");
        fs::write(
            &id.key_path,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let err = load_or_create(dir.path()).expect_err("corrupt");
        assert!(matches!(err, IdentityError::BadKey { .. }), "{err}");
    }

    #[test]
    fn key_from_another_identity_is_a_mismatch() {
        let dir_a = tempdir();
        let dir_b = tempdir();
        let (a, _) = load_or_create(dir_a.path()).expect("create a");
        let (b, _) = load_or_create(dir_b.path()).expect("create b");
        fs::copy(&b.key_path, &a.key_path).expect("copy key");
        let err = load(dir_a.path()).expect_err("mismatch");
        assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn load_does_not_create() {
        let dir = tempdir();
        let err = load(dir.path()).expect_err("nothing there");
        assert!(matches!(err, IdentityError::NotFound { .. }), "{err}");
        assert!(!dir.path().join(CERT_FILE).exists());
        assert!(!dir.path().join(KEY_FILE).exists());
    }

    #[test]
    fn create_new_keeps_the_old_identity() {
        let dir = tempdir();
        let (old, _) = load_or_create(dir.path()).expect("create");
        let old_key = fs::read(&old.key_path).expect("read key");
        let new = create_new(dir.path()).expect("new identity");
        assert_ne!(old.fingerprint, new.fingerprint);

        let names: Vec<String> = fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        let old_keys: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with("key.pem.old-"))
            .collect();
        assert_eq!(old_keys.len(), 1, "{names:?}");
        assert!(
            names.iter().any(|n| n.starts_with("cert.pem.old-")),
            "{names:?}"
        );
        assert_eq!(
            fs::read(dir.path().join(old_keys[0])).expect("read old key"),
            old_key
        );
        let (reloaded, outcome) = load_or_create(dir.path()).expect("load");
        assert_eq!(outcome, LoadOutcome::Loaded);
        assert_eq!(reloaded.fingerprint, new.fingerprint);
    }

    #[test]
    fn create_new_twice_in_one_second_keeps_both_old_identities() {
        let dir = tempdir();
        load_or_create(dir.path()).expect("create");
        create_new(dir.path()).expect("first rotation");
        create_new(dir.path()).expect("second rotation");
        let old_keys = fs::read_dir(dir.path())
            .expect("read_dir")
            .filter(|e| {
                e.as_ref()
                    .map(|e| e.file_name().to_string_lossy().starts_with("key.pem.old-"))
                    .unwrap_or(false)
            })
            .count();
        assert_eq!(old_keys, 2);
    }

    #[test]
    fn no_temp_files_are_left_behind() {
        let dir = tempdir();
        load_or_create(dir.path()).expect("create");
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["cert.pem", "key.pem"]);
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let dir = tempdir();
        let (id, _) = load_or_create(dir.path()).expect("create");
        let debug = format!("{id:?}");
        assert!(debug.contains(&id.fingerprint.canonical()), "{debug}");
        assert!(!debug.contains("key_der"), "{debug}");
    }

    /// A person's key is created, kept and reported like the server's, with
    /// its own algorithm and its own way out in the errors.
    #[test]
    fn a_persons_identity_is_ed25519_and_never_regenerated() {
        let dir = tempdir();
        let (id, outcome) = load_or_create_as(dir.path(), Role::Person).expect("create");
        assert_eq!(outcome, LoadOutcome::Created);
        let (_, cert) = x509_parser::parse_x509_certificate(&id.cert_der).expect("parse");
        assert_eq!(
            cert.tbs_certificate.subject_pki.algorithm.algorithm,
            x509_parser::oid_registry::OID_SIG_ED25519
        );
        let (again, outcome) = load_or_create_as(dir.path(), Role::Person).expect("load");
        assert_eq!(outcome, LoadOutcome::Loaded);
        assert_eq!(again.fingerprint, id.fingerprint);
        fs::write(&id.key_path, "garbage").expect("write");
        let err = load_or_create_as(dir.path(), Role::Person).expect_err("corrupt");
        assert!(matches!(err, IdentityError::BadKey { .. }), "{err}");
        assert!(err.to_string().contains("qchat identity new"), "{err}");
        assert_eq!(fs::read(&id.key_path).expect("read"), b"garbage");
        let fresh = create_new_as(dir.path(), Role::Person).expect("rotate");
        assert_ne!(fresh.fingerprint, id.fingerprint);
    }

    #[test]
    fn clone_keeps_the_key() {
        let dir = tempdir();
        let (id, _) = load_or_create(dir.path()).expect("create");
        let copy = id.clone();
        assert_eq!(copy.key_der.secret_der(), id.key_der.secret_der());
    }
}
