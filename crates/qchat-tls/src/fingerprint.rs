//! SHA-256 fingerprints of a server's public key.
//!
//! The fingerprint covers the certificate's SubjectPublicKeyInfo, not the
//! whole certificate: re-issuing the self-signed certificate from the same key
//! (new dates, new names) keeps the fingerprint, while a new key always
//! changes it. The hash is taken over the exact DER bytes found in the
//! certificate; re-encoding could normalise away differences and make two
//! distinct encodings compare equal.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;

/// The SHA-256 hash of a server's SubjectPublicKeyInfo: the thing clients pin.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// Why a fingerprint could not be computed or parsed.
#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    /// The text matches none of the accepted spellings.
    #[error(
        "`{input}` is not a SHA-256 fingerprint; accepted forms: `SHA256:` followed by 43 base64 \
         characters (as qchat prints it), 64 hex digits (any case, optionally separated by ':', \
         '-' or spaces, optionally prefixed by `SHA256:`), or openssl output such as \
         `SHA2-256(stdin)= <hex>` or `sha256 Fingerprint=<hex>`; copy it again from the server's \
         output"
    )]
    Invalid {
        /// The offending input, shortened if very long.
        input: String,
    },
    /// The certificate bytes are not a parseable X.509 certificate.
    #[error(
        "cannot compute a fingerprint: the certificate is not valid DER X.509 ({reason}); \
         check that the right file was given"
    )]
    Certificate {
        /// What the parser rejected.
        reason: String,
    },
}

impl Fingerprint {
    /// Hashes the exact SubjectPublicKeyInfo DER bytes.
    pub fn from_spki_der(spki_der: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// Fingerprints a DER certificate by its SubjectPublicKeyInfo, taken
    /// byte-for-byte from the certificate rather than re-encoded.
    pub fn from_cert_der(cert_der: &[u8]) -> Result<Self, FingerprintError> {
        let (rest, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| {
            FingerprintError::Certificate {
                reason: e.to_string(),
            }
        })?;
        if !rest.is_empty() {
            return Err(FingerprintError::Certificate {
                reason: format!("{} unexpected bytes after the certificate", rest.len()),
            });
        }
        Ok(Self::from_spki_der(cert.tbs_certificate.subject_pki.raw))
    }

    /// Wraps an already computed SHA-256 value.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The raw 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `SHA256:` plus unpadded standard base64, the form OpenSSH prints, so
    /// users recognise it and can compare it with `ssh-keygen` habits.
    pub fn canonical(&self) -> String {
        format!("SHA256:{}", STANDARD_NO_PAD.encode(self.0))
    }

    /// Lowercase hex pairs joined by `:`, comparable with
    /// `openssl dgst -sha256 -c` output (which is lowercase too).
    pub fn hex(&self) -> String {
        let mut out = String::with_capacity(32 * 3);
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(':');
            }
            push_hex(&mut out, *b);
        }
        out
    }

    /// The whole fingerprint as 16 groups of 4 lowercase hex digits, for
    /// reading out over a phone line. Hex digits cannot be confused when
    /// spoken (base64 needs "capital", "lowercase", "plus", "slash"), and a
    /// group of four is short enough to hold in mind while the other person
    /// checks it. All 64 digits are included: a partial comparison would let
    /// an attacker grind keys until the compared part matches.
    pub fn read_aloud(&self) -> String {
        let mut out = String::with_capacity(16 * 5);
        for (i, pair) in self.0.chunks(2).enumerate() {
            if i > 0 {
                out.push(' ');
            }
            for b in pair {
                push_hex(&mut out, *b);
            }
        }
        out
    }
}

fn push_hex(out: &mut String, b: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push(char::from(DIGITS[usize::from(b >> 4)]));
    out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// Shows the canonical form: a byte array in test failures and logs is
/// impossible to compare with what the server printed.
impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.canonical())
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    /// Accepts every spelling a user is likely to paste; see
    /// [`FingerprintError::Invalid`] for the list.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).ok_or_else(|| FingerprintError::Invalid {
            input: shorten(s.trim()),
        })
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 120;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

