//! A room's requests for a member on another node: a room operator's kick
//! of a member who is in the room on another node, and the notice of an
//! invitation to a member connected to another node.
//!
//! As private messages do ([`super::private`]), each node answers on its
//! own core-NATS subject, `qchat.node.<node id>.room`; the asking node
//! sends the request there and waits a bounded time, and only an answer
//! that the member was reached counts as done. The operator's rights were
//! checked, and the invitation written or taken back, on the asking node
//! against the cluster's entry for the room: the member's node carries
//! the request out as told, as it does every change of that entry.

use std::sync::Weak;

use qchat_proto::{names, ServerMsg};
use serde::{Deserialize, Serialize};

use super::members::Members;
use super::request::Reply;
use super::ClusterError;
use crate::room::{MemberId, Room};
use crate::rooms::Channel;

/// The most a request may hold: two names, a room's name and a reason fit
/// many times over.
const MAX_REQUEST: usize = 16 * 1024;

/// The subject `node` answers rooms' requests on.
pub fn subject(node: &str) -> String {
    super::request::subject(node, "room")
}

/// What one node asks another of a room's member there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Take `name` out of `room`: `by`, one of its operators, kicked it.
    Kick {
        /// The room, as spelt.
        room: String,
        /// Who.
        name: String,
        /// The operator.
        by: String,
        /// Why, shown to the room.
        reason: String,
    },
    /// Tell `name` that `by` invited it to `room`.
    Invited {
        /// The room, as spelt.
        room: String,
        /// Who.
        name: String,
        /// The operator.
        by: String,
    },
}

/// A member in a room on another node: where a kick is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Afar {
    /// Its node.
    pub node: String,
    /// Its name as spelt there.
    pub name: String,
}

/// Starts answering other nodes' requests on this node's subject, for as
/// long as `members` lives (the rooms it is attached to carry them out).
pub async fn attach(cluster: &super::Cluster, members: Weak<Members>) -> Result<(), ClusterError> {
    super::request::serve(
        cluster.client(),
        subject(cluster.node_id()),
        members,
        answer,
        "a room's request",
    )
    .await
}

/// Carries out one request; never trusts the payload.
fn answer(members: &Members, payload: &[u8]) -> Reply {
    let not_here = |reason: &str| Reply::NotHere {
        reason: reason.into(),
    };
    if payload.len() > MAX_REQUEST {
        return not_here("the request was too large to read");
    }
    let Ok(req) = postcard::from_bytes::<Request>(payload) else {
        return not_here("the request could not be read");
    };
    let (room, name, by) = match &req {
        Request::Kick { room, name, by, .. } | Request::Invited { room, name, by } => {
            (room, name, by)
        }
    };
    if names::validate_room(room).is_err()
        || names::validate(name).is_err()
        || names::validate(by).is_err()
    {
        return not_here("the request names no valid room or member");
    }
    let Some(rooms) = members.rooms() else {
        return not_here("this server has no rooms");
    };
    match req {
        Request::Kick {
            room,
            name,
            by,
            mut reason,
        } => {
            // As a member's own reason is cut.
            let max = qchat_proto::limits::MAX_REASON_BYTES;
            if reason.len() > max {
                let mut end = max;
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                reason.truncate(end);
            }
            let Some(ch) = rooms.get(&room) else {
                return not_here(&format!("nobody is in {room} there"));
            };
            match ch.kick_here(&name, &by, &reason) {
                Ok(to) => Reply::Delivered { to },
                Err(reason) => Reply::NotHere { reason },
            }
        }
        Request::Invited { room, name, by } => {
            let Some(lobby) = rooms.lobby() else {
                return not_here("the server is stopping");
            };
            match lobby.peer_named(&name) {
                Some((id, to, _)) => {
                    lobby.reply(id, &ServerMsg::Invited { room, by });
                    Reply::Delivered { to }
                }
                None => not_here(&format!("nobody called {name:?} is there now")),
            }
        }
    }
}

/// Sends `req` to `node`: the member's name as that node knows it, or
/// what went wrong (words that follow "which").
async fn ask(client: &async_nats::Client, node: &str, req: &Request) -> Result<String, String> {
    super::request::ask(client, subject(node), req, "request").await
}

/// Finishes a room operator's kick of a member on another node: the
/// member's node takes it out of the room (and everyone in the room hears
/// it through the room's members); the operator is told when that could
/// not be done.
pub(crate) async fn kick(
    room: &Room,
    id: MemberId,
    ch: &Channel,
    by: &str,
    afar: Afar,
    reason: &str,
) {
    let Some(shared) = ch.shared() else {
        return;
    };
    let req = Request::Kick {
        room: ch.name().to_string(),
        name: afar.name.clone(),
        by: by.to_string(),
        reason: reason.to_string(),
    };
    if let Err(why) = ask(shared.cluster().client(), &afar.node, &req).await {
        let reason = format!(
            "{} is in {} on another server of this cluster, which {why}; {0} is still in the room (the invitation, if any, was taken back)",
            afar.name,
            ch.name()
        );
        room.reply(
            id,
            &ServerMsg::Failed {
                what: "kick".into(),
                reason,
            },
        );
    }
}

