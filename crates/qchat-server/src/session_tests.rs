//! The session's rules, in process: each member is an in-process pipe into
//! the same `run_stream` a QUIC member gets, and tokio's clock is paused, so
//! the hello deadline, the rate limit and the flush run on virtual time —
//! no test waits for real, and none can lose a race with the clock.

use std::sync::Arc;
use std::time::Duration;

use qchat_proto::{limits, ClientMsg, CloseCode, FrameDecoder, ServerMsg, PROTOCOL_VERSION};
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use crate::room::tests::stored;
use crate::room::Peer;
use crate::session::{run_stream, End, PipeSink};
use crate::{Server, ServerOptions};

/// Bound on every wait. On the paused clock it passes only when nothing
/// else can happen, so a test that would hang fails instead.
const WAIT: Duration = Duration::from_secs(60);

/// One party's end of a session pipe.
struct Client {
    send: WriteHalf<DuplexStream>,
    recv: ReadHalf<DuplexStream>,
    decoder: FrameDecoder,
}

impl Client {
    async fn write(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("the pipe is open");
    }

    async fn send(&mut self, msg: ClientMsg) {
        self.write(&msg.to_frame()).await;
    }

    async fn say(&mut self, seq: u64, text: &str) {
        self.send(ClientMsg::Say {
            seq,
            text: text.into(),
        })
        .await;
    }

    /// The next message; `None` once the server has finished the stream.
    async fn next(&mut self) -> Option<ServerMsg> {
        let frame = timeout(WAIT, self.decoder.read_frame(&mut self.recv))
            .await
            .expect("the server answers or ends the stream in time")
            .expect("the server sends whole frames");
        frame.map(|f| ServerMsg::decode(&f).expect("the server sends valid messages"))
    }

    /// Everything until the server finishes the stream.
    async fn rest(&mut self) -> Vec<ServerMsg> {
        let mut all = Vec::new();
        while let Some(m) = self.next().await {
            all.push(m);
        }
        all
    }

    /// Skips messages until one satisfies `pred`.
    async fn until(&mut self, what: &str, pred: impl Fn(&ServerMsg) -> bool) -> ServerMsg {
        loop {
            match self.next().await {
                Some(m) if pred(&m) => return m,
                Some(_) => {}
                None => panic!("the stream ended before {what}"),
            }
        }
    }
}

/// A session over a pipe of `pipe` bytes each way, as a network member
/// (not the operator); the handle yields how it ended.
fn session(server: &Server, pipe: usize, deadline: Instant) -> (Client, JoinHandle<End>) {
    session_reading(server, pipe, deadline, |r| r)
}

/// [`session`], with the server reading through `wrap` (to make its
/// connection fail on demand, say).
fn session_reading<R>(
    server: &Server,
    pipe: usize,
    deadline: Instant,
    wrap: impl FnOnce(ReadHalf<DuplexStream>) -> R,
) -> (Client, JoinHandle<End>)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let (client, server_end) = tokio::io::duplex(pipe);
    let (server_recv, server_send) = tokio::io::split(server_end);
    let server_recv = wrap(server_recv);
    let room = Arc::clone(&server.room);
    let options = server.room.options();
    let task = tokio::spawn(async move {
        let sink = PipeSink(server_send);
        run_stream(
            sink,
            server_recv,
            Box::new(network_peer()),
            &room,
            &options,
            deadline,
            None,
        )
        .await
    });
    let (recv, send) = tokio::io::split(client);
    let decoder = FrameDecoder::new(limits::MAX_SERVER_FRAME);
    (
        Client {
            send,
            recv,
            decoder,
        },
        task,
    )
}

/// A member who has joined as `name`, its welcome and history read.
async fn member(server: &Server, name: &str) -> (Client, JoinHandle<End>) {
    member_with_pipe(server, name, 64 * 1024).await
}

async fn member_with_pipe(server: &Server, name: &str, pipe: usize) -> (Client, JoinHandle<End>) {
    let deadline = Instant::now() + server.room.options().hello_timeout;
    let (mut c, task) = session(server, pipe, deadline);
    c.send(ClientMsg::Hello {
        version: PROTOCOL_VERSION,
        name: name.into(),
    })
    .await;
    match c.next().await {
        Some(ServerMsg::Welcome { .. }) => (c, task),
        other => panic!("{name} was not welcomed: {other:?}"),
    }
}

async fn ended(task: JoinHandle<End>) -> End {
    timeout(WAIT, task)
        .await
        .expect("the session ends in time")
        .expect("the session does not panic")
}

fn server(options: ServerOptions) -> Server {
    Server::new(options)
}

