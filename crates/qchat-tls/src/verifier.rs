//! The client's certificate verifier: trust by pinned key, not by CA.
//!
//! qchat servers present a self-signed certificate. Its names, dates and
//! issuer are chosen by whoever made it, so checking them proves nothing;
//! the only thing that carries trust is whether the public key is the one the
//! user pinned. This verifier therefore checks exactly that, and still has
//! rustls verify the handshake signature with the certificate's key, which is
//! what proves the server holds the pinned key's private half.
//!
//! This is the only place in qchat that replaces rustls' verification.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use crate::Fingerprint;

/// What the client expects the server's key to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expectation {
    /// The presented key's fingerprint must equal this; otherwise the
    /// handshake fails.
    Pinned(Fingerprint),
    /// No pin exists for this server.
    Unknown {
        /// `true`: complete the handshake with any key, so the client can show
        /// the fingerprint and ask the user before sending anything.
        /// `false` (strict mode): refuse the handshake.
        accept: bool,
    },
}

/// Why the verifier refused a server, carried inside the rustls error so the
/// reason survives into QUIC connection errors.
#[derive(Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PinRefusal {
    /// The server presented a different key than the one pinned.
    #[error(
        "the server presented key {presented}, but {expected} is pinned for it; \
         this may be an attack, or the server's identity was replaced"
    )]
    Mismatch {
        /// The pinned fingerprint.
        expected: Fingerprint,
        /// The fingerprint the server presented.
        presented: Fingerprint,
    },
    /// No pin exists and unknown servers are refused (strict mode).
    #[error("the server's key {presented} is not pinned and unknown servers are refused")]
    Unknown {
        /// The fingerprint the server presented.
        presented: Fingerprint,
    },
}

/// Shows the sentence: rustls prints certificate errors with `Debug`, and this
/// text ends up in what the user reads.
impl fmt::Debug for PinRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Whether `err` is this verifier refusing the server's key (as opposed to,
/// say, a bad signature or a network problem).
pub fn is_pin_failure(err: &rustls::Error) -> bool {
    pin_refusal(err).is_some()
}

/// The refusal inside `err`, if the handshake failed on the pin check.
pub fn pin_refusal(err: &rustls::Error) -> Option<&PinRefusal> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<PinRefusal>()
        }
        _ => None,
    }
}

