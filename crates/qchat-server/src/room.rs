//! The room: who is in it, and the fan-out of everything said in it.
//!
//! All room state lives behind one mutex, held only for the synchronous work
//! of queueing frames (never across an await). One lock gives the ordering
//! guarantee for free: whatever order messages take the lock in is the order
//! every member receives them. Each broadcast is encoded once; every
//! recipient's queue gets a reference-counted clone of the same bytes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use qchat_proto::{names, CloseCode, RejectReason, ServerMsg, PROTOCOL_VERSION};
use tokio::sync::mpsc;

use crate::options::ServerOptions;

/// A member's identity inside this server process; never reused.
pub type MemberId = u64;

/// A refused hello: the cause and one sentence for the user.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Machine-readable cause.
    pub reason: RejectReason,
    /// For the user.
    pub detail: String,
}

/// The shared room.
pub struct Room {
    state: Mutex<State>,
    options: Arc<ServerOptions>,
}

struct State {
    next_id: MemberId,
    /// Keyed by id, so iteration is join order.
    members: BTreeMap<MemberId, Member>,
    /// Case-folded name to id: names are unique without regard to case.
    by_name: HashMap<String, MemberId>,
    closed: bool,
}

struct Member {
    name: String,
    outbox: mpsc::Sender<Bytes>,
    conn: Option<quinn::Connection>,
    #[allow(dead_code)] // shown by the operator's /who
    addr: Option<SocketAddr>,
    #[allow(dead_code)] // shown by /who
    joined: Instant,
}

/// What a newly joined member needs to know.
#[derive(Debug)]
pub struct Joined {
    /// Its id.
    pub id: MemberId,
    /// Its registered name.
    pub name: String,
}

