//! The server's client-certificate verifier: any self-signed key, proven.
//!
//! A person's certificate is self-signed, like the server's: there is no CA
//! to chain it to, and its names and dates are whatever its maker chose, so
//! checking them proves nothing. What the server needs is the key — the
//! member's identity is the fingerprint of its SubjectPublicKeyInfo — and
//! proof that the client holds the key's private half. This verifier
//! therefore accepts any well-formed certificate and still has the
//! provider verify the handshake signature with the certificate's key.
//! Whether a key may use a name is decided after the handshake, at the
//! hello, where a refusal can carry a sentence for the user.
//!
//! Client certificates are requested, never required: a client without a
//! key (an older client, `qchat connect --guest`) completes the handshake
//! and joins as a guest, unless the server refuses guests at the hello.
//!
//! Beside [`crate::verifier`], this is the only place in qchat that
//! replaces rustls' verification.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::Fingerprint;

/// A [`ClientCertVerifier`] that accepts any key and checks that the client
/// holds it.
#[derive(Debug)]
pub struct AnyClientKey {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyClientKey {
    /// A verifier using the aws-lc-rs provider's signature algorithms.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            algorithms: crate::config::provider().signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for AnyClientKey {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: an empty list tells a client to send any certificate it
    /// has.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// Checks only that the certificate parses far enough to have a key to
    /// fingerprint; intermediates, names and dates are ignored, since the
    /// certificate's maker chose them freely.
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Fingerprint::from_cert_der(end_entity)
            .map(|_| ClientCertVerified::assertion())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The fingerprint of the key a client proved in the handshake, from the
/// certificate chain the TLS layer reports (`quinn::Connection::peer_identity`
/// gives exactly this); `None` for a client that sent no certificate.
pub fn client_fingerprint(chain: &[CertificateDer<'_>]) -> Option<Fingerprint> {
    chain
        .first()
        .and_then(|cert| Fingerprint::from_cert_der(cert).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{load_or_create_as, Role};
    use rustls::internal::msgs::codec::{Codec, Reader};

    fn person() -> (tempfile::TempDir, crate::Identity) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (id, _) = load_or_create_as(dir.path(), Role::Person).expect("identity");
        (dir, id)
    }

    /// Signs `message` as a TLS 1.3 client would, with `id`'s key.
    fn sign(id: &crate::Identity, message: &[u8]) -> DigitallySignedStruct {
        let signing_key = crate::config::provider()
            .key_provider
            .load_private_key(id.key_der.clone_key())
            .expect("load key");
        let signer = signing_key
            .choose_scheme(&[SignatureScheme::ED25519])
            .expect("an Ed25519 key signs Ed25519");
        let signature = signer.sign(message).expect("sign");
        let mut wire = u16::from(SignatureScheme::ED25519).to_be_bytes().to_vec();
        let len = u16::try_from(signature.len()).expect("short signature");
        wire.extend_from_slice(&len.to_be_bytes());
        wire.extend_from_slice(&signature);
        DigitallySignedStruct::read(&mut Reader::init(&wire)).expect("decode")
    }

    #[test]
    fn requests_but_does_not_require_a_certificate() {
        let v = AnyClientKey::new();
        assert!(v.offer_client_auth());
        assert!(!v.client_auth_mandatory());
        assert!(v.root_hint_subjects().is_empty());
    }

    #[test]
    fn any_self_signed_certificate_is_accepted() {
        let (_dir, id) = person();
        assert!(AnyClientKey::new()
            .verify_client_cert(&id.cert_der, &[], UnixTime::now())
            .is_ok());
        assert_eq!(
            client_fingerprint(std::slice::from_ref(&id.cert_der)),
            Some(id.fingerprint)
        );
    }

    #[test]
    fn garbage_is_a_bad_encoding() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
        let err = AnyClientKey::new()
            .verify_client_cert(&junk, &[], UnixTime::now())
            .expect_err("junk");
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
        );
        assert_eq!(client_fingerprint(&[junk]), None);
        assert_eq!(client_fingerprint(&[]), None);
    }

    #[test]
    fn the_holders_signature_verifies_and_anothers_does_not() {
        let (_a, alice) = person();
        let (_m, mallory) = person();
        let v = AnyClientKey::new();
        let good = sign(&alice, b"transcript");
        assert!(v
            .verify_tls13_signature(b"transcript", &alice.cert_der, &good)
            .is_ok());
        assert!(v
            .verify_tls13_signature(b"another transcript", &alice.cert_der, &good)
            .is_err());
        let forged = sign(&mallory, b"transcript");
        assert!(v
            .verify_tls13_signature(b"transcript", &alice.cert_der, &forged)
            .is_err());
    }

    #[test]
    fn ed25519_is_among_the_schemes_offered() {
        assert!(AnyClientKey::new()
            .supported_verify_schemes()
            .contains(&SignatureScheme::ED25519));
    }
}