fn parse(input: &str) -> Option<Fingerprint> {
    let mut s = input.trim();

    // openssl dgst: "SHA2-256(stdin)= <hex>", "(stdin)= <hex>". Base64 never
    // contains ')', so this cannot cut into a base64 fingerprint.
    if let Some(pos) = s.rfind(")=") {
        s = s[pos + 2..].trim();
    }
    // openssl x509 -fingerprint: "sha256 Fingerprint=AB:CD:..". Only when a
    // space precedes it, since "...fingerprint=" could end a base64 string.
    if let Some(pos) = s.to_ascii_lowercase().find("fingerprint=") {
        if s[..pos].contains(' ') {
            s = s[pos + "fingerprint=".len()..].trim();
        }
    }
    if s.len() >= 7 && s.is_char_boundary(7) && s[..7].eq_ignore_ascii_case("sha256:") {
        s = s[7..].trim();
    }

    // Hex first: after dropping separators a hex fingerprint has 64 digits,
    // a base64 one 43 or 44 characters, so the two can never be confused.
    let compact: Vec<u8> = s
        .bytes()
        .filter(|b| !(b.is_ascii_whitespace() || *b == b':' || *b == b'-'))
        .collect();
    if compact.len() == 64 && compact.iter().all(u8::is_ascii_hexdigit) {
        let mut out = [0u8; 32];
        for (dst, pair) in out.iter_mut().zip(compact.chunks(2)) {
            *dst = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        return Some(Fingerprint(out));
    }

    // Base64 is case-sensitive and has no separators; padding is optional
    // because OpenSSH omits it but other tools add it.
    let b64 = s.strip_suffix('=').unwrap_or(s);
    if b64.len() != 43 {
        return None;
    }
    let bytes = STANDARD_NO_PAD.decode(b64).ok()?;
    let arr: [u8; 32] = bytes.try_into().ok()?;
    Some(Fingerprint(arr))
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Fingerprint {
        let mut b = [0u8; 32];
        for (i, v) in b.iter_mut().enumerate() {
            *v = (i as u8).wrapping_mul(37).wrapping_add(0xa5);
        }
        Fingerprint::from_bytes(b)
    }

    fn parse_ok(s: &str) -> Fingerprint {
        s.parse()
            .unwrap_or_else(|e| panic!("should parse {s:?}: {e}"))
    }

    #[test]
    fn spki_hash_is_sha256_of_exact_bytes() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        let fp = Fingerprint::from_spki_der(b"abc");
        assert_eq!(
            fp.hex().replace(':', ""),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn canonical_is_openssh_style() {
        let c = sample().canonical();
        assert!(c.starts_with("SHA256:"));
        assert_eq!(c.len(), 7 + 43);
        assert!(!c.ends_with('='));
        assert_eq!(sample().to_string(), c);
    }

    #[test]
    fn hex_is_lowercase_colon_pairs() {
        let h = sample().hex();
        assert_eq!(h.len(), 32 * 3 - 1);
        assert!(h.split(':').all(|p| p.len() == 2));
        assert_eq!(h, h.to_lowercase());
    }

    #[test]
    fn read_aloud_is_sixteen_groups_of_four() {
        let r = sample().read_aloud();
        let groups: Vec<&str> = r.split(' ').collect();
        assert_eq!(groups.len(), 16);
        assert!(groups.iter().all(|g| g.len() == 4));
        assert_eq!(r.replace(' ', ""), sample().hex().replace(':', ""));
    }

    #[test]
    fn parses_every_printed_form() {
        let fp = sample();
        assert_eq!(parse_ok(&fp.canonical()), fp);
        assert_eq!(parse_ok(&fp.hex()), fp);
        assert_eq!(parse_ok(&fp.read_aloud()), fp);
    }

    #[test]
    fn parses_base64_variants() {
        let fp = sample();
        let b64 = STANDARD_NO_PAD.encode(fp.as_bytes());
        assert_eq!(parse_ok(&format!("SHA256:{b64}=")), fp);
        assert_eq!(parse_ok(&format!("sha256:{b64}")), fp);
        assert_eq!(parse_ok(&format!("  Sha256:{b64}\n")), fp);
        assert_eq!(parse_ok(&b64), fp);
        assert_eq!(parse_ok(&format!("{b64}=")), fp);
    }

    #[test]
    fn parses_hex_variants() {
        let fp = sample();
        let plain = fp.hex().replace(':', "");
        assert_eq!(parse_ok(&plain), fp);
        assert_eq!(parse_ok(&plain.to_uppercase()), fp);
        assert_eq!(parse_ok(&fp.hex().to_uppercase()), fp);
        assert_eq!(parse_ok(&fp.hex().replace(':', "-")), fp);
        assert_eq!(parse_ok(&format!("SHA256:{plain}")), fp);
        assert_eq!(parse_ok(&format!("sha256:{}", fp.hex())), fp);
        assert_eq!(parse_ok(&fp.read_aloud().to_uppercase()), fp);
    }

    #[test]
    fn parses_openssl_output() {
        let fp = sample();
        let plain = fp.hex().replace(':', "");
        assert_eq!(parse_ok(&format!("SHA2-256(stdin)= {plain}\n")), fp);
        assert_eq!(parse_ok(&format!("(stdin)= {plain}")), fp);
        assert_eq!(parse_ok(&format!("(stdin)= {}", fp.hex())), fp);
        let upper = fp.hex().to_uppercase();
        assert_eq!(parse_ok(&format!("sha256 Fingerprint={upper}")), fp);
        assert_eq!(parse_ok(&format!("SHA256 Fingerprint={upper}")), fp);
    }

    #[test]
    fn base64_is_case_sensitive() {
        let fp = sample();
        let c = fp.canonical();
        let swapped: String = c[7..]
            .chars()
            .map(|ch| {
                if ch.is_ascii_lowercase() {
                    ch.to_ascii_uppercase()
                } else {
                    ch.to_ascii_lowercase()
                }
            })
            .collect();
        if let Ok(other) = format!("SHA256:{swapped}").parse::<Fingerprint>() {
            assert_ne!(other, fp);
        }
    }

    #[test]
    fn rejects_garbage_with_helpful_message() {
        let bad_inputs = [
            String::new(),
            "SHA256:".to_owned(),
            "SHA256:abc".to_owned(),
            "zz".repeat(32),
            "ab".repeat(31),
            "ab".repeat(33),
            "SHA1:0123".to_owned(),
        ];
        for bad in &bad_inputs {
            let err = bad.parse::<Fingerprint>().expect_err(bad);
            let msg = err.to_string();
            assert!(msg.contains("accepted forms"), "{msg}");
        }
    }

    #[test]
    fn overlong_input_is_shortened_in_error() {
        let long = "x".repeat(10_000);
        let msg = long
            .parse::<Fingerprint>()
            .expect_err("invalid")
            .to_string();
        assert!(msg.len() < 1_000);
    }

    #[test]
    fn non_ascii_input_does_not_panic() {
        assert!("ßha256:ééé".parse::<Fingerprint>().is_err());
        assert!("SHA25€:x".parse::<Fingerprint>().is_err());
    }

    #[test]
    fn from_cert_der_rejects_non_certificates() {
        let err = Fingerprint::from_cert_der(b"not a cert").expect_err("invalid");
        assert!(matches!(err, FingerprintError::Certificate { .. }));
    }

    #[test]
    fn from_cert_der_hashes_the_certificates_spki() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["qchat".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let from_cert = Fingerprint::from_cert_der(cert.der()).expect("fingerprint");
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        assert_eq!(from_cert, Fingerprint::from_spki_der(&spki));
    }
}
