//! Signing and checking members' messages with their person keys
//! (Ed25519). The bytes signed are defined in the protocol crate
//! (`qchat_proto::signed`); this module only holds the cryptography, in the
//! one crypto provider the project uses (aws-lc-rs).

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::{Fingerprint, Identity};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the
/// sequence, the algorithm identifier 1.3.101.112 and the bit string's
/// header; the raw 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A person's key, ready to sign messages.
pub struct Signer {
    key: Ed25519KeyPair,
    public: [u8; 32],
}

/// The identity's key is not an Ed25519 key (a server's P-256 identity,
/// or a damaged file).
#[derive(Debug, thiserror::Error)]
#[error("the key cannot sign messages (an Ed25519 person key is needed): {0}")]
pub struct NotEd25519(String);

impl Signer {
    /// The signer for a person identity.
    pub fn new(identity: &Identity) -> Result<Self, NotEd25519> {
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(identity.key_der.secret_der())
            .map_err(|e| NotEd25519(e.to_string()))?;
        let public = <[u8; 32]>::try_from(key.public_key().as_ref())
            .map_err(|_| NotEd25519("the public key is not 32 bytes".into()))?;
        Ok(Signer { key, public })
    }

    /// The raw public key that checks this signer's signatures.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.key.sign(msg).as_ref().to_vec()
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("fingerprint", &fingerprint(&self.public))
            .finish_non_exhaustive()
    }
}

/// The fingerprint of a raw Ed25519 public key: the SHA-256 of its
/// SubjectPublicKeyInfo, the same value as the fingerprint of a
/// certificate that carries the key.
pub fn fingerprint(public: &[u8; 32]) -> Fingerprint {
    let mut spki = [0u8; 44];
    spki[..12].copy_from_slice(&ED25519_SPKI_PREFIX);
    spki[12..].copy_from_slice(public);
    Fingerprint::from_spki_der(&spki)
}

/// Whether `sig` is `public`'s signature over `msg`.
pub fn verify(public: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&signature::ED25519, public)
        .verify(msg, sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{load_or_create_as, Role};

    fn person() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (id, _) = load_or_create_as(dir.path(), Role::Person).expect("identity");
        (dir, id)
    }

    #[test]
    fn the_raw_keys_fingerprint_is_the_certificates() {
        let (_d, id) = person();
        let s = Signer::new(&id).expect("ed25519");
        assert_eq!(fingerprint(&s.public_key()), id.fingerprint);
    }

    #[test]
    fn a_signature_verifies_only_for_its_bytes_and_key() {
        let (_d, a) = person();
        let (_e, b) = person();
        let a = Signer::new(&a).expect("a");
        let b = Signer::new(&b).expect("b");
        let sig = a.sign(b"hello");
        assert_eq!(sig.len(), 64);
        assert!(verify(&a.public_key(), b"hello", &sig));
        assert!(!verify(&a.public_key(), b"hellp", &sig));
        assert!(!verify(&b.public_key(), b"hello", &sig));
        assert!(!verify(&a.public_key(), b"hello", &sig[..63]));
    }

    #[test]
    fn a_server_key_is_not_a_signer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (id, _) = load_or_create_as(dir.path(), Role::Server).expect("identity");
        assert!(Signer::new(&id).is_err());
    }
}
