//! Coming back after a lost connection: the backoff between attempts, the
//! [`Nodes`] a session may go to (a cluster's), and the [`Dialer`] that
//! makes each attempt — the same pinned key on every node (never a prompt
//! mid-session), the same name and instance, and the resume point.

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

/// How long a node's handshake may take while other nodes are known (with
/// one address only, [`connection::CONNECT_TIMEOUT`] still holds: there is
/// nowhere better to wait). A live node answers a QUIC handshake in one
/// round trip, and quinn resends a lost first packet after about a second
/// (its initial round-trip estimate is 333 ms), so 3 s covers a slow link
/// and a lost packet or two; a node that has not answered by then is more
/// likely dead than slow, and the next node is a better bet than 7 s more
/// of waiting. It is tried again once the others were.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(3);

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

/// The addresses a session may connect to: those the user gave (the home
/// address, under which the pin lives, first) and those the cluster listed
/// last ([`qchat_proto::ServerMsg::Nodes`]). A plain list with a cursor, so
/// the order of attempts is tested without a socket.
///
/// Nothing here is trusted for being listed: every address must present
/// the key pinned for the home address, checked on each attempt.
///
/// An address that failed (lost, or did not answer) is not tried again
/// before every other known address was tried once since the last join:
/// a dead node is the likeliest to fail again, and each try of it costs a
/// timeout while a live node waits further down the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nodes {
    given: Vec<HostKey>,
    learned: Vec<HostKey>,
    current: HostKey,
    /// The addresses that failed since the last join.
    failed: Vec<HostKey>,
}

impl Nodes {
    /// The addresses given (the home one first), and the one connected to
    /// now (or to try first).
    pub fn new(given: Vec<HostKey>, current: HostKey) -> Self {
        let given = if given.is_empty() {
            vec![current.clone()]
        } else {
            given
        };
        Nodes {
            given,
            learned: Vec::new(),
            current,
            failed: Vec::new(),
        }
    }

    /// Every address, given ones first, each once.
    pub fn all(&self) -> Vec<HostKey> {
        let mut all: Vec<HostKey> = Vec::with_capacity(self.given.len() + self.learned.len());
        for h in self.given.iter().chain(&self.learned) {
            if !all.contains(h) {
                all.push(h.clone());
            }
        }
        all
    }

    /// The address to try (or connected to) now.
    pub fn current(&self) -> &HostKey {
        &self.current
    }

    /// Whether there is anywhere to go besides the current address.
    pub fn elsewhere(&self) -> bool {
        self.all().iter().any(|h| *h != self.current)
    }

    /// The current address failed: moves to the next one round the list
    /// that has not failed since the last join; once every one has, a new
    /// round starts from the one after the current. An address no longer
    /// listed moves to the first.
    pub fn advance(&mut self) -> &HostKey {
        self.fail_current();
        let all = self.all();
        let start = all
            .iter()
            .position(|h| *h == self.current)
            .map_or(0, |i| i + 1);
        let untried = (0..all.len())
            .map(|k| &all[(start + k) % all.len()])
            .find(|h| !self.failed.contains(h));
        let next = match untried {
            Some(h) => Some(h.clone()),
            None => {
                self.failed.clear();
                all.get(start % all.len().max(1)).cloned()
            }
        };
        if let Some(h) = next {
            self.current = h;
        }
        &self.current
    }

    /// Leaves the current address (lost) for another: the `r`-th of the
    /// others (modulo their number), `r` being random in use, so that the
    /// members of a node that died spread over the rest instead of all
    /// landing on the one after it. With no other address, stays.
    pub fn leave(&mut self, r: usize) -> &HostKey {
        self.fail_current();
        let others: Vec<HostKey> = self
            .all()
            .into_iter()
            .filter(|h| !self.failed.contains(h))
            .collect();
        if !others.is_empty() {
            self.current = others[r % others.len()].clone();
        }
        &self.current
    }

    /// Joined at the current address: every address is worth a try again.
    pub fn joined(&mut self) {
        self.failed.clear();
    }

    fn fail_current(&mut self) {
        if !self.failed.contains(&self.current) {
            self.failed.push(self.current.clone());
        }
    }