/// A [`ServerCertVerifier`] that accepts exactly the pinned key.
#[derive(Debug)]
pub struct PinVerifier {
    expectation: Expectation,
    presented: Mutex<Option<Fingerprint>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinVerifier {
    /// A verifier enforcing `expectation`, using the aws-lc-rs provider's
    /// signature algorithms.
    pub fn new(expectation: Expectation) -> Arc<Self> {
        Arc::new(Self {
            expectation,
            presented: Mutex::new(None),
            algorithms: crate::config::provider().signature_verification_algorithms,
        })
    }

    /// The expectation this verifier enforces.
    pub fn expectation(&self) -> Expectation {
        self.expectation
    }

    /// The fingerprint the server presented during the last handshake,
    /// recorded even when the handshake was refused, so that error messages
    /// can show both.
    pub fn presented(&self) -> Option<Fingerprint> {
        *self
            .presented
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, fingerprint: Option<Fingerprint>) {
        // A poisoned lock only means another thread panicked mid-store of a
        // Copy value; the value is still meaningful.
        *self
            .presented
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = fingerprint;
    }
}

impl ServerCertVerifier for PinVerifier {
    /// Checks only the key. Intermediates are ignored (a self-signed server
    /// sends none, and they could not add trust), and so are the server name
    /// and validity dates, which the certificate's maker chose freely.
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.record(None);
        let presented = Fingerprint::from_cert_der(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        self.record(Some(presented));

        let refusal = match self.expectation {
            Expectation::Pinned(expected) if expected == presented => None,
            Expectation::Pinned(expected) => Some(PinRefusal::Mismatch {
                expected,
                presented,
            }),
            Expectation::Unknown { accept: true } => None,
            Expectation::Unknown { accept: false } => Some(PinRefusal::Unknown { presented }),
        };
        match refusal {
            None => Ok(ServerCertVerified::assertion()),
            Some(refusal) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(refusal)),
            ))),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::internal::msgs::codec::{Codec, Reader};
    use rustls::pki_types::PrivatePkcs8KeyDer;

    struct TestCert {
        der: CertificateDer<'static>,
        key: rcgen::KeyPair,
    }

    fn make_cert() -> TestCert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["qchat".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        TestCert {
            der: cert.der().clone(),
            key,
        }
    }

    fn fingerprint(cert: &TestCert) -> Fingerprint {
        Fingerprint::from_cert_der(&cert.der).expect("fingerprint")
    }

    fn verify(
        verifier: &PinVerifier,
        cert: &TestCert,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from("qchat").expect("name");
        verifier.verify_server_cert(&cert.der, &[], &name, &[], UnixTime::now())
    }

    /// Signs `message` as a TLS 1.3 server would, with `key`.
    fn sign(key: &rcgen::KeyPair, message: &[u8]) -> DigitallySignedStruct {
        let der = PrivatePkcs8KeyDer::from(key.serialize_der());
        let signing_key = crate::config::provider()
            .key_provider
            .load_private_key(der.into())
            .expect("load key");
        let signer = signing_key
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .expect("scheme");
        let signature = signer.sign(message).expect("sign");
        // rustls offers no public constructor; decode the wire form
        // (scheme u16, length u16, signature) with its codec instead.
        let mut wire = u16::from(SignatureScheme::ECDSA_NISTP256_SHA256)
            .to_be_bytes()
            .to_vec();
        let len = u16::try_from(signature.len()).expect("short signature");
        wire.extend_from_slice(&len.to_be_bytes());
        wire.extend_from_slice(&signature);
        DigitallySignedStruct::read(&mut Reader::init(&wire)).expect("decode")
    }

    #[test]
    fn matching_pin_is_accepted() {
        let cert = make_cert();
        let verifier = PinVerifier::new(Expectation::Pinned(fingerprint(&cert)));
        assert!(verify(&verifier, &cert).is_ok());
        assert_eq!(verifier.presented(), Some(fingerprint(&cert)));
    }

    #[test]
    fn mismatching_pin_is_refused_and_presented_is_recorded() {
        let pinned = make_cert();
        let other = make_cert();
        let verifier = PinVerifier::new(Expectation::Pinned(fingerprint(&pinned)));
        let err = verify(&verifier, &other).expect_err("must refuse");
        assert!(is_pin_failure(&err), "{err}");
        assert_eq!(
            pin_refusal(&err),
            Some(&PinRefusal::Mismatch {
                expected: fingerprint(&pinned),
                presented: fingerprint(&other),
            })
        );
        assert_eq!(verifier.presented(), Some(fingerprint(&other)));
    }

    #[test]
    fn refusal_text_names_both_fingerprints() {
        let pinned = make_cert();
        let other = make_cert();
        let verifier = PinVerifier::new(Expectation::Pinned(fingerprint(&pinned)));
        let text = verify(&verifier, &other)
            .expect_err("must refuse")
            .to_string();
        assert!(text.contains(&fingerprint(&pinned).canonical()), "{text}");
        assert!(text.contains(&fingerprint(&other).canonical()), "{text}");
    }

    #[test]
    fn unknown_key_is_accepted_when_asking_later() {
        let cert = make_cert();
        let verifier = PinVerifier::new(Expectation::Unknown { accept: true });
        assert!(verify(&verifier, &cert).is_ok());
        assert_eq!(verifier.presented(), Some(fingerprint(&cert)));
    }

    #[test]
    fn unknown_key_is_refused_in_strict_mode() {
        let cert = make_cert();
        let verifier = PinVerifier::new(Expectation::Unknown { accept: false });
        let err = verify(&verifier, &cert).expect_err("strict");
        assert_eq!(
            pin_refusal(&err),
            Some(&PinRefusal::Unknown {
                presented: fingerprint(&cert)
            })
        );
        assert_eq!(verifier.presented(), Some(fingerprint(&cert)));
    }

    #[test]
    fn garbage_certificate_is_a_bad_encoding_not_a_pin_failure() {
        let verifier = PinVerifier::new(Expectation::Unknown { accept: true });
        let name = ServerName::try_from("qchat").expect("name");
        let junk = CertificateDer::from(vec![1u8, 2, 3]);
        let err = verifier
            .verify_server_cert(&junk, &[], &name, &[], UnixTime::now())
            .expect_err("junk");
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
        );
        assert!(!is_pin_failure(&err));
        assert_eq!(verifier.presented(), None);
    }

    #[test]
    fn names_and_dates_are_not_checked() {
        let cert = make_cert();
        let verifier = PinVerifier::new(Expectation::Pinned(fingerprint(&cert)));
        let name = ServerName::try_from("not-the-cert-name.example").expect("name");
        let far_future = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1 << 40));
        assert!(verifier
            .verify_server_cert(&cert.der, &[], &name, &[], far_future)
            .is_ok());
    }

    #[test]
    fn signature_by_the_certificates_key_verifies() {
        let cert = make_cert();
        let verifier = PinVerifier::new(Expectation::Pinned(fingerprint(&cert)));
        let dss = sign(&cert.key, b"handshake transcript");
        assert!(verifier
            .verify_tls13_signature(b"handshake transcript", &cert.der, &dss)
            .is_ok());
    }

    #[test]
    fn signature_by_another_key_is_refused() {
        let cert = make_cert();
        let attacker = make_cert();
        let verifier = PinVerifier::new(Expectation::Pinned(fingerprint(&cert)));
        let dss = sign(&attacker.key, b"handshake transcript");
        let err = verifier
            .verify_tls13_signature(b"handshake transcript", &cert.der, &dss)
            .expect_err("wrong key");
        assert!(!is_pin_failure(&err));
        let dss = sign(&attacker.key, b"handshake transcript");
        assert!(verifier
            .verify_tls12_signature(b"handshake transcript", &cert.der, &dss)
            .is_err());
    }

    #[test]
    fn signature_over_other_message_is_refused() {
        let cert = make_cert();
        let verifier = PinVerifier::new(Expectation::Pinned(fingerprint(&cert)));
        let dss = sign(&cert.key, b"handshake transcript");
        assert!(verifier
            .verify_tls13_signature(b"another transcript", &cert.der, &dss)
            .is_err());
    }

    #[test]
    fn verify_schemes_come_from_the_provider() {
        let verifier = PinVerifier::new(Expectation::Unknown { accept: true });
        let schemes = verifier.supported_verify_schemes();
        assert_eq!(
            schemes,
            crate::config::provider()
                .signature_verification_algorithms
                .supported_schemes()
        );
        assert!(schemes.contains(&SignatureScheme::ECDSA_NISTP256_SHA256));
    }
}
