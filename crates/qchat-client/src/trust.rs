//! Trust on first use, decided the way OpenSSH does it, but with the
//! decision split around the handshake: the verifier inside the handshake
//! only compares against what was loaded before it (it must not block or
//! prompt), and the user is asked after the handshake and before a single
//! byte of chat data — the name included — is sent.

use std::path::{Path, PathBuf};

use qchat_tls::known_hosts::KnownHostsError;
use qchat_tls::{Expectation, Fingerprint, HostKey, KnownHosts, Pin};

/// How to treat a server that has no pin yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustMode {
    /// Ask the user (on a terminal); without a terminal, behave as
    /// [`TrustMode::Strict`].
    Ask,
    /// Pin an unknown server's key without asking (scripts).
    AcceptNew,
    /// Never add a pin: only servers already pinned, or given with
    /// `--fingerprint`, are accepted.
    Strict,
}

/// What is known before the handshake, and what the verifier will enforce.
#[derive(Debug)]
pub struct TrustPlan {
    /// The server as the user named it.
    pub host: HostKey,
    /// The pin store's path.
    pub known_hosts: PathBuf,
    /// The pin already stored for this server, if any.
    pub pin: Option<Pin>,
    /// A fingerprint the user supplied out of band.
    pub given: Option<Fingerprint>,
    /// The trust mode.
    pub mode: TrustMode,
    /// Whether a person can be asked.
    pub interactive: bool,
    /// Problems found while reading the pin store (reported, not fatal).
    pub warnings: Vec<String>,
    /// The person's own key, presented as a client certificate to a server
    /// that is already trusted; `None` for a guest. It travels with the
    /// plan because every connection and reconnect needs both.
    pub me: Option<std::sync::Arc<qchat_tls::Identity>>,
}

/// How far the server is trusted, shown in the status line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustState {
    /// The key matches a fingerprint checked out of band.
    Verified,
    /// The key matches a pin accepted on first use, never checked.
    TrustedOnFirstUse,
}

impl std::fmt::Display for TrustState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrustState::Verified => "verified",
            TrustState::TrustedOnFirstUse => "trusted on first use",
        })
    }
}

/// What the user is shown about a server seen for the first time.
#[derive(Clone, Debug)]
pub struct UnknownServer {
    /// As the user named it.
    pub host: HostKey,
    /// The address it resolved to.
    pub addr: std::net::SocketAddr,
    /// The key it presented.
    pub fingerprint: Fingerprint,
    /// Where the pin will be stored.
    pub known_hosts: PathBuf,
}

/// The user's answer about an unknown server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Do not connect.
    Refuse,
    /// Trust on first use.
    Accept,
    /// The user typed or pasted the expected fingerprint and it matched.
    AcceptVerified,
}

/// A refusal to trust, before or after the handshake.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The pin store could not be read or written.
    #[error(transparent)]
    Store(#[from] KnownHostsError),
    /// `--fingerprint` disagrees with the stored pin.
    #[error(
        "--fingerprint {} does not match the pin for {} in {}:{} ({}); \
         if the server's key really changed to the one you were given, run \
         `qchat known-hosts replace {} --fingerprint {}`",
        .0.given, .0.host, .0.file.display(), .0.line, .0.pinned, .0.host, .0.given
    )]
    GivenDiffersFromPin(Box<PinDisagreement>),
}

/// A `--fingerprint` that contradicts the stored pin.
#[derive(Debug)]
pub struct PinDisagreement {
    /// The server.
    pub host: HostKey,
    /// What the user gave.
    pub given: Fingerprint,
    /// What is stored.
    pub pinned: Fingerprint,
    /// The pin store.
    pub file: PathBuf,
    /// The pin's line.
    pub line: usize,
}

impl TrustPlan {
    /// Loads the pin for `host` and decides what the handshake must accept.
    pub fn load(
        host: HostKey,
        known_hosts: &Path,
        given: Option<Fingerprint>,
        mode: TrustMode,
        interactive: bool,
    ) -> Result<TrustPlan, TrustError> {
        let store = KnownHosts::load(known_hosts)?;
        let pin = store.get(&host).cloned();
        if let (Some(given), Some(pin)) = (given, &pin) {
            if pin.fingerprint != given {
                return Err(TrustError::GivenDiffersFromPin(Box::new(PinDisagreement {
                    host,
                    given,
                    pinned: pin.fingerprint,
                    file: known_hosts.to_path_buf(),
                    line: pin.line,
                })));
            }
        }
        Ok(TrustPlan {
            host,
            known_hosts: known_hosts.to_path_buf(),
            pin,
            given,
            mode,
            interactive,
            warnings: store.warnings().to_vec(),
            me: None,
        })
    }

    /// The same plan, presenting `me` (or nobody: a guest).
    pub fn presenting(mut self, me: Option<std::sync::Arc<qchat_tls::Identity>>) -> Self {
        self.me = me;
        self
    }

    /// What the verifier enforces during the handshake.
    pub fn expectation(&self) -> Expectation {
        match (self.given, &self.pin) {
            (Some(fp), _) => Expectation::Pinned(fp),
            (None, Some(pin)) => Expectation::Pinned(pin.fingerprint),
            (None, None) => Expectation::Unknown {
                accept: self.mode == TrustMode::AcceptNew
                    || (self.mode == TrustMode::Ask && self.interactive),
            },
        }
    }

    /// Whether the user must be asked after the handshake.
    pub fn needs_decision(&self) -> bool {
        self.given.is_none() && self.pin.is_none() && self.mode == TrustMode::Ask
    }

    /// Records what was accepted and returns the resulting trust state. Called
    /// after the handshake succeeded and, for an unknown server, after the
    /// user agreed.
    pub fn record(
        &self,
        presented: Fingerprint,
        decision: Decision,
    ) -> Result<TrustState, TrustError> {
        if let Some(pin) = &self.pin {
            // Already pinned: a matching --fingerprint upgrades it to verified.
            if self.given.is_some() && !pin.verified {
                KnownHosts::update(&self.known_hosts, |e| {
                    e.mark_verified(&self.host, presented)
                })?;
                return Ok(TrustState::Verified);
            }
            return Ok(if pin.verified || self.given.is_some() {
                TrustState::Verified
            } else {
                TrustState::TrustedOnFirstUse
            });
        }
        let verified = self.given.is_some() || decision == Decision::AcceptVerified;
        if self.mode == TrustMode::Strict {
            // Strict never writes: the server was accepted only because the
            // user gave its fingerprint for this one connection.
            return Ok(TrustState::Verified);
        }
        KnownHosts::update(&self.known_hosts, |e| {
            e.add(&self.host, presented, verified)
        })?;
        Ok(if verified {
            TrustState::Verified
        } else {
            TrustState::TrustedOnFirstUse
        })
    }
}