    /// Takes the cluster's new list in place of the last one. A list beyond
    /// the protocol's limits is ignored whole (a server that sends one is
    /// broken or hostile, and none of it is worth parsing); an address that
    /// is not `host:port` is left out. Returns how many were kept.
    pub fn learn(&mut self, addrs: &[String]) -> Result<usize, qchat_proto::NodesError> {
        qchat_proto::check_nodes(addrs)?;
        self.learned = addrs
            .iter()
            .filter_map(|a| match a.parse::<HostKey>() {
                Ok(h) => Some(h),
                Err(e) => {
                    // The server's text, so shown sanitised, not as given.
                    tracing::warn!(
                        node = %qchat_proto::text::sanitize(a),
                        "ignoring a node the server listed: {}",
                        e.reason
                    );
                    None
                }
            })
            .collect();
        Ok(self.learned.len())
    }
}

/// Makes the connections after the first: everything needed to reach the
/// same server, or another node of its cluster, as the same member.
pub struct Dialer {
    endpoint: quinn::Endpoint,
    /// The home address: the pin is read under it for every node.
    host: HostKey,
    nodes: Nodes,
    /// Connected now (through the last dial or before the first): the next
    /// dial follows a loss and starts at another node.
    connected: bool,
    /// The node of the last connection that joined.
    joined_at: HostKey,
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
            nodes: Nodes::new(vec![plan.host.clone()], plan.host.clone()),
            connected: false,
            joined_at: plan.host.clone(),
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

    /// The addresses given up front (`given`, the home one first) and the
    /// one the session is connected to now (`at`): later dials go round
    /// them, and round those the cluster lists, starting after `at`.
    pub fn with_nodes(mut self, given: Vec<HostKey>, at: HostKey) -> Self {
        self.nodes = Nodes::new(given, at.clone());
        self.joined_at = at;
        self.connected = true;
        self
    }

    /// The addresses known now.
    pub fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// The cluster's new node list (see [`Nodes::learn`]).
    pub fn learn(&mut self, addrs: &[String]) {
        match self.nodes.learn(addrs) {
            Ok(n) => tracing::debug!(nodes = n, "the cluster listed its nodes"),
            Err(e) => tracing::warn!("ignoring the server's node list: {e}"),
        }
    }