/// Tells `name`, connected to another node, that `by` invited it to
/// `ch`: `None` if nobody of that name is connected to another node,
/// otherwise its name as known there or what went wrong (words that
/// follow "which").
pub(crate) async fn invite(
    room: &Room,
    ch: &Channel,
    by: &str,
    name: &str,
) -> Option<Result<String, String>> {
    let node = room.presence()?.node_of(name)?;
    let shared = ch.shared()?;
    let req = Request::Invited {
        room: ch.name().to_string(),
        name: name.to_string(),
        by: by.to_string(),
    };
    Some(ask(shared.cluster().client(), &node, &req).await)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::members::tests::{actor, next_move, node, until};
    use crate::cluster::names::ONLINE_TTL;
    use crate::cluster::testing::NatsServer;

    const WAIT: Duration = Duration::from_secs(20);

    /// An operator on one node kicks a member who is in the room on
    /// another: that node takes it out, it is told who kicked it and why,
    /// and the operator's node hears it leave as a kick.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kick_reaches_the_member_on_another_node() {
        let nats = NatsServer::start().await;
        let ((la, a), (_lb, b)) = (node(&nats, ONLINE_TTL).await, node(&nats, ONLINE_TTL).await);
        let (alice, bob) = (actor(1, "alice"), actor(2, "bob"));
        let (cha, _) = a.get_or_create("#dev", &alice, 10).expect("created");
        let (ta, mut ra) = crate::room::MemberQueue::channel(64);
        cha.join(&alice, None, &ta, None, 50, 10).expect("joins");
        let (chb, _) = b.get_or_create("#dev", &bob, 10).expect("opened");
        let (tb, mut rb) = crate::room::MemberQueue::channel(64);
        chb.join(&bob, None, &tb, None, 50, 10).expect("joins");
        assert!(
            matches!(next_move(&mut ra).await, ServerMsg::RoomEntered { name, .. } if name == "bob")
        );

        let refused = chb
            .kick(&bob, "alice", "no")
            .expect_err("bob is no operator");
        assert!(refused.contains("operators"), "{refused}");
        let afar = cha
            .kick(&alice, "BOB", "out")
            .expect("alice operates the room")
            .expect("bob is on the other node");
        assert_eq!(afar.name, "bob");
        kick(&la, 1, &cha, "alice", afar, "out").await;
        let parted = until(&mut rb, |m| matches!(m, ServerMsg::Parted { .. })).await;
        assert_eq!(
            parted,
            ServerMsg::Parted {
                room: "#dev".into(),
                by: "alice".into(),
                reason: "out".into()
            }
        );
        assert!(!chb.has(2), "out of the room on its node");
        match next_move(&mut ra).await {
            ServerMsg::RoomLeft { name, reason, .. } => {
                assert_eq!(
                    (name.as_str(), reason.as_str()),
                    ("bob", "kicked by alice: out")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// What arrives on a node's subject is never trusted: unreadable,
    /// oversized or misaddressed requests are answered "not here", and a
    /// node nobody answers for is not taken to have done anything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_requests_are_answered_and_an_absent_node_is_said_to_be() {
        let nats = NatsServer::start().await;
        let (_la, a) = node(&nats, ONLINE_TTL).await;
        let shared = a
            .get_or_create("#dev", &actor(1, "alice"), 10)
            .expect("created")
            .0
            .shared()
            .cloned()
            .expect("clustered");
        let client = shared.cluster().client().clone();
        let me = shared.cluster().node_id().to_string();
        let raw = |payload: Vec<u8>| {
            let (client, subject) = (client.clone(), subject(&me));
            async move {
                let m = tokio::time::timeout(WAIT, client.request(subject, payload.into()))
                    .await
                    .expect("answered in time")
                    .expect("answered");
                postcard::from_bytes::<Reply>(&m.payload).expect("a reply")
            }
        };
        let not_here = |r: Reply, want: &str| match r {
            Reply::NotHere { reason } => assert!(reason.contains(want), "{reason}"),
            other => panic!("{other:?}"),
        };
        not_here(raw(vec![0xff; 9]).await, "could not be read");
        not_here(raw(vec![0; MAX_REQUEST + 1]).await, "too large");
        let kick = |room: &str, name: &str| Request::Kick {
            room: room.into(),
            name: name.into(),
            by: "alice".into(),
            reason: "x".repeat(10_000),
        };
        let bytes = |r: &Request| postcard::to_allocvec(r).expect("encodes");
        not_here(raw(bytes(&kick("dev", "bob"))).await, "no valid room");
        not_here(raw(bytes(&kick("#dev", ""))).await, "no valid room");
        not_here(raw(bytes(&kick("#dev", "bob"))).await, "nobody called");
        not_here(raw(bytes(&kick("#elsewhere", "bob"))).await, "nobody is in");
        let invited = Request::Invited {
            room: "#dev".into(),
            name: "zed".into(),
            by: "alice".into(),
        };
        not_here(raw(bytes(&invited)).await, "nobody called");

        let gone = ask(&client, "no-such-node", &kick("#dev", "bob")).await;
        assert_eq!(gone, Err("is not answering".to_string()));
    }
}
