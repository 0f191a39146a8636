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

pub mod connection;
pub mod session;
pub mod trust;

pub use connection::{
    client_endpoint, connect, hello, join, ConnectError, HelloError, Joined, Welcome,
};
pub use session::{Command, ConnectionState, Ended, Event, Link};
pub use trust::{Decision, TrustMode, TrustPlan, TrustState, UnknownServer};