    /// The node of the last connection that joined.
    pub fn joined_at(&self) -> &HostKey {
        &self.joined_at
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

    /// One attempt at one node: handshake under the pin, then the hello
    /// (version 3 with `resume`, or version 2 to an older server). The
    /// first attempt after a loss goes to another node, picked at random
    /// (in a cluster the others are up, and the lost one may be gone for
    /// good); each failed attempt moves on to the next, round the list.
    pub async fn dial(&mut self, resume: Option<ResumePoint>) -> Result<Joined, ConnectError> {
        if std::mem::take(&mut self.connected) {
            self.nodes.leave(fastrand::usize(..));
        }
        let node = self.nodes.current().clone();
        let joined = self.dial_node(&node, resume).await;
        match &joined {
            Ok(_) => {
                self.connected = true;
                self.joined_at = node;
                self.nodes.joined();
            }
            Err(_) => {
                self.nodes.advance();
            }
        }
        joined
    }

    async fn dial_node(
        &mut self,
        node: &HostKey,
        resume: Option<ResumePoint>,
    ) -> Result<Joined, ConnectError> {
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
        let addr = match connection::resolve(node).await {
            Ok(a) => a,
            Err(e) if *node == self.joined_at => {
                tracing::debug!(error = %e, "resolving again failed; using the last address");
                self.last_addr
            }
            Err(e) => return Err(e),
        };
        connection::aim(&self.endpoint, addr)?;
        self.last_addr = addr;
        let greeting = if self.v3 {
            Greeting::V3 {
                instance: self.instance,
                resume,
            }
        } else {
            Greeting::V2
        };
        let handshake =
            connection::connect_to(&self.endpoint, addr, node, &plan, |_| Decision::Refuse);
        let (conn, _, _) = if self.nodes.elsewhere() {
            tokio::time::timeout(NODE_TIMEOUT, handshake)
                .await
                .map_err(|_| ConnectError::Transport {
                    addr,
                    reason: format!(
                        "no answer within {} s; trying another node",
                        NODE_TIMEOUT.as_secs()
                    ),
                })??
        } else {
            handshake.await?
        };
        let joined = match connection::join_as(conn, &self.name, &greeting).await {
            Err(e) if e.wants_older_protocol() && self.v3 => {
                // The server was replaced by an older one.
                self.v3 = false;
                let (conn, _, _) =
                    connection::connect_to(&self.endpoint, addr, node, &plan, |_| Decision::Refuse)
                        .await?;
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

    fn h(s: &str) -> HostKey {
        s.parse().expect("a valid address")
    }

    #[test]
    fn a_lost_node_is_followed_by_the_next_round_the_list() {
        let mut n = Nodes::new(vec![h("a:1"), h("b:1"), h("c:1")], h("a:1"));
        assert!(n.elsewhere());
        assert_eq!(n.advance(), &h("b:1"));
        assert_eq!(n.advance(), &h("c:1"));
        assert_eq!(n.advance(), &h("a:1"));
        let mut alone = Nodes::new(vec![h("a:1")], h("a:1"));
        assert!(!alone.elsewhere());
        assert_eq!(alone.advance(), &h("a:1"), "one server is always the one");
        assert_eq!(alone.leave(7), &h("a:1"));
    }

    #[test]
    fn leaving_a_node_goes_to_any_other_one_never_back_to_it() {
        let all = vec![h("a:1"), h("b:1"), h("c:1"), h("d:1")];
        let mut reached = Vec::new();
        for r in 0..6 {
            let mut n = Nodes::new(all.clone(), h("b:1"));
            let to = n.leave(r).clone();
            assert_ne!(to, h("b:1"), "r = {r}");
            reached.push(to);
        }
        // Every other node is somebody's pick: a dead node's members
        // spread over all the rest.
        for other in [h("a:1"), h("c:1"), h("d:1")] {
            assert!(reached.contains(&other), "{other} in {reached:?}");
        }
    }

    #[test]
    fn a_failed_node_is_tried_again_only_after_every_other_one() {
        let all = vec![h("a:1"), h("b:1"), h("c:1"), h("d:1")];
        for r in 0..4 {
            let mut n = Nodes::new(all.clone(), h("b:1"));
            let mut tried = vec![n.leave(r).clone()];
            for _ in 0..2 {
                tried.push(n.advance().clone());
            }
            tried.sort();
            assert_eq!(tried, [h("a:1"), h("c:1"), h("d:1")], "r = {r}");
            // Every other one failed too: a new round, the lost one included.
            let again: Vec<HostKey> = (0..4).map(|_| n.advance().clone()).collect();
            assert!(again.contains(&h("b:1")), "r = {r}: {again:?}");
        }
        // A join forgets the failures: the next loss may go anywhere else.
        let mut n = Nodes::new(all.clone(), h("a:1"));
        n.advance();
        n.advance();
        n.joined();
        assert_eq!(n.current(), &h("c:1"));
        assert_eq!(
            n.leave(0),
            &h("a:1"),
            "a failed before the join, and counts again"
        );
    }

    #[test]
    fn learned_nodes_follow_the_given_ones_once_each_and_replace_the_last_list() {
        let mut n = Nodes::new(vec![h("a:1"), h("b:1")], h("b:1"));
        let got = n.learn(&["b:1".into(), "C:1".into(), "d:1".into()]);
        assert_eq!(got, Ok(3));
        assert_eq!(n.all(), vec![h("a:1"), h("b:1"), h("c:1"), h("d:1")]);
        assert_eq!(n.advance(), &h("c:1"));
        // The next list replaces this one: c is gone, so after it comes
        // the first address again.
        assert_eq!(n.learn(&["e:1".into()]), Ok(1));
        assert_eq!(n.all(), vec![h("a:1"), h("b:1"), h("e:1")]);
        assert_eq!(n.advance(), &h("a:1"));
    }

    #[test]
    fn a_list_beyond_the_limits_is_ignored_whole_and_bad_addresses_one_by_one() {
        let mut n = Nodes::new(vec![h("a:1")], h("a:1"));
        assert_eq!(n.learn(&["b:1".into()]), Ok(1));
        let before = n.clone();
        let many: Vec<String> = (0..10_000).map(|i| format!("10.0.0.1:{}", i + 1)).collect();
        assert!(n.learn(&many).is_err());
        assert!(n.learn(&["x".repeat(10 * 1024) + ":1"]).is_err());
        assert_eq!(n, before, "a refused list changes nothing");
        let kept = n.learn(&[
            "no-port".into(),
            "bad host:1".into(),
            "\u{1b}[31m:1".into(),
            "[::1]:8080".into(),
        ]);
        assert_eq!(kept, Ok(1));
        assert_eq!(n.all(), vec![h("a:1"), h("[::1]:8080")]);
    }

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