#[tokio::test(start_paused = true)]
async fn the_hello_deadline_counts_from_the_connection_not_from_the_stream() {
    let s = server(ServerOptions::default());
    let start = Instant::now();
    let deadline = start + s.room.options().hello_timeout;
    // The stream opens 4 s into the 5 s deadline (a QUIC peer's stream is
    // seen only when its first byte arrives), then half a frame trickles in.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (mut c, task) = session(&s, 1024, deadline);
    c.write(&[0, 0, 0, 9, 0]).await;
    let end = ended(task).await;
    assert_eq!(end.code, CloseCode::HelloTimeout, "{}", end.reason);
    // On the paused clock this is exact: one deadline, not a second five
    // seconds from when the stream appeared.
    assert_eq!(start.elapsed(), s.room.options().hello_timeout);
    assert_eq!(c.next().await, None, "no welcome, and the stream ends");
    assert!(s.room().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_operator_link_has_the_same_hello_deadline() {
    let s = server(ServerOptions::default());
    let start = Instant::now();
    let mut link = s.join_local();
    let mut decoder = FrameDecoder::new(limits::MAX_SERVER_FRAME);
    let got = timeout(WAIT, decoder.read_frame(&mut link.recv))
        .await
        .expect("the server ends the link in time")
        .expect("a clean end");
    assert!(got.is_none(), "the server sent something to a silent link");
    assert_eq!(start.elapsed(), s.room.options().hello_timeout);
}

#[tokio::test(start_paused = true)]
async fn a_pasted_burst_waits_in_the_backlog_and_arrives_in_order() {
    let s = server(ServerOptions {
        rate: 2,
        burst: 2,
        backlog: 10,
        ..ServerOptions::default()
    });
    let (mut alice, _a) = member(&s, "alice").await;
    let (mut bob, _b) = member(&s, "bob").await;
    alice
        .until("bob's join", |m| matches!(m, ServerMsg::Joined { .. }))
        .await;
    let start = Instant::now();
    let mut paste = Vec::new();
    for seq in 1..=6u64 {
        paste.extend_from_slice(
            &ClientMsg::Say {
                seq,
                text: format!("line {seq}"),
            }
            .to_frame(),
        );
    }
    alice.write(&paste).await;
    for seq in 1..=6u64 {
        let got = bob.next().await;
        assert!(
            matches!(&got, Some(ServerMsg::Chat { text, .. }) if *text == format!("line {seq}")),
            "line {seq}: {got:?}"
        );
        assert_eq!(alice.next().await, Some(ServerMsg::Ack { seq }));
    }
    // Two at once, the other four at two a second: smoothed, not dropped,
    // and no warning for a paste that fits the backlog.
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    alice
        .send(ClientMsg::Bye {
            reason: "done".into(),
        })
        .await;
    let rest = alice.rest().await;
    assert!(
        !rest.iter().any(|m| matches!(m, ServerMsg::Notice { .. })),
        "{rest:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_backlog_is_a_flood_after_one_notice() {
    let s = server(ServerOptions {
        rate: 2,
        burst: 2,
        backlog: 10,
        ..ServerOptions::default()
    });
    let (mut bob, _b) = member(&s, "bob").await;
    let (mut flood, task) = member(&s, "flood").await;
    let mut all = Vec::new();
    for seq in 1..=40u64 {
        all.extend_from_slice(
            &ClientMsg::Say {
                seq,
                text: "x".into(),
            }
            .to_frame(),
        );
    }
    flood.write(&all).await;
    let end = ended(task).await;
    assert_eq!(end.code, CloseCode::Flood, "{}", end.reason);
    let got = flood.rest().await;
    let notices = got
        .iter()
        .filter(|m| matches!(m, ServerMsg::Notice { text } if text.contains("too fast")))
        .count();
    assert_eq!(notices, 1, "{got:?}");
    let left = bob
        .until("the flooder's departure", |m| {
            matches!(m, ServerMsg::Left { .. })
        })
        .await;
    assert!(
        matches!(&left, ServerMsg::Left { name, reason } if name == "flood" && reason.contains("flooding")),
        "{left:?}"
    );
    assert_eq!(s.room().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn everything_before_a_bye_is_answered_before_the_stream_ends() {
    let s = server(ServerOptions::default());
    let (mut alice, task) = member(&s, "alice").await;
    let (mut bob, _b) = member(&s, "bob").await;
    alice
        .until("bob's join", |m| matches!(m, ServerMsg::Joined { .. }))
        .await;
    alice.say(1, "one").await;
    alice.say(2, "two").await;
    alice
        .send(ClientMsg::Bye {
            reason: "bye now".into(),
        })
        .await;
    assert_eq!(
        alice.rest().await,
        [ServerMsg::Ack { seq: 1 }, ServerMsg::Ack { seq: 2 }]
    );
    let end = ended(task).await;
    assert_eq!(end.code, CloseCode::Normal);
    let texts: Vec<_> = [bob.next().await, bob.next().await, bob.next().await]
        .into_iter()
        .map(|m| match m {
            Some(ServerMsg::Chat { text, .. }) => text,
            Some(ServerMsg::Left { name, reason }) => format!("{name} left: {reason}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(texts, ["one", "two", "alice left: bye now"]);
}

#[tokio::test(start_paused = true)]
async fn finishing_the_sending_side_is_leaving() {
    let s = server(ServerOptions::default());
    let (mut alice, task) = member(&s, "alice").await;
    let (mut bob, _b) = member(&s, "bob").await;
    alice
        .until("bob's join", |m| matches!(m, ServerMsg::Joined { .. }))
        .await;
    alice.say(1, "last words").await;
    // FIN without a Bye: what was sent is answered, then it is a leave with
    // no reason, and nothing more is delivered.
    alice.send.shutdown().await.expect("the pipe closes");
    assert_eq!(alice.rest().await, [ServerMsg::Ack { seq: 1 }]);
    assert_eq!(ended(task).await.code, CloseCode::Normal);
    assert!(matches!(bob.next().await, Some(ServerMsg::Chat { text, .. }) if text == "last words"));
    assert_eq!(
        bob.next().await,
        Some(ServerMsg::Left {
            name: "alice".into(),
            reason: String::new()
        })
    );
    assert_eq!(s.room().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_kicked_member_gets_the_kick_before_the_stream_ends() {
    let s = server(ServerOptions::default());
    let (mut bob, task) = member(&s, "bob").await;
    let mut op = s.join_local();
    op.send
        .write_all(
            &ClientMsg::Hello {
                version: PROTOCOL_VERSION,
                name: "op".into(),
            }
            .to_frame(),
        )
        .await
        .expect("the pipe is open");
    bob.until("the operator's join", |m| {
        matches!(m, ServerMsg::Joined { .. })
    })
    .await;
    op.send
        .write_all(
            &ClientMsg::Kick {
                name: "bob".into(),
                reason: "spam".into(),
            }
            .to_frame(),
        )
        .await
        .expect("the pipe is open");
    // The last words are flushed before the close.
    assert_eq!(
        bob.rest().await,
        [ServerMsg::Kicked {
            by: "op".into(),
            reason: "spam".into()
        }]
    );
    let end = ended(task).await;
    assert_eq!(end.code, CloseCode::Kicked);
    assert_eq!(end.reason, "kicked by op: spam");
}

#[tokio::test(start_paused = true)]
async fn a_member_that_does_not_read_is_removed_without_stalling_the_room() {
    let s = server(ServerOptions {
        queue_len: 16,
        history: 0,
        rate: 0,
        ..ServerOptions::default()
    });
    let (mut alice, _a) = member(&s, "alice").await;
    let (mut carol, _c) = member(&s, "carol").await;
    // A pipe of 1 KiB that sloth never reads: its writer blocks, its queue
    // fills.
    let (_sloth, task) = member_with_pipe(&s, "sloth", 1024).await;
    let big = "x".repeat(500);
    for seq in 1..=40u64 {
        alice.say(seq, &big).await;
        // carol keeps reading: she must get every line.
        carol
            .until("alice's line", |m| matches!(m, ServerMsg::Chat { .. }))
            .await;
    }
    let end = ended(task).await;
    assert_eq!(end.code, CloseCode::SlowReader, "{}", end.reason);
    alice
        .until(
            "sloth's departure",
            |m| matches!(m, ServerMsg::Left { name, .. } if name == "sloth"),
        )
        .await;
    assert_eq!(s.room().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn connections_that_never_join_are_summed_up_not_logged_one_by_one() {
    let s = server(ServerOptions::default());
    let gate = crate::gate::Gate::new(100, 100, 100, 100);
    let ip: std::net::IpAddr = [192, 0, 2, 7].into();
    let mut sessions = Vec::new();
    for _ in 0..10 {
        let permit = gate.admit(ip).expect("a free slot");
        let (client, server_end) = tokio::io::duplex(1024);
        let (server_recv, server_send) = tokio::io::split(server_end);
        let room = Arc::clone(&s.room);
        let options = s.room.options();
        let deadline = Instant::now() + options.hello_timeout;
        sessions.push(tokio::spawn(async move {
            let sink = PipeSink(server_send);
            let end = run_stream(
                sink,
                server_recv,
                Box::new(network_peer()),
                &room,
                &options,
                deadline,
                Some(&permit),
            )
            .await;
            drop(client);
            end
        }));
    }
    for task in sessions {
        assert_eq!(ended(task).await.code, CloseCode::HelloTimeout);
    }
    // The first was logged in full; the other nine wait for the summary.
    assert_eq!(
        gate.summarise(),
        ["closed 9 more connections from 192.0.2.7 in the last 10 s (no hello in time)"]
    );
    assert_eq!(gate.live(), 0);
}

/// A member from the network, as far as the room is concerned.
fn network_peer() -> Peer {
    Peer {
        addr: None,
        operator: false,
        version: PROTOCOL_VERSION,
        instance: None,
        conn: None,
        key: None,
    }
}

/// A reading end whose connection can be made to drop: after `cut`, it
/// fails the way a lost network connection does, instead of ending cleanly.
struct Cuttable {
    inner: ReadHalf<DuplexStream>,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl tokio::io::AsyncRead for Cuttable {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.cut.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
        }
        let before = buf.filled().len();
        let got = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        // The client's side closing is what wakes the read; whether it was
        // cut is decided then.
        if matches!(got, std::task::Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && self.cut.load(std::sync::atomic::Ordering::SeqCst)
        {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
        }
        got
    }
}

/// A version-3 member: its client, its session, how to drop its connection,
/// and everything up to the end of its replay (welcome first).
struct V3 {
    client: Client,
    task: JoinHandle<End>,
    cut: Arc<std::sync::atomic::AtomicBool>,
    start: Vec<ServerMsg>,
}

impl V3 {
    /// Drops the connection without a goodbye.
    async fn drop_connection(self) -> End {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(self.client);
        ended(self.task).await
    }

    fn replayed(&self) -> (bool, u64, u64) {
        match self.start.last() {
            Some(ServerMsg::Replayed {
                resumed,
                count,
                missed,
            }) => (*resumed, *count, *missed),
            other => panic!("the replay did not end with Replayed: {other:?}"),
        }
    }

    fn log(&self) -> ([u8; 16], u64) {
        match self.start.first() {
            Some(ServerMsg::WelcomeV3 {
                log_id, last_id, ..
            }) => (*log_id, *last_id),
            other => panic!("no WelcomeV3: {other:?}"),
        }
    }
}

/// Says hello as a version-3 client; `Err` carries the rejection.
async fn join_v3(
    server: &Server,
    name: &str,
    instance: [u8; 16],
    resume: Option<qchat_proto::ResumePoint>,
) -> Result<V3, ServerMsg> {
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deadline = Instant::now() + server.room.options().hello_timeout;
    let (mut client, task) = session_reading(server, 1 << 20, deadline, |inner| Cuttable {
        inner,
        cut: Arc::clone(&cut),
    });
    client
        .send(ClientMsg::HelloV3 {
            version: 3,
            name: name.into(),
            instance,
            resume,
        })
        .await;
    let mut start = Vec::new();
    loop {
        match client.next().await {
            Some(m @ ServerMsg::Rejected { .. }) => return Err(m),
            Some(m @ ServerMsg::Replayed { .. }) => {
                start.push(m);
                break;
            }
            Some(m) => start.push(m),
            None => panic!("{name}: the stream ended during the join: {start:?}"),
        }
    }
    Ok(V3 {
        client,
        task,
        cut,
        start,
    })
}

/// Asserts that a version-3 and an older member are each told of the
/// shutdown in their own kind, with the same reason.
async fn expect_shutdown(v3: &mut Client, v2: &mut Client, reason: &str, back: bool) {
    assert_eq!(
        v3.next().await,
        Some(ServerMsg::ShuttingDownV3 {
            reason: reason.into(),
            back
        })
    );
    assert_eq!(
        v2.next().await,
        Some(ServerMsg::ShuttingDown {
            reason: reason.into()
        })
    );
}

fn say_v3(seq: u64, text: &str) -> ClientMsg {
    ClientMsg::Say {
        seq,
        text: text.into(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_fresh_v3_join_gets_the_log_and_a_resume_gets_exactly_what_it_missed() {
    let s = server(ServerOptions {
        rate: 0,
        ..ServerOptions::default()
    });
    let mut alice = join_v3(&s, "alice", [1; 16], None).await.expect("joins");
    assert_eq!(alice.replayed(), (false, 0, 0));
    for seq in 1..=5 {
        alice.client.send(say_v3(seq, &format!("m{seq}"))).await;
        let ack = alice
            .client
            .until("the ack", |m| matches!(m, ServerMsg::AckV3 { .. }))
            .await;
        assert_eq!(ack, ServerMsg::AckV3 { seq, id: seq });
    }
    let fresh = join_v3(&s, "bob", [2; 16], None).await.expect("joins");
    let (log_id, last) = fresh.log();
    assert_eq!(last, 5);
    assert_eq!(stored(&fresh.start).len(), 5);
    assert_eq!(fresh.replayed(), (false, 5, 0));
    let resumed = join_v3(
        &s,
        "carol",
        [3; 16],
        Some(qchat_proto::ResumePoint { log_id, after: 2 }),
    )
    .await
    .expect("joins");
    assert_eq!(
        stored(&resumed.start),
        [(3, "m3".into()), (4, "m4".into()), (5, "m5".into())]
    );
    assert_eq!(resumed.replayed(), (true, 3, 0));
    // Another log's point is a fresh join, not a resume.
    let other = join_v3(
        &s,
        "dave",
        [4; 16],
        Some(qchat_proto::ResumePoint {
            log_id: [9; 16],
            after: 2,
        }),
    )
    .await
    .expect("joins");
    assert_eq!(other.replayed(), (false, 5, 0));
}

#[tokio::test(start_paused = true)]
async fn a_resume_while_messages_flow_has_no_gap_and_no_duplicate() {
    let s = server(ServerOptions {
        rate: 0,
        replay_max: 3,
        ..ServerOptions::default()
    });
    let mut alice = join_v3(&s, "alice", [1; 16], None).await.expect("joins");
    let log_id = alice.log().0;
    let mut burst = Vec::new();
    for seq in 1..=200u64 {
        burst.extend_from_slice(&say_v3(seq, &seq.to_string()).to_frame());
    }
    // The burst and the resume race: wherever the join falls between
    // commits, the member sees each id once, in order.
    alice.client.write(&burst).await;
    let mut bob = join_v3(
        &s,
        "bob",
        [2; 16],
        Some(qchat_proto::ResumePoint { log_id, after: 0 }),
    )
    .await
    .expect("joins");
    let (resumed, count, missed) = bob.replayed();
    assert!(resumed);
    let mut seen = stored(&bob.start);
    while seen.last().map(|l| l.0) != Some(200) {
        let m = bob.client.next().await.expect("the stream stays open");
        seen.extend(stored(&[m]));
    }
    let first = seen.first().map(|f| f.0).expect("something");
    assert_eq!(first, missed + 1, "{seen:?}");
    assert!(count <= 3, "replayed {count}, more than --replay-max");
    let want: Vec<u64> = (first..=200).collect();
    assert_eq!(seen.iter().map(|x| x.0).collect::<Vec<_>>(), want);
    assert!(seen.iter().all(|(id, text)| *text == id.to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_message_resent_after_a_reconnect_is_acknowledged_and_not_delivered_again() {
    let s = server(ServerOptions {
        rate: 0,
        ..ServerOptions::default()
    });
    let mut bob = join_v3(&s, "bob", [2; 16], None).await.expect("joins");
    let mut alice = join_v3(&s, "alice", [1; 16], None).await.expect("joins");
    alice.client.send(say_v3(7, "once")).await;
    let first = alice
        .client
        .until("the ack", |m| matches!(m, ServerMsg::AckV3 { .. }))
        .await;
    alice.drop_connection().await;
    let mut again = join_v3(&s, "alice", [1; 16], None).await.expect("rejoins");
    again.client.send(say_v3(7, "once")).await;
    again.client.send(say_v3(8, "twice")).await;
    let second = again
        .client
        .until("the ack", |m| matches!(m, ServerMsg::AckV3 { .. }))
        .await;
    assert_eq!(first, second, "the re-send gets the stored id");
    let mut texts = Vec::new();
    while texts.last().map(String::as_str) != Some("twice") {
        let m = bob.client.next().await.expect("open");
        texts.extend(stored(&[m]).into_iter().map(|x| x.1));
    }
    assert_eq!(texts, ["once", "twice"]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_member_keeps_its_name_through_the_grace_and_v2_members_see_only_the_end() {
    let s = server(ServerOptions {
        grace: Duration::from_secs(30),
        ..ServerOptions::default()
    });
    let mut bob = join_v3(&s, "bob", [2; 16], None).await.expect("joins");
    let (mut carol, _c) = member(&s, "carol").await;
    let alice = join_v3(&s, "alice", [1; 16], None).await.expect("joins");
    let end = alice.drop_connection().await;
    assert_eq!(end.code, CloseCode::Normal, "{}", end.reason);
    assert_eq!(
        bob.client
            .until("the drop", |m| !matches!(m, ServerMsg::Joined { .. }))
            .await,
        ServerMsg::Reconnecting {
            name: "alice".into()
        }
    );
    // Someone else cannot take the name meanwhile.
    let thief = join_v3(&s, "ALICE", [9; 16], None).await;
    assert!(
        matches!(
            &thief,
            Err(ServerMsg::Rejected {
                reason: qchat_proto::RejectReason::NameTaken,
                ..
            })
        ),
        "{:?}",
        thief.as_ref().err()
    );
    // Nobody was told alice left: a newcomer finds her in the room.
    let dave = join_v3(&s, "dave", [4; 16], None).await.expect("joins");
    let listed = dave.start.iter().find_map(|m| match m {
        ServerMsg::WelcomeV3 { members, .. } => Some(members.clone()),
        _ => None,
    });
    assert_eq!(
        listed.as_deref(),
        Some(
            &[
                "bob".to_string(),
                "carol".into(),
                "alice".into(),
                "dave".into()
            ][..]
        )
    );
    let back = join_v3(&s, "alice", [1; 16], None)
        .await
        .expect("takes it back");
    assert_eq!(
        bob.client
            .until("alice's return", |m| !matches!(m, ServerMsg::Joined { .. }))
            .await,
        ServerMsg::Returned {
            name: "alice".into()
        }
    );
    // Then it drops for good.
    back.drop_connection().await;
    assert_eq!(
        bob.client.next().await,
        Some(ServerMsg::Reconnecting {
            name: "alice".into()
        })
    );
    let left = bob.client.next().await;
    assert!(
        matches!(&left, Some(ServerMsg::Left { name, .. }) if name == "alice"),
        "{left:?}"
    );
    // The v2 member saw alice join once and leave once: no presence kinds
    // it cannot decode, no leave-and-join pair for a reconnect.
    let mut seen = Vec::new();
    loop {
        let m = carol.next().await.expect("open");
        let done = matches!(&m, ServerMsg::Left { name, .. } if name == "alice");
        seen.push(m);
        if done {
            break;
        }
    }
    assert_eq!(
        seen.iter()
            .filter(|m| matches!(m, ServerMsg::Joined { name } if name == "alice"))
            .count(),
        1,
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|m| matches!(
            m,
            ServerMsg::Reconnecting { .. } | ServerMsg::Returned { .. }
        )),
        "{seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn v2_and_v3_members_each_get_their_own_kinds() {
    let s = server(ServerOptions::default());
    let (mut carol, _c) = member(&s, "carol").await;
    let mut bob = join_v3(&s, "bob", [2; 16], None).await.expect("joins");
    carol
        .until("bob", |m| matches!(m, ServerMsg::Joined { .. }))
        .await;
    carol.say(1, "from v2").await;
    assert_eq!(carol.next().await, Some(ServerMsg::Ack { seq: 1 }));
    let got = bob.client.next().await;
    assert!(
        matches!(&got, Some(ServerMsg::ChatV3 { id: 1, text, action: false, .. }) if text == "from v2"),
        "{got:?}"
    );
    bob.client
        .send(ClientMsg::Action {
            seq: 1,
            text: "waves".into(),
        })
        .await;
    assert_eq!(
        bob.client.next().await,
        Some(ServerMsg::AckV3 { seq: 1, id: 2 })
    );
    let got = carol.next().await;
    assert!(
        matches!(&got, Some(ServerMsg::Action { text, .. }) if text == "waves"),
        "{got:?}"
    );
    s.room().shutdown("restarting", true, false);
    expect_shutdown(&mut bob.client, &mut carol, "restarting", true).await;
}

#[tokio::test(start_paused = true)]
async fn a_private_message_resent_after_a_reconnect_reaches_its_recipient_once() {
    let s = server(ServerOptions::default());
    let mut bob = join_v3(&s, "bob", [2; 16], None).await.expect("joins");
    let mut alice = join_v3(&s, "alice", [1; 16], None).await.expect("joins");
    let psst = ClientMsg::Private {
        seq: 5,
        to: "bob".into(),
        text: "psst".into(),
    };
    alice.client.send(psst.clone()).await;
    alice
        .client
        .until("the ack", |m| *m == ServerMsg::AckV3 { seq: 5, id: 0 })
        .await;
    alice.drop_connection().await;
    let mut again = join_v3(&s, "alice", [1; 16], None).await.expect("rejoins");
    again.client.send(psst).await;
    assert_eq!(
        again.client.next().await,
        Some(ServerMsg::AckV3 { seq: 5, id: 0 }),
        "acknowledged without an echo: it was delivered before"
    );
    again.client.send(say_v3(6, "after")).await;
    let mut privates = 0;
    loop {
        match bob.client.next().await.expect("open") {
            ServerMsg::Private { text, .. } if text == "psst" => privates += 1,
            ServerMsg::ChatV3 { text, .. } if text == "after" => break,
            _ => {}
        }
    }
    assert_eq!(privates, 1);
}

#[tokio::test(start_paused = true)]
async fn the_hosts_quit_reason_is_what_members_are_told_when_the_host_ends_the_server() {
    let s = server(ServerOptions::default());
    let mut bob = join_v3(&s, "bob", [2; 16], None).await.expect("joins");
    let (mut carol, _c) = member(&s, "carol").await;
    let mut op = s.join_local();
    let mut frames = ClientMsg::Hello {
        version: PROTOCOL_VERSION,
        name: "host".into(),
    }
    .to_frame()
    .to_vec();
    frames.extend_from_slice(
        &ClientMsg::Bye {
            reason: "back tomorrow".into(),
        }
        .to_frame(),
    );
    op.send.write_all(&frames).await.expect("the pipe is open");
    bob.client
        .until("the host's leave", |m| matches!(m, ServerMsg::Left { .. }))
        .await;
    carol
        .until("the host's leave", |m| matches!(m, ServerMsg::Left { .. }))
        .await;
    s.room()
        .shutdown("the server is shutting down", false, true);
    expect_shutdown(&mut bob.client, &mut carol, "back tomorrow", false).await;
}

#[tokio::test(start_paused = true)]
async fn a_client_back_before_its_old_connection_died_replaces_it_silently() {
    let s = server(ServerOptions::default());
    let mut bob = join_v3(&s, "bob", [2; 16], None).await.expect("joins");
    let old = join_v3(&s, "alice", [1; 16], None).await.expect("joins");
    assert_eq!(
        bob.client.next().await,
        Some(ServerMsg::Joined {
            name: "alice".into()
        })
    );
    // Another client still cannot have the name.
    assert!(join_v3(&s, "alice", [7; 16], None).await.is_err());
    let mut new = join_v3(&s, "alice", [1; 16], None).await.expect("replaces");
    let end = ended(old.task).await;
    assert_eq!(end.code, CloseCode::Normal, "{}", end.reason);
    assert_eq!(s.room().len(), 2);
    new.client.send(say_v3(1, "still here")).await;
    // bob saw no leave and no join: the next thing is alice's message.
    let got = bob.client.next().await;
    assert!(
        matches!(&got, Some(ServerMsg::ChatV3 { from, text, .. }) if from == "alice" && text == "still here"),
        "{got:?}"
    );
}

/// Says hello as `name` from `peer` and returns the server's first answer.
async fn hello_from(server: &Server, peer: Peer, name: &str) -> Option<ServerMsg> {
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    let (server_recv, server_send) = tokio::io::split(server_end);
    let room = Arc::clone(&server.room);
    let options = server.room.options();
    let deadline = Instant::now() + options.hello_timeout;
    tokio::spawn(async move {
        run_stream(
            PipeSink(server_send),
            server_recv,
            Box::new(peer),
            &room,
            &options,
            deadline,
            None,
        )
        .await
    });
    let (recv, send) = tokio::io::split(client);
    let mut c = Client {
        send,
        recv,
        decoder: FrameDecoder::new(limits::MAX_SERVER_FRAME),
    };
    c.send(ClientMsg::Hello {
        version: 2,
        name: name.into(),
    })
    .await;
    c.next().await
}

fn from_afar(key: Option<u8>) -> Peer {
    Peer {
        addr: Some(std::net::SocketAddr::from(([192, 0, 2, 7], 4433))),
        key: key.map(|k| qchat_tls::Fingerprint::from_bytes([k; 32])),
        ..network_peer()
    }
}

#[tokio::test(start_paused = true)]
async fn keys_required_refuses_guests_from_the_network_but_not_the_host() {
    let s = server(ServerOptions {
        keys_required: true,
        ..ServerOptions::default()
    });
    match hello_from(&s, from_afar(None), "gus").await {
        Some(ServerMsg::Rejected { reason, detail }) => {
            assert_eq!(reason, qchat_proto::RejectReason::KeyRequired, "{detail}");
            assert!(detail.contains("guest"), "{detail}");
        }
        other => panic!("a guest got in: {other:?}"),
    }
    let host = Peer {
        operator: true,
        ..network_peer()
    };
    assert!(matches!(
        hello_from(&s, host, "host").await,
        Some(ServerMsg::Welcome { .. })
    ));
    assert!(matches!(
        hello_from(&s, from_afar(Some(1)), "alice").await,
        Some(ServerMsg::Welcome { .. })
    ));
    let claim = s
        .room
        .registry()
        .lookup("ALICE", s.room.options().name_expiry);
    assert_eq!(claim.map(|c| c.keys[0].key), Some([1; 32]));
}

/// A claim made for a join that then fails is taken back: the name stays
/// free for whoever comes next.
#[tokio::test(start_paused = true)]
async fn a_claim_for_a_refused_join_is_taken_back() {
    let s = server(ServerOptions::default());
    s.room.shutdown("closing", false, false);
    assert!(matches!(
        hello_from(&s, from_afar(Some(2)), "zed").await,
        Some(ServerMsg::Rejected {
            reason: qchat_proto::RejectReason::ShuttingDown,
            ..
        })
    ));
    assert_eq!(
        s.room
            .registry()
            .lookup("zed", s.room.options().name_expiry),
        None
    );
}

/// Opens a session from `peer` whose first frame is `first`; returns the
/// client end and the server's first answer.
async fn open_from(server: &Server, peer: Peer, first: ClientMsg) -> (Client, Option<ServerMsg>) {
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    let (server_recv, server_send) = tokio::io::split(server_end);
    let room = Arc::clone(&server.room);
    let options = server.room.options();
    let deadline = Instant::now() + options.hello_timeout;
    tokio::spawn(async move {
        run_stream(
            PipeSink(server_send),
            server_recv,
            Box::new(peer),
            &room,
            &options,
            deadline,
            None,
        )
        .await
    });
    let (recv, send) = tokio::io::split(client);
    let mut c = Client {
        send,
        recv,
        decoder: FrameDecoder::new(limits::MAX_SERVER_FRAME),
    };
    c.send(first).await;
    let answer = c.next().await;
    (c, answer)
}

fn hello_v4(name: &str, instance: u8) -> ClientMsg {
    ClientMsg::HelloV3 {
        version: PROTOCOL_VERSION,
        name: name.into(),
        instance: [instance; 16],
        resume: None,
    }
}

fn hello_link(name: &str, instance: u8, code: &str) -> ClientMsg {
    ClientMsg::HelloLink {
        version: PROTOCOL_VERSION,
        name: name.into(),
        instance: [instance; 16],
        resume: None,
        code: code.into(),
    }
}

/// A device in the room makes a code; a new device links with it and takes
/// the name over (the old one is told why); the code is then used up, and a
/// guest can neither link nor manage devices.
#[tokio::test(start_paused = true)]
async fn a_linked_device_takes_the_name_over_and_the_code_is_used_up() {
    use qchat_proto::{DeviceOp, RejectReason};
    let s = server(ServerOptions::default());
    let (mut laptop, welcome) = open_from(&s, from_afar(Some(1)), hello_v4("alice", 1)).await;
    assert!(
        matches!(welcome, Some(ServerMsg::WelcomeV3 { .. })),
        "{welcome:?}"
    );
    laptop.send(ClientMsg::Device { op: DeviceOp::Link }).await;
    let code = match laptop
        .until("the code", |m| matches!(m, ServerMsg::LinkCode { .. }))
        .await
    {
        ServerMsg::LinkCode { code, .. } => code,
        other => panic!("{other:?}"),
    };

    let (mut phone, welcome) =
        open_from(&s, from_afar(Some(2)), hello_link("alice", 2, &code)).await;
    assert!(
        matches!(welcome, Some(ServerMsg::WelcomeV3 { .. })),
        "{welcome:?}"
    );
    let kicked = laptop
        .until("the hand-over", |m| matches!(m, ServerMsg::Kicked { .. }))
        .await;
    assert!(
        matches!(&kicked, ServerMsg::Kicked { reason, .. } if reason.contains("another of your devices")),
        "{kicked:?}"
    );
    phone.send(ClientMsg::Device { op: DeviceOp::List }).await;
    let list = phone
        .until("the list", |m| matches!(m, ServerMsg::Devices { .. }))
        .await;
    let ServerMsg::Devices { devices, .. } = list else {
        unreachable!()
    };
    let keys: Vec<([u8; 32], bool)> = devices.iter().map(|d| (d.key, d.this)).collect();
    assert_eq!(keys, vec![([1; 32], false), ([2; 32], true)]);

    let (_, again) = open_from(&s, from_afar(Some(3)), hello_link("alice", 3, &code)).await;
    assert!(
        matches!(&again, Some(ServerMsg::Rejected { reason: RejectReason::LinkRefused, detail }) if detail.contains("already used")),
        "{again:?}"
    );
    let (_, guest) = open_from(&s, from_afar(None), hello_link("alice", 4, &code)).await;
    assert!(
        matches!(&guest, Some(ServerMsg::Rejected { reason: RejectReason::LinkRefused, detail }) if detail.contains("guest")),
        "{guest:?}"
    );
    let (mut gus, _) = open_from(&s, from_afar(None), hello_v4("gus", 5)).await;
    gus.send(ClientMsg::Device { op: DeviceOp::Link }).await;
    let failed = gus
        .until("the refusal", |m| matches!(m, ServerMsg::Failed { .. }))
        .await;
    assert!(
        matches!(&failed, ServerMsg::Failed { what, reason } if what == "device" && reason.contains("guest")),
        "{failed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_banned_key_and_a_banned_guest_address_are_refused_at_the_hello() {
    use crate::moderation::{AddrBan, Entry};
    let s = server(ServerOptions::default());
    let m = s.room.registry().moderation();
    m.ban(Entry {
        name: "mallory".into(),
        keys: vec![[9; 32]],
        by: "carol".into(),
        at_ms: 0,
        reason: "spam".into(),
    })
    .expect("ban");
    m.ban_addr(AddrBan {
        name: "gus".into(),
        addr: std::net::IpAddr::from([192, 0, 2, 7]),
        by: "carol".into(),
        at_ms: 0,
        until_ms: u64::MAX,
        reason: "flood".into(),
    });
    // The key, under a name it never used: refused for the key's sake.
    match hello_from(&s, from_afar(Some(9)), "newname").await {
        Some(ServerMsg::Rejected { reason, detail }) => {
            assert_eq!(reason, qchat_proto::RejectReason::Banned, "{detail}");
            assert!(
                detail.contains("by carol") && detail.contains("spam"),
                "{detail}"
            );
        }
        other => panic!("a banned key got in: {other:?}"),
    }
    match hello_from(&s, from_afar(None), "gus2").await {
        Some(ServerMsg::Rejected { reason, detail }) => {
            assert_eq!(reason, qchat_proto::RejectReason::Banned, "{detail}");
            assert!(
                detail.contains("address") && detail.contains("flood"),
                "{detail}"
            );
        }
        other => panic!("a guest from a banned address got in: {other:?}"),
    }
    // A key from the same address is judged by its key.
    assert!(matches!(
        hello_from(&s, from_afar(Some(1)), "alice").await,
        Some(ServerMsg::Welcome { .. })
    ));
}

/// Reads until `want` matches a message, bounded by the client's wait.
async fn until(c: &mut Client, want: impl Fn(&ServerMsg) -> bool) -> ServerMsg {
    loop {
        match c.next().await {
            Some(m) if want(&m) => return m,
            Some(_) => {}
            None => panic!("the stream ended first"),
        }
    }
}

/// A room for the signing tests: alice with a person key (the signer),
/// bob speaking version 4, and `old` speaking version 3, all past their
/// replay.
struct SignedRoom {
    /// Holds alice's key files for as long as the test runs.
    _dir: tempfile::TempDir,
    signer: qchat_tls::signing::Signer,
    s: Server,
    alice: Client,
    bob: Client,
    old: Client,
}

async fn signed_room() -> SignedRoom {
    let dir = tempfile::tempdir().expect("tempdir");
    let (id, _) =
        qchat_tls::identity::load_or_create_as(dir.path(), qchat_tls::Role::Person).expect("a key");
    let signer = qchat_tls::signing::Signer::new(&id).expect("Ed25519");
    let s = server(ServerOptions::default());
    let alice_peer = Peer {
        key: Some(id.fingerprint),
        ..from_afar(None)
    };
    let (mut alice, _) = open_from(&s, alice_peer, hello_v4("alice", 1)).await;
    until(&mut alice, |m| matches!(m, ServerMsg::Replayed { .. })).await;
    let (mut bob, _) = open_from(&s, from_afar(Some(9)), hello_v4("bob", 2)).await;
    until(&mut bob, |m| matches!(m, ServerMsg::Replayed { .. })).await;
    let (mut old, _) = open_from(
        &s,
        from_afar(None),
        ClientMsg::HelloV3 {
            version: 3,
            name: "old".into(),
            instance: [3; 16],
            resume: None,
        },
    )
    .await;
    until(&mut old, |m| matches!(m, ServerMsg::Replayed { .. })).await;
    SignedRoom {
        _dir: dir,
        signer,
        s,
        alice,
        bob,
        old,
    }
}

/// A signed line is checked only for what is cheap (the signature's
/// length, the connection's own key), stored with its proof, and
/// forwarded with it — live and in the replay — to members that speak
/// version 4; a version-3 member gets the line as before.
#[tokio::test(start_paused = true)]
async fn a_signed_line_is_stored_and_forwarded_with_its_proof() {
    let SignedRoom {
        _dir,
        signer,
        s,
        mut alice,
        mut bob,
        mut old,
    } = signed_room().await;

    let signed = |seq: u64, key: [u8; 32], sig: Vec<u8>| ClientMsg::Signed {
        seq,
        text: "hi".into(),
        action: false,
        sent_ms: 77,
        key,
        sig,
    };
    // Another key than the connection's, and a signature of another length.
    alice.send(signed(1, [5; 32], vec![0; 64])).await;
    match until(&mut alice, |m| matches!(m, ServerMsg::Refused { .. })).await {
        ServerMsg::Refused { seq, reason } => {
            assert_eq!(seq, 1);
            assert!(reason.contains("another key"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    alice
        .send(signed(2, signer.public_key(), vec![0; 10]))
        .await;
    match until(&mut alice, |m| matches!(m, ServerMsg::Refused { .. })).await {
        ServerMsg::Refused { seq, reason } => {
            assert_eq!(seq, 2);
            assert!(reason.contains("64"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The server forwards whatever signature bytes it got (the
    // recipients check them); these are not a real signature.
    let sig: Vec<u8> = (0..64).collect();
    alice
        .send(signed(3, signer.public_key(), sig.clone()))
        .await;
    until(&mut alice, |m| matches!(m, ServerMsg::AckV3 { seq: 3, .. })).await;
    let want = qchat_proto::Proof {
        instance: [1; 16],
        seq: 3,
        sent_ms: 77,
        key: signer.public_key(),
        sig,
    };
    match until(&mut bob, |m| matches!(m, ServerMsg::ChatSigned { .. })).await {
        ServerMsg::ChatSigned {
            from, text, proof, ..
        } => {
            assert_eq!((from.as_str(), text.as_str()), ("alice", "hi"));
            assert_eq!(proof, want);
        }
        other => panic!("{other:?}"),
    }
    match until(&mut old, |m| matches!(m, ServerMsg::ChatV3 { .. })).await {
        ServerMsg::ChatV3 { text, .. } => assert_eq!(text, "hi"),
        other => panic!("{other:?}"),
    }
    let (mut carol, _) = open_from(&s, from_afar(Some(8)), hello_v4("carol", 4)).await;
    match until(&mut carol, |m| {
        matches!(
            m,
            ServerMsg::HistorySigned { .. } | ServerMsg::Replayed { .. }
        )
    })
    .await
    {
        ServerMsg::HistorySigned { text, proof, .. } => {
            assert_eq!(text, "hi");
            assert_eq!(proof, want);
        }
        other => panic!("no signed history: {other:?}"),
    }
}

/// A signed private message is checked like a signed line (the
/// connection's own key, the signature's length), then delivered with its
/// proof and the recipient's name as addressed to a member that speaks
/// version 4, echoed the same way to its sender, and delivered as a plain
/// `Private` to a version-3 member, which could not check it.
#[tokio::test(start_paused = true)]
async fn a_signed_private_message_is_forwarded_with_its_proof() {
    let SignedRoom {
        _dir,
        signer,
        s: _server,
        mut alice,
        mut bob,
        mut old,
    } = signed_room().await;

    let private = |seq: u64, to: &str, key: [u8; 32], sig: Vec<u8>| ClientMsg::SignedPrivate {
        seq,
        to: to.into(),
        text: "psst".into(),
        sent_ms: 77,
        key,
        sig,
    };
    alice.send(private(1, "BOB", [5; 32], vec![0; 64])).await;
    match until(&mut alice, |m| matches!(m, ServerMsg::Refused { .. })).await {
        ServerMsg::Refused { seq, reason } => {
            assert_eq!(seq, 1);
            assert!(reason.contains("another key"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    alice
        .send(private(2, "BOB", signer.public_key(), vec![0; 63]))
        .await;
    match until(&mut alice, |m| matches!(m, ServerMsg::Refused { .. })).await {
        ServerMsg::Refused { seq, reason } => {
            assert_eq!(seq, 2);
            assert!(reason.contains("64"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let sig: Vec<u8> = (0..64).collect();
    alice
        .send(private(3, "BOB", signer.public_key(), sig.clone()))
        .await;
    let want = qchat_proto::Proof {
        instance: [1; 16],
        seq: 3,
        sent_ms: 77,
        key: signer.public_key(),
        sig: sig.clone(),
    };
    for c in [&mut bob, &mut alice] {
        match until(c, |m| matches!(m, ServerMsg::PrivateSigned { .. })).await {
            ServerMsg::PrivateSigned {
                from,
                to,
                text,
                proof,
                ..
            } => {
                assert_eq!(
                    (from.as_str(), to.as_str(), text.as_str()),
                    ("alice", "BOB", "psst")
                );
                assert_eq!(proof, want);
            }
            other => panic!("{other:?}"),
        }
    }
    until(&mut alice, |m| matches!(m, ServerMsg::AckV3 { seq: 3, .. })).await;

    alice
        .send(private(4, "old", signer.public_key(), sig))
        .await;
    match until(&mut old, |m| matches!(m, ServerMsg::Private { .. })).await {
        ServerMsg::Private { from, to, text, .. } => {
            assert_eq!(
                (from.as_str(), to.as_str(), text.as_str()),
                ("alice", "old", "psst")
            );
        }
        other => panic!("{other:?}"),
    }
    until(&mut alice, |m| matches!(m, ServerMsg::AckV3 { seq: 4, .. })).await;
}

fn failed_what(m: &ServerMsg) -> Option<&str> {
    match m {
        ServerMsg::Failed { what, .. } => Some(what),
        _ => None,
    }
}

/// A request about a room the server does not know, or one the member is
/// not in, is answered with a reason; the session goes on. A member below
/// version 5 that sends a room kind broke the protocol, as for any kind
/// newer than its version.
#[tokio::test(start_paused = true)]
async fn a_room_the_server_does_not_know_is_a_reason_not_a_closed_connection() {
    let s = server(ServerOptions::default());
    let (mut alice, _) = open_from(&s, from_afar(None), hello_v4("alice", 1)).await;
    until(&mut alice, |m| matches!(m, ServerMsg::Replayed { .. })).await;
    for (msg, what) in [
        (
            ClientMsg::Topic {
                room: "#nowhere".into(),
                text: "x".into(),
            },
            "topic",
        ),
        (
            ClientMsg::Part {
                room: "#nowhere".into(),
                reason: String::new(),
            },
            "part",
        ),
        (
            ClientMsg::Join {
                room: "nohash".into(),
                resume: None,
            },
            "join",
        ),
        (
            ClientMsg::Join {
                room: "#lobby".into(),
                resume: None,
            },
            "join",
        ),
        (
            ClientMsg::Invite {
                room: "#nowhere".into(),
                name: "bob".into(),
            },
            "invite",
        ),
    ] {
        alice.send(msg).await;
        let m = until(&mut alice, |m| failed_what(m).is_some()).await;
        assert_eq!(failed_what(&m), Some(what), "{m:?}");
    }
    alice
        .send(ClientMsg::RoomSay {
            room: "#nowhere".into(),
            seq: 1,
            text: "hi".into(),
            action: false,
        })
        .await;
    match until(&mut alice, |m| matches!(m, ServerMsg::Refused { .. })).await {
        ServerMsg::Refused { seq, reason } => {
            assert_eq!(seq, 1);
            assert!(reason.contains("not in #nowhere"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Still in the server, and rooms work.
    alice
        .send(ClientMsg::Join {
            room: "#dev".into(),
            resume: None,
        })
        .await;
    until(&mut alice, |m| matches!(m, ServerMsg::RoomReplayed { .. })).await;
    alice
        .send(ClientMsg::RoomSay {
            room: "#DEV".into(),
            seq: 2,
            text: "hi".into(),
            action: false,
        })
        .await;
    let ack = until(&mut alice, |m| matches!(m, ServerMsg::RoomAck { .. })).await;
    assert_eq!(
        ack,
        ServerMsg::RoomAck {
            room: "#dev".into(),
            seq: 2,
            id: 1
        }
    );
    // A topic at the limit is set; one byte past it is refused whole, and
    // the topic stays as it was.
    let max = qchat_proto::limits::MAX_TOPIC_BYTES;
    for (len, set) in [(max, true), (max + 1, false)] {
        alice
            .send(ClientMsg::Topic {
                room: "#dev".into(),
                text: "t".repeat(len),
            })
            .await;
        let m = until(&mut alice, |m| {
            matches!(m, ServerMsg::TopicSet { .. }) || failed_what(m).is_some()
        })
        .await;
        match m {
            ServerMsg::TopicSet { text, .. } if set => assert_eq!(text.len(), max),
            ServerMsg::Failed { what, reason } if !set => {
                assert_eq!(what, "topic");
                assert!(reason.contains(&format!("{} bytes", max + 1)), "{reason}");
            }
            other => panic!("{len} bytes: {other:?}"),
        }
    }

    let (mut old, _) = open_from(
        &s,
        from_afar(None),
        ClientMsg::HelloV3 {
            version: 4,
            name: "old".into(),
            instance: [4; 16],
            resume: None,
        },
    )
    .await;
    until(&mut old, |m| matches!(m, ServerMsg::Replayed { .. })).await;
    old.send(ClientMsg::Rooms).await;
    let rest = old.rest().await;
    assert!(
        !rest.iter().any(|m| matches!(m, ServerMsg::RoomList { .. })),
        "{rest:?}"
    );
}

/// A room's signed line goes to the room's members with its proof, and
/// the proof verifies with the room's name where a private message has
/// its recipient — not as a lobby line: the signature binds the line to
/// its room.
#[tokio::test(start_paused = true)]
async fn a_signed_room_line_is_bound_to_its_room() {
    let SignedRoom {
        _dir,
        signer,
        s: _s,
        mut alice,
        mut bob,
        old: _old,
    } = signed_room().await;
    for c in [&mut alice, &mut bob] {
        c.send(ClientMsg::Join {
            room: "#dev".into(),
            resume: None,
        })
        .await;
        until(c, |m| matches!(m, ServerMsg::RoomReplayed { .. })).await;
    }
    let bytes = |to: &str| {
        qchat_proto::signed::Signed {
            kind: qchat_proto::signed::SignedKind::Say,
            to,
            text: "hi",
            instance: [1; 16],
            seq: 1,
            sent_ms: 77,
        }
        .bytes()
    };
    alice
        .send(ClientMsg::RoomSigned {
            room: "#dev".into(),
            seq: 1,
            text: "hi".into(),
            action: false,
            sent_ms: 77,
            key: signer.public_key(),
            sig: signer.sign(&bytes("#dev")),
        })
        .await;
    match until(&mut bob, |m| matches!(m, ServerMsg::RoomChat { .. })).await {
        ServerMsg::RoomChat {
            room,
            proof: Some(p),
            text,
            ..
        } => {
            assert_eq!((room.as_str(), text.as_str()), ("#dev", "hi"));
            assert!(qchat_tls::signing::verify(&p.key, &bytes(&room), &p.sig));
            assert!(!qchat_tls::signing::verify(&p.key, &bytes(""), &p.sig));
            assert!(!qchat_tls::signing::verify(&p.key, &bytes("#ops"), &p.sig));
        }
        other => panic!("{other:?}"),
    }
    // Signed under another spelling of the room, it would reach bob as a
    // forgery: it is refused instead, and says why.
    alice
        .send(ClientMsg::RoomSigned {
            room: "#DEV".into(),
            seq: 2,
            text: "hi".into(),
            action: false,
            sent_ms: 77,
            key: signer.public_key(),
            sig: signer.sign(&bytes("#DEV")),
        })
        .await;
    match until(&mut alice, |m| matches!(m, ServerMsg::Refused { .. })).await {
        ServerMsg::Refused { seq, reason } => {
            assert_eq!(seq, 2);
            assert!(
                reason.contains("as the server spells it (#dev)"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Frames up to and including the first that `last` matches.
async fn collect_until(c: &mut Client, last: impl Fn(&ServerMsg) -> bool) -> Vec<ServerMsg> {
    let mut got = Vec::new();
    loop {
        let m = c.next().await.expect("a frame before the end");
        let done = last(&m);
        got.push(m);
        if done {
            return got;
        }
    }
}

/// With private history kept, a private message is stored and then shown
/// in each member's own kind — `PrivateLive`, with its conversation and
/// id, to version 5; `Private` to version 3 — and a member that asks for
/// the private replay gets its own conversations after its point, never
/// anyone else's.
#[tokio::test(start_paused = true)]
async fn private_history_is_stored_and_replayed_to_its_members_only() {
    let s = server(ServerOptions::default());
    let store = crate::private::Conversations::memory(100).expect("a store");
    let log_id = store.log_id();
    assert!(s.room.set_conversations(Arc::new(store)));
    let (mut alice, _) = open_from(&s, from_afar(Some(1)), hello_v4("alice", 1)).await;
    until(&mut alice, |m| matches!(m, ServerMsg::Replayed { .. })).await;
    let (mut bob, _) = open_from(&s, from_afar(Some(2)), hello_v4("bob", 2)).await;
    until(&mut bob, |m| matches!(m, ServerMsg::Replayed { .. })).await;
    let (mut old, _) = open_from(
        &s,
        from_afar(None),
        ClientMsg::HelloV3 {
            version: 3,
            name: "old".into(),
            instance: [3; 16],
            resume: None,
        },
    )
    .await;
    until(&mut old, |m| matches!(m, ServerMsg::Replayed { .. })).await;

    let private = |seq: u64, to: &str, text: &str| ClientMsg::Private {
        seq,
        to: to.into(),
        text: text.into(),
    };
    alice.send(private(1, "BOB", "for bob")).await;
    let live = until(&mut bob, |m| matches!(m, ServerMsg::PrivateLive { .. })).await;
    let ServerMsg::PrivateLive {
        conv, id, from, to, ..
    } = live
    else {
        unreachable!("until() returns what it waited for");
    };
    assert_eq!((id, from.as_str(), to.as_str()), (1, "alice", "bob"));
    let echo = collect_until(&mut alice, |m| matches!(m, ServerMsg::AckV3 { .. })).await;
    assert!(
        echo.iter().any(
            |m| matches!(m, ServerMsg::PrivateLive { conv: c, id: 1, text, .. } if *c == conv && text == "for bob")
        ),
        "{echo:?}"
    );
    assert!(matches!(
        echo.last(),
        Some(ServerMsg::AckV3 { seq: 1, id: 0 })
    ));

    alice.send(private(2, "old", "for old")).await;
    match until(&mut old, |m| matches!(m, ServerMsg::Private { .. })).await {
        ServerMsg::Private { from, text, .. } => {
            assert_eq!((from.as_str(), text.as_str()), ("alice", "for old"))
        }
        other => panic!("{other:?}"),
    }
    // Another conversation: its own ids.
    match until(&mut alice, |m| matches!(m, ServerMsg::PrivateLive { .. })).await {
        ServerMsg::PrivateLive { conv: c, id, .. } => assert_eq!((c != conv, id), (true, 1)),
        other => panic!("{other:?}"),
    }

    // A fresh replay: bob's conversation with alice, not alice's with old.
    bob.send(ClientMsg::PrivateResume {
        log_id: [0; 16],
        points: Vec::new(),
    })
    .await;
    let replay = collect_until(&mut bob, |m| matches!(m, ServerMsg::PrivateReplayed { .. })).await;
    let texts: Vec<&str> = replay
        .iter()
        .filter_map(|m| match m {
            ServerMsg::PrivateHistory { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["for bob"], "{replay:?}");
    assert_eq!(
        replay.first(),
        Some(&ServerMsg::PrivateReplay { log_id, kept: true })
    );
    // Bob's next connection (the same client, back): from his point,
    // nothing more.
    let (mut bob, _) = open_from(&s, from_afar(Some(2)), hello_v4("bob", 2)).await;
    until(&mut bob, |m| matches!(m, ServerMsg::Replayed { .. })).await;
    bob.send(ClientMsg::PrivateResume {
        log_id,
        points: vec![qchat_proto::PrivatePoint { conv, after: 1 }],
    })
    .await;
    let replay = collect_until(&mut bob, |m| matches!(m, ServerMsg::PrivateReplayed { .. })).await;
    assert_eq!(
        replay.last(),
        Some(&ServerMsg::PrivateReplayed {
            conversations: 0,
            count: 0,
            missed: 0
        }),
        "{replay:?}"
    );
    assert_eq!(replay.len(), 2, "{replay:?}");
}

/// Members writing private messages all at once (their commits grouped):
/// every message is answered, and each member receives each of its
/// conversations' messages once, in id order, with no gap.
#[tokio::test(start_paused = true)]
async fn concurrent_private_messages_reach_both_parties_in_each_conversations_order() {
    let s = server(ServerOptions {
        rate: 0,
        ..ServerOptions::default()
    });
    let store = crate::private::Conversations::memory(1000).expect("a store");
    assert!(s.room.set_conversations(Arc::new(store)));
    let names = ["ann", "ben", "cat"];
    let mut members = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let key = u8::try_from(i + 1).expect("a few members");
        let (mut c, _) = open_from(&s, from_afar(Some(key)), hello_v4(name, key)).await;
        until(&mut c, |m| matches!(m, ServerMsg::Replayed { .. })).await;
        members.push(c);
    }
    const EACH: u64 = 20;
    for seq in 1..=EACH {
        for (i, c) in members.iter_mut().enumerate() {
            let to = names[(i + 1 + (seq as usize % 2)) % names.len()];
            c.send(ClientMsg::Private {
                seq,
                to: to.into(),
                text: format!("{seq}"),
            })
            .await;
        }
    }
    for (i, c) in members.iter_mut().enumerate() {
        let mut acked = 0;
        let mut last: std::collections::HashMap<[u8; 16], u64> = Default::default();
        // Each member sends EACH and receives EACH (two neighbours, half
        // each), and sees its own EACH echoed: 2 * EACH private frames.
        let mut privates = 0;
        while acked < EACH || privates < 2 * EACH {
            match c.next().await.expect("a frame") {
                ServerMsg::AckV3 { id: 0, .. } => acked += 1,
                ServerMsg::PrivateLive { conv, id, .. } => {
                    let prev = last.insert(conv, id).unwrap_or(0);
                    assert_eq!(id, prev + 1, "{}: conversation out of order", names[i]);
                    privates += 1;
                }
                ServerMsg::Refused { reason, .. } => panic!("refused: {reason}"),
                _ => {}
            }
        }
        assert_eq!(last.len(), 2, "{} talks with both others", names[i]);
    }
}

/// The private replay costs no token, so it is given once per connection.
#[tokio::test(start_paused = true)]
async fn the_private_replay_is_given_once_per_connection() {
    let s = server(ServerOptions::default());
    let store = crate::private::Conversations::memory(10).expect("a store");
    assert!(s.room.set_conversations(Arc::new(store)));
    let (mut c, _) = open_from(&s, from_afar(Some(1)), hello_v4("ann", 1)).await;
    until(&mut c, |m| matches!(m, ServerMsg::Replayed { .. })).await;
    let ask = ClientMsg::PrivateResume {
        log_id: [0; 16],
        points: Vec::new(),
    };
    c.send(ask.clone()).await;
    until(&mut c, |m| matches!(m, ServerMsg::PrivateReplayed { .. })).await;
    c.send(ask).await;
    match until(&mut c, |m| matches!(m, ServerMsg::Failed { .. })).await {
        ServerMsg::Failed { what, .. } => assert_eq!(what, "private"),
        other => panic!("{other:?}"),
    }
}

/// Says a version-3-style hello announcing `version`, and reads up to the
/// end of the replay: what a client of that version sees first.
async fn hello_at(server: &Server, name: &str, version: u32) -> (Client, Vec<ServerMsg>) {
    let deadline = Instant::now() + server.room.options().hello_timeout;
    let (mut client, _task) = session(server, 1 << 20, deadline);
    client
        .send(ClientMsg::HelloV3 {
            version,
            name: name.into(),
            instance: [version as u8; 16],
            resume: None,
        })
        .await;
    let mut start = Vec::new();
    loop {
        match client.next().await {
            Some(m @ ServerMsg::Replayed { .. }) => {
                start.push(m);
                return (client, start);
            }
            Some(m) => start.push(m),
            None => panic!("{name}: the stream ended during the join: {start:?}"),
        }
    }
}

/// A member that speaks version 6 hears the cluster's nodes right after
/// its welcome and again whenever they change; a version-5 member never
/// gets the kind it would not know, not even when the list changes.
#[tokio::test(start_paused = true)]
async fn a_v6_member_learns_the_nodes_after_its_welcome_and_a_v5_member_does_not() {
    let s = server(ServerOptions {
        rate: 0,
        ..ServerOptions::default()
    });
    let (_, start) = hello_at(&s, "early", 6).await;
    assert!(
        !start.iter().any(|m| matches!(m, ServerMsg::Nodes { .. })),
        "a server alone sends no list: {start:?}"
    );
    let nodes = vec!["10.0.0.1:8080".to_string(), "10.0.0.2:8080".to_string()];
    assert!(s.room.set_nodes(nodes.clone()));
    assert!(
        !s.room.set_nodes(nodes.clone()),
        "the same list is no change"
    );

    let (mut six, start) = hello_at(&s, "six", 6).await;
    assert!(
        matches!(start[0], ServerMsg::WelcomeV3 { version: 6, .. }),
        "{start:?}"
    );
    assert_eq!(
        start[1],
        ServerMsg::Nodes {
            addrs: nodes.clone()
        }
    );
    let (mut five, start) = hello_at(&s, "five", 5).await;
    assert!(
        matches!(start[0], ServerMsg::WelcomeV3 { version: 5, .. }),
        "{start:?}"
    );
    assert!(
        !start.iter().any(|m| matches!(m, ServerMsg::Nodes { .. })),
        "{start:?}"
    );

    let moved = vec!["10.0.0.2:8080".to_string()];
    assert!(s.room.set_nodes(moved.clone()));
    assert_eq!(
        six.until("the new list", |m| matches!(m, ServerMsg::Nodes { .. }))
            .await,
        ServerMsg::Nodes { addrs: moved }
    );
    // Something said after the change reaches the version-5 member with
    // nothing of the list before it.
    six.say(1, "after the change").await;
    let mut seen = Vec::new();
    loop {
        match five.next().await {
            Some(ServerMsg::ChatV3 { text, .. }) if text == "after the change" => break,
            Some(m) => seen.push(m),
            None => panic!("five's stream ended: {seen:?}"),
        }
    }
    assert!(
        !seen.iter().any(|m| matches!(m, ServerMsg::Nodes { .. })),
        "{seen:?}"
    );
}

/// A list beyond the protocol's limits is cut to them by the server, so
/// that clients, which ignore a list beyond them, still get one.
#[tokio::test(start_paused = true)]
async fn the_node_list_is_kept_within_the_protocol_limits() {
    use qchat_proto::limits::{MAX_NODES, MAX_NODE_ADDR_BYTES};
    let s = server(ServerOptions::default());
    let mut addrs: Vec<String> = (0..10_000)
        .map(|i| format!("10.0.0.1:{}", 1000 + i))
        .collect();
    addrs.insert(0, "h".repeat(10 * 1024));
    addrs.insert(1, String::new());
    assert!(s.room.set_nodes(addrs.clone()));
    let kept = s.room.nodes();
    assert_eq!(kept.len(), MAX_NODES);
    assert_eq!(kept[..], addrs[2..2 + MAX_NODES]);
    assert!(kept.iter().all(|a| a.len() <= MAX_NODE_ADDR_BYTES));
    assert_eq!(qchat_proto::check_nodes(&kept), Ok(()));
}
