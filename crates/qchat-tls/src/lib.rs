//! Identity and trust for qchat.
//!
//! A qchat server has a self-signed certificate; clients trust it by pinning
//! the SHA-256 fingerprint of its public key, SSH style, instead of relying on
//! certificate authorities. This crate holds everything that decides whom a
//! connection trusts, so that it can be reviewed in one place:
//!
//! - [`fingerprint`]: the [`Fingerprint`] of a public key, how it is printed
//!   for humans and parsed back from any spelling they might paste.
//! - [`identity`]: the server's and each person's key and certificate on
//!   disk; created once, never silently replaced, since others have pinned
//!   or registered it.
//! - [`host`]: server addresses ([`HostKey`]): every spelling a user may
//!   type, and the one canonical form pins are stored under.
//! - [`known_hosts`]: the client's pin store, a small text file that is
//!   updated with locking and atomic replacement so concurrent clients never
//!   lose a pin; [`pinfile`] is that file's machinery, which the client's
//!   contacts (the people the user verified) share.
//! - [`verifier`]: the rustls certificate verifier that accepts exactly the
//!   pinned key, and [`client_verifier`], the server's verifier of people's
//!   self-signed client certificates; the only places qchat overrides
//!   rustls' verification.
//! - [`config`]: rustls and quinn configurations for both ends, all built on
//!   the aws-lc-rs provider (TLS 1.3, post-quantum hybrid key exchange first).
//!
//! The library never prints; callers decide how to show warnings and errors.

pub mod client_verifier;
pub mod config;
pub mod fingerprint;
mod fsutil;
pub mod host;
pub mod identity;
pub mod known_hosts;
pub mod pinfile;
pub mod signing;
pub mod verifier;

pub use client_verifier::{client_fingerprint, AnyClientKey};
pub use config::{
    client_config, provider, quic_client_config, quic_server_config, server_config, TlsError,
    SERVER_NAME,
};
pub use fingerprint::{Fingerprint, FingerprintError};
pub use host::{HostError, HostKey};
pub use identity::{check_private_file_mode, Identity, IdentityError, LoadOutcome, Role};
pub use known_hosts::{KnownHosts, KnownHostsEdit, KnownHostsError, Pin};
pub use pinfile::{PinFile, PinFileError};
pub use verifier::{is_pin_failure, pin_refusal, Expectation, PinRefusal, PinVerifier};
