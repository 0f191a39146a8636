//! Coming back after a lost connection: the backoff between attempts, and
//! the [`Dialer`] that makes each attempt — the same pinned key (never a
//! prompt mid-session), the same name and instance, and the resume point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use qchat_proto::ResumePoint;
use qchat_tls::{Expectation, Fingerprint, HostKey};

use crate::connection::{self, ConnectError, Greeting, Joined};
use crate::trust::{Decision, TrustMode, TrustPlan};

/// The first wait is under a second; each failure doubles it up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Exponential backoff with jitter: attempt `n` waits between half and all
/// of `min(0.5 s × 2ⁿ⁻¹, 30 s)`, so a room of clients whose server came
/// back does not return all in the same instant.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The next attempt's number (from 1) and the wait before it.
    pub fn next_wait(&mut self) -> (u32, Duration) {
        self.attempt = self.attempt.saturating_add(1);
        let doubled = FIRST_BACKOFF.saturating_mul(1u32 << (self.attempt - 1).min(16));
        let base = doubled.min(MAX_BACKOFF);
        let wait = base.mul_f64(0.5 + fastrand::f64() * 0.5);
        (self.attempt, wait)
    }

    /// Connected again: the next loss starts from a short wait.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Makes the connections after the first: everything needed to reach the
/// same server as the same member.
pub struct Dialer {
    endpoint: quinn::Endpoint,
    host: HostKey,
    known_hosts: PathBuf,
    given: Option<Fingerprint>,
    me: Option<std::sync::Arc<qchat_tls::Identity>>,
    mode: TrustMode,
    accepted: Fingerprint,
    name: String,
    instance: [u8; 16],
    v3: bool,
    last_addr: SocketAddr,
}

impl Dialer {
    /// A dialer for the session that `plan` opened with the key
    /// `accepted`, on `endpoint`, as `name` with `instance`. `v3` is
    /// whether the server spoke version 3 the first time.
    pub fn new(
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
        plan: &TrustPlan,
        accepted: Fingerprint,
        name: String,
        instance: [u8; 16],
        v3: bool,
    ) -> Self {
        Dialer {
            endpoint,
            host: plan.host.clone(),
            known_hosts: plan.known_hosts.clone(),
            given: plan.given,
            me: plan.me.clone(),
            mode: plan.mode,
            accepted,
            name,
            instance,
            v3,
            last_addr: addr,
        }
    }

    /// The endpoint, for liveness and rebinding.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Moves the endpoint to a fresh UDP socket (a new local port): the
    /// open connection migrates to it without a new handshake.
    pub fn rebind(&self) -> Result<(), ConnectError> {
        let socket = connection::client_socket(self.last_addr)?;
        self.endpoint.rebind(socket).map_err(ConnectError::Socket)
    }

    /// Our name now (a `/nick` changes what we rejoin as).
    pub fn set_name(&mut self, name: String) {
        self.name = name;
    }

    /// One attempt: handshake under the pin, then the hello (version 3
    /// with `resume`, or version 2 to an older server).
    pub async fn dial(&mut self, resume: Option<ResumePoint>) -> Result<Joined, ConnectError> {
        // The pin is read again from disk, so one removed or replaced
        // meanwhile is noticed; a key other than the accepted one is never
        // asked about again.
        let plan = TrustPlan::load(
            self.host.clone(),
            &self.known_hosts,
            self.given,
            self.mode,
            false,
        )?
        .presenting(self.me.clone());
        if plan.expectation() != Expectation::Pinned(self.accepted) {
            return Err(ConnectError::PinGone {
                host: self.host.clone(),
                file: self.known_hosts.clone(),
            });
        }
        let addr = match connection::resolve(&self.host).await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "resolving again failed; using the last address");
                self.last_addr
            }
        };
        self.last_addr = addr;
        let greeting = if self.v3 {
            Greeting::V3 {
                instance: self.instance,
                resume,
            }
        } else {
            Greeting::V2
        };
        let (conn, _, _) =
            connection::connect(&self.endpoint, addr, &plan, |_| Decision::Refuse).await?;
        let joined = match connection::join_as(conn, &self.name, &greeting).await {
            Err(e) if e.wants_older_protocol() && self.v3 => {
                // The server was replaced by an older one.
                self.v3 = false;
                let (conn, _, _) =
                    connection::connect(&self.endpoint, addr, &plan, |_| Decision::Refuse).await?;
                connection::join_as(conn, &self.name, &Greeting::V2).await
            }
            other => other,
        };
        match joined {
            // An older server cannot tell our reconnect from a stranger:
            // until its idle timeout drops our lost connection, our own
            // ghost holds the name. Worth another attempt, not the end.
            Err(ConnectError::Hello(crate::HelloError::Rejected {
                reason: qchat_proto::RejectReason::NameTaken,
                detail,
            })) if !self.v3 => Err(ConnectError::Transport {
                addr,
                reason: format!("{detail} (perhaps still our lost connection)"),
            }),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_under_a_second_and_caps_at_thirty() {
        let mut b = Backoff::default();
        let (n, first) = b.next_wait();
        assert_eq!(n, 1);
        assert!(first < Duration::from_secs(1), "{first:?}");
        let waits: Vec<Duration> = (0..40).map(|_| b.next_wait().1).collect();
        assert!(waits.iter().all(|w| *w <= MAX_BACKOFF));
        assert!(waits[20..].iter().all(|w| *w >= MAX_BACKOFF / 2));
        b.reset();
        assert_eq!(b.next_wait().0, 1);
    }
}