impl Room {
    /// An empty room.
    pub fn new(options: Arc<ServerOptions>) -> Self {
        Room {
            state: Mutex::new(State {
                next_id: 1,
                members: BTreeMap::new(),
                by_name: HashMap::new(),
                closed: false,
            }),
            options,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // in a way that matters more than stopping the whole room would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Members in the room now.
    pub fn len(&self) -> usize {
        self.lock().members.len()
    }

    /// Whether the server has begun shutting down.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Whether the room is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a member, if its name is valid and free. The welcome is the
    /// first frame in its queue, before anything broadcast afterwards.
    pub fn join(
        &self,
        name: &str,
        outbox: mpsc::Sender<Bytes>,
        conn: Option<quinn::Connection>,
        addr: Option<SocketAddr>,
    ) -> Result<Joined, Rejection> {
        if let Err(e) = names::validate(name) {
            return Err(Rejection {
                reason: RejectReason::NameInvalid,
                detail: format!("invalid name: {e}"),
            });
        }
        let key = names::fold(name);
        let mut st = self.lock();
        if st.closed {
            return Err(Rejection {
                reason: RejectReason::ShuttingDown,
                detail: "the server is shutting down".into(),
            });
        }
        if let Some(other) = st.by_name.get(&key).and_then(|id| st.members.get(id)) {
            return Err(Rejection {
                reason: RejectReason::NameTaken,
                detail: format!(
                    "the name {:?} is taken (by {:?}); choose another",
                    name, other.name
                ),
            });
        }
        let id = st.next_id;
        st.next_id += 1;
        let mut members: Vec<String> = st
            .members
            .values()
            .take(self.options.welcome_members.saturating_sub(1))
            .map(|m| m.name.clone())
            .collect();
        members.push(name.to_string());
        let welcome = ServerMsg::Welcome {
            version: PROTOCOL_VERSION,
            server_name: self.options.server_name.clone(),
            name: name.to_string(),
            members,
        };
        // The queue is new and empty, so this cannot fail for lack of room.
        let _ = outbox.try_send(welcome.to_frame());
        if st.members.len() < self.options.announce_limit {
            let frame = ServerMsg::Joined {
                name: name.to_string(),
            }
            .to_frame();
            self.broadcast(&mut st, frame, None);
        }
        st.by_name.insert(key, id);
        st.members.insert(
            id,
            Member {
                name: name.to_string(),
                outbox,
                conn,
                addr,
                joined: Instant::now(),
            },
        );
        Ok(Joined {
            id,
            name: name.to_string(),
        })
    }

    /// Delivers a message from `id` to everyone else, then acknowledges it
    /// to the sender.
    pub fn say(&self, id: MemberId, seq: u64, text: String) {
        let mut st = self.lock();
        let Some(from) = st.members.get(&id).map(|m| m.name.clone()) else {
            return;
        };
        let frame = ServerMsg::Chat {
            from,
            text,
            time_ms: now_ms(),
        }
        .to_frame();
        self.broadcast(&mut st, frame, Some(id));
        self.send_to(&mut st, id, ServerMsg::Ack { seq }.to_frame());
    }

    /// Sends one frame to one member.
    pub fn reply(&self, id: MemberId, msg: &ServerMsg) {
        let mut st = self.lock();
        self.send_to(&mut st, id, msg.to_frame());
    }

    /// Removes a member and tells the others why. Dropping its queue's only
    /// sender lets its writer flush what is queued and finish the stream.
    /// Calling it for a member already gone does nothing.
    pub fn leave(&self, id: MemberId, reason: &str) {
        let mut st = self.lock();
        self.remove(&mut st, id, reason);
    }

    /// Tells every member the server is closing and empties the room; no one
    /// can join afterwards.
    pub fn shutdown(&self, reason: &str) {
        let mut st = self.lock();
        st.closed = true;
        let frame = ServerMsg::ShuttingDown {
            reason: reason.to_string(),
        }
        .to_frame();
        for m in st.members.values() {
            let _ = m.outbox.try_send(frame.clone());
        }
        st.members.clear();
        st.by_name.clear();
    }

    fn send_to(&self, st: &mut State, id: MemberId, frame: Bytes) {
        let full = match st.members.get(&id) {
            Some(m) => m.outbox.try_send(frame).is_err(),
            None => false,
        };
        if full {
            self.evict_slow(st, vec![id]);
        }
    }

    /// Queues `frame` for every member but `except`. Members whose queue is
    /// full are not reading; they are disconnected rather than allowed to
    /// stall the room or grow memory without bound.
    fn broadcast(&self, st: &mut State, frame: Bytes, except: Option<MemberId>) {
        let mut slow = Vec::new();
        for (id, m) in &st.members {
            if Some(*id) != except && m.outbox.try_send(frame.clone()).is_err() {
                slow.push(*id);
            }
        }
        if !slow.is_empty() {
            self.evict_slow(st, slow);
        }
    }

    fn evict_slow(&self, st: &mut State, ids: Vec<MemberId>) {
        for id in ids {
            if let Some(conn) = st.members.get(&id).and_then(|m| m.conn.clone()) {
                tracing::info!(member = id, "disconnecting a member that is not reading");
                conn.close(
                    CloseCode::SlowReader.code().into(),
                    b"not reading: outgoing queue full",
                );
            }
            self.remove(st, id, "not reading (disconnected by the server)");
        }
    }

    fn remove(&self, st: &mut State, id: MemberId, reason: &str) {
        let Some(m) = st.members.remove(&id) else {
            return;
        };
        st.by_name.remove(&names::fold(&m.name));
        if st.members.len() < self.options.announce_limit {
            let frame = ServerMsg::Left {
                name: m.name,
                reason: reason.to_string(),
            }
            .to_frame();
            self.broadcast(st, frame, None);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> Room {
        Room::new(Arc::new(ServerOptions::default()))
    }

    fn decode(frame: &Bytes) -> ServerMsg {
        ServerMsg::decode(&frame[4..]).expect("valid frame")
    }

    #[test]
    fn names_are_unique_without_regard_to_case() {
        let r = room();
        let (tx, _rx) = mpsc::channel(8);
        r.join("Alice", tx, None, None).expect("joins");
        let (tx2, _rx2) = mpsc::channel(8);
        let err = r.join("aLICE", tx2, None, None).expect_err("taken");
        assert_eq!(err.reason, RejectReason::NameTaken);
    }

    #[test]
    fn broadcast_reaches_others_in_order_and_acks_sender() {
        let r = room();
        let (ta, mut ra) = mpsc::channel(8);
        let (tb, mut rb) = mpsc::channel(8);
        let a = r.join("a", ta, None, None).expect("joins");
        r.join("b", tb, None, None).expect("joins");
        r.say(a.id, 1, "one".into());
        r.say(a.id, 2, "two".into());
        assert!(matches!(
            decode(&ra.try_recv().expect("welcome")),
            ServerMsg::Welcome { .. }
        ));
        assert!(matches!(
            decode(&ra.try_recv().expect("joined")),
            ServerMsg::Joined { .. }
        ));
        assert_eq!(
            decode(&ra.try_recv().expect("ack")),
            ServerMsg::Ack { seq: 1 }
        );
        assert_eq!(
            decode(&ra.try_recv().expect("ack")),
            ServerMsg::Ack { seq: 2 }
        );
        assert!(matches!(
            decode(&rb.try_recv().expect("welcome")),
            ServerMsg::Welcome { .. }
        ));
        for want in ["one", "two"] {
            match decode(&rb.try_recv().expect("chat")) {
                ServerMsg::Chat { from, text, .. } => {
                    assert_eq!((from.as_str(), text.as_str()), ("a", want))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn a_member_that_does_not_read_is_removed_and_announced() {
        let r = room();
        let (ta, mut ra) = mpsc::channel(64);
        let (tb, _rb) = mpsc::channel(2);
        let a = r.join("a", ta, None, None).expect("joins");
        r.join("b", tb, None, None).expect("joins");
        for i in 0..4 {
            r.say(a.id, i, "x".into());
        }
        assert_eq!(r.len(), 1);
        let mut saw_left = false;
        while let Ok(f) = ra.try_recv() {
            if let ServerMsg::Left { name, .. } = decode(&f) {
                saw_left = name == "b";
            }
        }
        assert!(saw_left);
    }

    #[test]
    fn invalid_names_are_refused() {
        let r = room();
        let (tx, _rx) = mpsc::channel(8);
        let err = r.join("bad name", tx, None, None).expect_err("invalid");
        assert_eq!(err.reason, RejectReason::NameInvalid);
    }
}
