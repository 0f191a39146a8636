//! Names across two `qchat serve --cluster` nodes over one real
//! nats-server: fifty members wanting one name at once, half on each
//! node, and exactly one gets it (the others are told it is taken); a
//! member on one node is in the other node's `/who` and its join and
//! departure are told there.

use qchat_proto::{ClientMsg, RejectReason, ServerMsg, PROTOCOL_VERSION};

use crate::raw::{runtime, Raw, RawStream};
use crate::util::{Home, Nats, Server};

fn node(home: &Home, nats: &Nats, certs: Option<&Home>) -> Server {
    // The fifty joins come from one address.
    Server::node(
        home,
        nats,
        certs,
        &["--max-per-ip", "100", "--max-unjoined-per-ip", "100"],
    )
}

async fn hello(raw: &Raw, name: &str, instance: u8) -> RawStream {
    let mut stream = raw.open().await;
    let hello = ClientMsg::HelloV3 {
        version: PROTOCOL_VERSION,
        name: name.into(),
        instance: [instance; 16],
        resume: None,
    };
    stream.write(&hello.to_frame()).await.expect("written");
    stream
}

/// The hello's answer: welcomed (then read to the end of the replay), or
/// refused with its reason and detail.
async fn answer(stream: &mut RawStream) -> Result<(), (RejectReason, String)> {
    match stream.next_msg().await {
        Some(ServerMsg::WelcomeV3 { .. }) => loop {
            match stream.next_msg().await {
                Some(ServerMsg::Replayed { .. }) => return Ok(()),
                Some(_) => {}
                None => panic!("welcomed, then no replay"),
            }
        },
        Some(ServerMsg::Rejected { reason, detail }) => Err((reason, detail)),
        other => panic!("neither welcomed nor refused: {other:?}"),
    }
}

async fn until(stream: &mut RawStream, what: &str, pred: impl Fn(&ServerMsg) -> bool) -> ServerMsg {
    loop {
        match stream.next_msg().await {
            Some(m) if pred(&m) => return m,
            Some(_) => {}
            None => panic!("the stream ended before {what}"),
        }
    }
}

#[test]
fn fifty_joins_of_one_name_over_two_nodes_admit_exactly_one() {
    let nats = Nats::start();
    let (ha, hb) = (Home::new(), Home::new());
    let a = node(&ha, &nats, None);
    let b = node(&hb, &nats, Some(&ha));
    runtime().block_on(async {
        // One connection each: a refused hello closes its connection.
        let mut raws = Vec::new();
        for i in 0..50u8 {
            raws.push(Raw::connect(if i % 2 == 0 { &a } else { &b }).await);
        }
        let mut streams = Vec::new();
        for (i, raw) in (0u8..).zip(&raws) {
            streams.push(hello(raw, if i % 3 == 0 { "Zoe" } else { "zoe" }, i).await);
        }
        let answers = futures_util::future::join_all(streams.iter_mut().map(answer)).await;
        let admitted = answers.iter().filter(|a| a.is_ok()).count();
        assert_eq!(admitted, 1, "{answers:?}");
        for refused in answers.iter().filter_map(|a| a.as_ref().err()) {
            assert_eq!(refused.0, RejectReason::NameTaken, "{refused:?}");
            assert!(refused.1.contains("is taken"), "{refused:?}");
        }
    });
}

#[test]
fn a_member_of_one_node_is_in_the_others_who_and_its_coming_and_going_is_told() {
    let nats = Nats::start();
    let (ha, hb) = (Home::new(), Home::new());
    let a = node(&ha, &nats, None);
    let b = node(&hb, &nats, Some(&ha));
    runtime().block_on(async {
        let (ra, rb) = (Raw::connect(&a).await, Raw::connect(&b).await);
        let mut bob = hello(&rb, "bob", 2).await;
        answer(&mut bob).await.expect("bob joins b");
        let mut alice = hello(&ra, "alice", 1).await;
        answer(&mut alice).await.expect("alice joins a");
        until(
            &mut bob,
            "alice's join",
            |m| matches!(m, ServerMsg::Joined { name } if name == "alice"),
        )
        .await;
        bob.write(&ClientMsg::Who.to_frame())
            .await
            .expect("written");
        let ServerMsg::Members { members } = until(&mut bob, "the list", |m| {
            matches!(m, ServerMsg::Members { .. })
        })
        .await
        else {
            unreachable!()
        };
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["bob", "alice"]);
        alice
            .write(
                &ClientMsg::Bye {
                    reason: "see you".into(),
                }
                .to_frame(),
            )
            .await
            .expect("written");
        until(
            &mut bob,
            "alice's departure",
            |m| matches!(m, ServerMsg::Left { name, .. } if name == "alice"),
        )
        .await;
    });
}
