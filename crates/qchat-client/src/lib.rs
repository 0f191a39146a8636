//! The qchat client: everything between "the user typed `qchat connect`"
//! and a stream of chat events, with no terminal code.
//!
//! - [`trust`]: deciding whether to talk to a server — the pin from
//!   `known_hosts`, `--fingerprint`, the trust mode — before the handshake,
//!   and recording the user's decision after it.
//! - [`connection`]: the QUIC handshake with the pinning verifier, and the
//!   hello.
//! - [`session`]: the network task that owns the connection once joined;
//!   the user interface talks to it only through bounded channels of
//!   [`Command`]s and [`Event`]s.
//! - [`conversations`]: what was shown of each private conversation, and
//!   its points on disk.
//! - [`people`]: the contacts layer in front of the network task — `/verify`,
//!   the verified marks, changed keys — over the [`contacts`] file.

pub mod connection;
pub mod contacts;
pub mod conversations;
pub mod pacing;
pub mod people;
pub mod reconnect;
pub mod resume;
pub mod session;
pub mod trust;

pub use connection::{
    client_endpoint, connect, hello, hello_as, join, join_as, new_instance, ConnectError, Greeting,
    HelloError, Joined, Welcome, WelcomeV3,
};
pub use session::{Command, ConnectionState, Ended, Event, Link, Network, Redial, Rejoined};
pub use trust::{Decision, TrustMode, TrustPlan, TrustState, UnknownServer};
