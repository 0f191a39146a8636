//! The server's hello handling without the network: a frame body as the
//! first message on a stream, decoded, and if it is a hello, its name run
//! through the name rules and the terminal sanitiser the way the server
//! does before logging or announcing it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qchat_proto::{names, text, ClientMsg};

fuzz_target!(|body: &[u8]| {
    let Ok(msg) = ClientMsg::decode(body) else {
        return;
    };
    // Whatever was accepted re-encodes to a message that decodes to the
    // same thing. (Not byte for byte: postcard accepts overlong varints,
    // which docs/PROTOCOL.md forbids; see docs/SECURITY.md, "Fuzzing".)
    let frame = msg.to_frame();
    assert_eq!(ClientMsg::decode(&frame[4..]).as_ref(), Ok(&msg));

    if let ClientMsg::Hello { name, .. } = msg {
        let safe = text::sanitize(&name);
        assert!(!safe
            .chars()
            .any(|c| c.is_control() || text::is_bidi_control(c) || text::is_invisible(c)));
        if names::validate(&name).is_ok() {
            // An accepted name needs no sanitising: what others see is
            // exactly what was chosen.
            assert_eq!(safe, name.as_str());
            assert!(
                !name.is_empty() && name.chars().count() <= qchat_proto::limits::MAX_NAME_CHARS
            );
            let _ = names::fold(&name);
        }
    }
});
