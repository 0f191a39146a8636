//! The full-screen interface, end to end: the real binary on a
//! pseudo-terminal, its output fed into an in-memory terminal emulator
//! (`vt100`) so the tests read the screen a person would see. Other members
//! are plain-mode processes from the usual harness. Every wait polls the
//! screen until a condition holds or `util::WAIT` passes.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rexpect::process::{PtyProcess, WaitStatus};

use crate::util::{self, Home, Stream, WAIT};

const ROWS: u16 = 30;
const COLS: u16 = 100;

/// What the pty has shown so far.
struct Output {
    parser: vt100::Parser,
    raw: Vec<u8>,
    closed: bool,
}

/// `qchat` running on a pseudo-terminal.
struct Tui {
    label: String,
    cols: u16,
    process: PtyProcess,
    writer: std::fs::File,
    out: Arc<Mutex<Output>>,
}

impl Tui {
    /// Runs `qchat ARGS` on a ROWS×COLS pty. With `report`, a shell stays
    /// behind it and prints `[exit=N]` and the terminal settings (`stty
    /// -a`) once qchat has exited, to show what qchat left behind.
    fn spawn(label: &str, home: &Home, args: &[&str], report: bool) -> Tui {
        Tui::spawn_sized(label, home, args, report, (ROWS, COLS))
    }

    /// [`Tui::spawn`] on a terminal of another size.
    fn spawn_sized(
        label: &str,
        home: &Home,
        args: &[&str],
        report: bool,
        (rows, cols): (u16, u16),
    ) -> Tui {
        let script = if report {
            format!(r#"stty rows {rows} cols {cols} && "$@"; echo "[exit=$?]"; stty -a"#)
        } else {
            format!(r#"stty rows {rows} cols {cols} && exec "$@""#)
        };
        let mut cmd = std::process::Command::new("sh");
        cmd.env_clear()
            .env("QCHAT_HOME", home.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TERM", "xterm-256color")
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .args(["-c", &script, "sh", util::bin()])
            .args(args);
        let mut process = PtyProcess::new(cmd).expect("start on a pty");
        process.set_kill_timeout(Some(5_000));
        let mut reader = process.get_file_handle().expect("pty reader");
        let writer = process.get_file_handle().expect("pty writer");
        let out = Arc::new(Mutex::new(Output {
            parser: vt100::Parser::new(rows, cols, 0),
            raw: Vec::new(),
            closed: false,
        }));
        let sink = Arc::clone(&out);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                // EIO once every process on the pty has gone.
                let n = match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut o = sink.lock().expect("lock");
                o.parser.process(&buf[..n]);
                o.raw.extend_from_slice(&buf[..n]);
            }
            sink.lock().expect("lock").closed = true;
        });
        Tui {
            label: label.to_string(),
            cols,
            process,
            writer,
            out,
        }
    }

    /// The screen, one string per row.
    fn rows(&self) -> Vec<String> {
        let o = self.out.lock().expect("lock");
        o.parser.screen().rows(0, self.cols).collect()
    }

    fn screen(&self) -> String {
        self.rows().join("\n")
    }

    /// Polls the screen until `pred` holds.
    fn wait_for(&self, what: &str, pred: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let rows = self.rows();
            if pred(&rows) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: timed out waiting for {what}\n--- screen ---\n{}",
                    self.label,
                    rows.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until some row contains `needle`.
    fn wait_text(&self, needle: &str) {
        self.wait_for(&format!("{needle:?} on the screen"), |rows| {
            rows.iter().any(|r| r.contains(needle))
        });
    }

    /// Types raw bytes, as the keyboard would send them.
    fn type_keys(&mut self, keys: &str) {
        self.writer.write_all(keys.as_bytes()).expect("type");
        self.writer.flush().expect("flush");
    }

    /// The input line (the bottom row).
    fn input_row(&self) -> String {
        self.rows().last().cloned().unwrap_or_default()
    }

    /// Waits for the process to exit; its exit code.
    fn exit_code(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.process.status() {
                Some(WaitStatus::Exited(_, code)) => return code,
                Some(WaitStatus::StillAlive) | None => {}
                Some(other) => panic!("{}: ended by {other:?}", self.label),
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: did not exit\n--- screen ---\n{}",
                    self.label,
                    self.screen()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the pty is closed by everything on it; all bytes.
    fn raw_until_closed(&self) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let o = self.out.lock().expect("lock");
                if o.closed {
                    return o.raw.clone();
                }
            }
            if Instant::now() > deadline {
                panic!("{}: the pty stayed open\n{}", self.label, self.screen());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `qchat connect` in the full-screen interface, joined.
fn connect_tui(home: &Home, server: &util::Server, name: &str, report: bool) -> Tui {
    let target = server.target();
    let t = Tui::spawn(
        name,
        home,
        &["connect", &target, "--name", name, "--accept-new"],
        report,
    );
    t.wait_text("in the room:");
    t
}

#[test]
fn typing_survives_incoming_messages() {
    let (sh, ah, bh) = (Home::new(), Home::new(), Home::new());
    let server = util::Server::start(&sh);
    let mut alice = util::join(&ah, &server, "alice");
    let mut bob = connect_tui(&bh, &server, "bob", false);
    bob.wait_text("alice");
    bob.type_keys("half a tho");
    bob.wait_for("the typed text", |rows| {
        rows.last().is_some_and(|r| r.starts_with("> half a tho"))
    });
    for i in 0..5 {
        alice.send_line(&format!("interruption {i}"));
    }
    bob.wait_text("<alice> interruption 4");
    assert!(
        bob.input_row().starts_with("> half a tho"),
        "the input line changed:\n{}",
        bob.screen()
    );
    bob.type_keys("ught\r");
    alice.expect_out("<bob> half a thought");
    bob.wait_for("the input line to clear", |rows| {
        rows.last().is_some_and(|r| r.trim_end() == ">")
    });
    bob.wait_text("<bob> half a thought");
}

#[test]
fn a_private_message_reaches_only_its_target() {
    let (sh, ah, ch, bh) = (Home::new(), Home::new(), Home::new(), Home::new());
    let server = util::Server::start(&sh);
    let mut alice = util::join(&ah, &server, "alice");
    let mut carol = util::join(&ch, &server, "carol");
    let mut bob = connect_tui(&bh, &server, "bob", false);
    carol.expect_out("* bob joined");
    bob.type_keys("/msg alice secret words\r");
    alice.expect_out("[bob -> alice] secret words");
    bob.wait_text("[private bob → alice] secret words");
    // /msg opened the conversation with alice; Alt-1 is the room again.
    // Bob's messages reach carol in order: once she has the next one, she
    // would have had the private one too.
    bob.type_keys("\x1b1");
    bob.wait_for("the room on the screen", |rows| {
        !rows.iter().any(|r| r.contains("secret words"))
    });
    bob.type_keys("after\r");
    carol.expect_out("<bob> after");
    let seen = carol.stdout_so_far();
    assert!(
        !seen.iter().any(|l| l.contains("secret")),
        "carol saw it: {seen:?}"
    );
}

#[test]
fn a_new_nick_is_announced() {
    let (sh, ah, bh) = (Home::new(), Home::new(), Home::new());
    let server = util::Server::start(&sh);
    let mut alice = util::join(&ah, &server, "alice");
    let mut bob = connect_tui(&bh, &server, "bob", false);
    bob.type_keys("/nick robert\r");
    alice.expect_out("* bob is now known as robert");
    bob.wait_text("you are now known as robert");
    bob.wait_text("as robert");
}

#[test]
fn history_is_marked_on_join() {
    let (sh, ah, bh) = (Home::new(), Home::new(), Home::new());
    let server = util::Server::start(&sh);
    let mut alice = util::join(&ah, &server, "alice");
    alice.send_line("said before bob came");
    // At end of input plain mode leaves only once the server confirmed
    // every line, so the line is in the room's history now.
    alice.close_stdin();
    assert!(alice.wait().success(), "{}", alice.transcript());
    let bob = connect_tui(&bh, &server, "bob", false);
    bob.wait_text("[history] <alice> said before bob came");
}

#[test]
fn the_operator_kicks_a_member() {
    let (sh, bh) = (Home::new(), Home::new());
    let mut host = spawn_host(&sh);
    // How to connect is in the host's view, not hidden behind it.
    let target = connect_target(&host);
    let mut bob = util::join_target(&bh, &target, "bob");
    host.wait_text("* bob joined");
    host.type_keys("/kick bob spam\r");
    bob.expect_out("* kicked by host: spam");
    assert_eq!(bob.wait().code(), Some(3), "{}", bob.transcript());
    host.wait_text("* bob left (kicked by host: spam)");
    // Joins and leaves are said once, in words, not as log lines.
    let screen = host.screen();
    assert_eq!(screen.matches("bob joined").count(), 1, "{screen}");
    assert!(!screen.contains("peer="), "{screen}");
    // The operator quitting stops the server.
    host.type_keys("/quit\r");
    assert_eq!(host.exit_code(), 0, "{}", host.screen());
}

#[test]
fn ctrl_c_restores_the_terminal() {
    let (sh, bh) = (Home::new(), Home::new());
    let server = util::Server::start(&sh);
    let mut bob = connect_tui(&bh, &server, "bob", true);
    bob.type_keys("unsent");
    bob.wait_text("> unsent");
    // The first Ctrl-C takes back what was typed; the second leaves.
    bob.type_keys("\x03");
    bob.wait_for("the input cleared", |rows| {
        !rows.iter().any(|r| r.contains("> unsent"))
    });
    bob.type_keys("\x03");
    bob.wait_text("[exit=0]");
    let raw = bob.raw_until_closed();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let qchat_part = &text[..text.find("[exit=").expect("exit line")];
    // The alternate screen was entered and, as the very last thing qchat
    // wrote, left.
    assert!(qchat_part.contains("\x1b[?1049h"), "never entered");
    // The window title was saved on the terminal's stack, ours set, and
    // the saved one brought back on the way out.
    let (push, pop) = ("\x1b[22;0t", "\x1b[23;0t");
    let title = qchat_part.find("\x1b]0;qchat — ").expect("our title");
    assert!(
        qchat_part.find(push).is_some_and(|at| at < title),
        "title saved"
    );
    assert!(
        qchat_part.rfind(pop).is_some_and(|at| at > title),
        "title restored"
    );
    assert!(
        qchat_part.trim_end().ends_with("\x1b[?1049l"),
        "did not end by leaving the alternate screen: {:?}",
        &qchat_part[qchat_part.len().saturating_sub(80)..]
    );
    let o = bob.out.lock().expect("lock");
    assert!(!o.parser.screen().alternate_screen());
    assert!(!o.parser.screen().bracketed_paste());
    drop(o);
    // Raw mode is off: the line discipline is canonical again with signals.
    let stty = &text[text.find("[exit=").unwrap_or(0)..];
    let flags: Vec<&str> = stty.split_whitespace().collect();
    assert!(
        flags.contains(&"icanon") && flags.contains(&"isig"),
        "terminal still raw: {stty}"
    );
}

#[test]
fn a_pasted_block_waits_for_enter_and_is_one_message() {
    let (sh, ah, bh) = (Home::new(), Home::new(), Home::new());
    let server = util::Server::start(&sh);
    let mut alice = util::join(&ah, &server, "alice");
    let mut bob = connect_tui(&bh, &server, "bob", false);
    // A bracketed paste, as a terminal sends it.
    bob.type_keys("\x1b[200~line one\r\nline two\r\n\x1b[201~");
    bob.wait_text("> line one⏎line two");
    // Something typed after the paste proves the paste itself sent
    // nothing: alice gets the block only when Enter is pressed.
    bob.type_keys("!\r");
    alice.expect_out("<bob> line one");
    // One message with its lines: the continuation is indented.
    alice.expect_out("  line two!");
    let seen = alice.stdout_so_far();
    let first = seen
        .iter()
        .position(|l| l.starts_with("<bob>"))
        .expect("bob's lines");
    assert_eq!(seen[first..], ["<bob> line one", "  line two!"]);
}

/// `qchat serve` as the operator "host" in the full-screen view, on a port
/// of its choosing.
fn spawn_host(home: &Home) -> Tui {
    Tui::spawn(
        "host",
        home,
        &["serve", "--listen", "127.0.0.1:0", "--name", "host"],
        false,
    )
}

/// The first `qchat connect ADDR` address on the host's screen.
fn connect_target(host: &Tui) -> String {
    host.wait_text("in the room: host");
    host.screen()
        .split("qchat connect ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a connect line")
        .to_string()
}

#[test]
fn the_host_sees_how_to_connect_and_is_asked_before_ctrl_c_stops_the_server() {
    let (sh, bh) = (Home::new(), Home::new());
    let mut host = spawn_host(&sh);
    host.wait_text("others connect with:");
    let target = connect_target(&host);
    host.type_keys("\x03");
    host.wait_text("press Ctrl-C again to shut the server down for everyone");
    // Still serving: someone can join.
    let mut bob = util::join_target(&bh, &target, "bob");
    host.wait_text("* bob joined");
    // Any other key cancels; then two presses stop the server.
    host.type_keys("x\x7f\x03");
    host.wait_for("a second question", |rows| {
        rows.iter()
            .filter(|r| r.contains("press Ctrl-C again"))
            .count()
            == 2
    });
    host.type_keys("\x03");
    bob.expect(Stream::Out, "the shutdown notice", |l| {
        l.starts_with("* server shutting down")
    });
    assert_eq!(host.exit_code(), 0, "{}", host.screen());
}

#[test]
fn fingerprint_shows_a_member_the_key_and_its_trust() {
    let (sh, bh) = (Home::new(), Home::new());
    let server = util::Server::start(&sh);
    let mut bob = connect_tui(&bh, &server, "bob", false);
    bob.type_keys("/fingerprint\r");
    bob.wait_text(&format!("fingerprint: {}", server.fingerprint));
    bob.wait_text("trust: trusted on first use");
}

#[test]
fn own_lines_keep_their_name_and_an_emoji_its_modifier() {
    let (sh, ah, bh) = (Home::new(), Home::new(), Home::new());
    let server = util::Server::start(&sh);
    let mut alice = util::join(&ah, &server, "alice");
    let mut bob = connect_tui(&bh, &server, "bob", false);
    bob.type_keys("thumbs 👍🏽\r");
    alice.expect_out("<bob> thumbs 👍🏽");
    bob.wait_text("<bob> thumbs 👍🏽");
    bob.type_keys("/nick robert\r");
    bob.wait_text("you are now known as robert");
    bob.type_keys("again\r");
    bob.wait_text("<robert> again");
    // The earlier line still says who sent it.
    bob.wait_text("<bob> thumbs 👍🏽");
}

#[test]
fn a_narrow_status_line_keeps_the_connection_and_trust_state() {
    let (sh, bh) = (Home::new(), Home::new());
    let server = util::Server::start(&sh);
    let target = server.target();
    let bob = Tui::spawn_sized(
        "bob",
        &bh,
        &["connect", &target, "--name", "bob", "--accept-new"],
        false,
        (12, 30),
    );
    bob.wait_for("the status line", |rows| {
        rows.iter()
            .any(|r| r.contains("unverified") && r.contains("connected"))
    });
}

#[test]
fn the_hosts_quit_reason_reaches_members_in_every_interface() {
    let (sh, bh, ch) = (Home::new(), Home::new(), Home::new());
    let mut host = spawn_host(&sh);
    host.wait_text("others connect with:");
    let target = connect_target(&host);
    let mut carol = util::join_target(&ch, &target, "carol");
    // bob in the full-screen view, with a shell behind him to keep the
    // normal screen readable after he has gone.
    let bob = Tui::spawn(
        "bob",
        &bh,
        &["connect", &target, "--name", "bob", "--accept-new"],
        true,
    );
    bob.wait_text("in the room:");
    host.wait_text("* bob joined");
    host.type_keys("/quit closing time\r");
    carol.expect_out("* host left (closing time)");
    carol.expect_out("* server shutting down: closing time");
    // The view closes with the session; the reason stays on the screen.
    bob.wait_text("[exit=");
    bob.wait_text("qchat: server shutting down: closing time");
    assert_eq!(host.exit_code(), 0, "{}", host.screen());
}

#[test]
fn a_pasted_block_is_one_message_shown_indented() {
    let (sh, ah, bh) = (Home::new(), Home::new(), Home::new());
    let server = util::Server::start(&sh);
    let mut alice = util::join(&ah, &server, "alice");
    let mut bob = connect_tui(&bh, &server, "bob", false);
    // A bracketed paste, as a terminal sends one, then Enter.
    bob.type_keys("\x1b[200~first line\r\nsecond line\r\nthird line\x1b[201~");
    bob.wait_for("the block in the input", |rows| {
        rows.iter().any(|r| r.contains("third line"))
    });
    bob.type_keys("\r");
    alice.expect_out("<bob> first line");
    alice.expect_out("  second line");
    alice.expect_out("  third line");
    // One message, not three: the next line is a new message.
    bob.type_keys("after\r");
    alice.expect_out("<bob> after");
    // In the view, the continuation lines sit under the text.
    // (The scrollback starts after the conversation list's border.)
    bob.wait_for("the block indented under its author", |rows| {
        let at = rows.iter().position(|r| r.contains("<bob> first line"));
        at.is_some_and(|i| {
            rows.get(i + 1)
                .is_some_and(|r| r.contains("│      second line"))
                && rows
                    .get(i + 2)
                    .is_some_and(|r| r.contains("│      third line"))
        })
    });
}

#[test]
fn a_150_line_paste_arrives_whole_and_nobody_is_disconnected() {
    let (sh, ah, bh) = (Home::new(), Home::new(), Home::new());
    let server = util::Server::start(&sh);
    let mut alice = util::join(&ah, &server, "alice");
    let mut bob = connect_tui(&bh, &server, "bob", false);
    // 150 lines of 40 bytes: more than one message may hold, so it goes
    // as a few, split between lines.
    let lines: Vec<String> = (1..=150)
        .map(|i| format!("pasted line {i:03} of a long block......"))
        .collect();
    bob.type_keys(&format!("\x1b[200~{}\x1b[201~", lines.join("\r\n")));
    bob.wait_text("pasted line 150");
    bob.type_keys("\r");
    alice.expect(Stream::Out, "the last pasted line", |l| {
        l.ends_with("pasted line 150 of a long block......")
    });
    bob.type_keys("still here\r");
    alice.expect_out("<bob> still here");
    let seen = alice.stdout_so_far();
    let got: Vec<&str> = seen
        .iter()
        .filter_map(|l| {
            l.strip_prefix("<bob> ")
                .or_else(|| l.strip_prefix("  "))
                .filter(|t| t.starts_with("pasted line"))
        })
        .collect();
    assert_eq!(got, lines, "{seen:?}");
    // A few messages, not 150.
    let messages = seen
        .iter()
        .filter(|l| l.starts_with("<bob> pasted line"))
        .count();
    assert!((2..=3).contains(&messages), "{messages} messages: {seen:?}");
    assert!(!seen.iter().any(|l| l.contains("bob left")), "{seen:?}");
}

#[test]
fn a_private_message_waits_in_its_conversation_with_an_unread_count() {
    let (sh, ah, bh) = (Home::new(), Home::new(), Home::new());
    let server = util::Server::start(&sh);
    let mut alice = util::join(&ah, &server, "alice");
    let mut bob = connect_tui(&bh, &server, "bob", false);
    alice.expect_out("* bob joined");
    alice.send_line("/msg bob psst");
    alice.send_line("/msg bob bob, are you there?");
    // Bob looks at the lobby: the conversation with alice is listed (on
    // the left) with its two unread messages and the mention mark, and
    // its lines are not in the lobby's scrollback.
    bob.wait_for("alice's conversation with 2 unread", |rows| {
        rows.iter().any(|r| r.starts_with("2 @alice 2 !"))
    });
    assert!(!bob.screen().contains("psst"), "{}", bob.screen());
    // The terminal's title counts them.
    let title = format!("\x1b]0;(2) qchat — {}\x07", server.target());
    bob.wait_for("the unread count in the title", |_| {
        String::from_utf8_lossy(&bob.out.lock().expect("lock").raw).contains(&title)
    });
    // Alt-2 shows the conversation; nothing is unread any more.
    bob.type_keys("\x1b2");
    bob.wait_text("[private alice → bob] bob, are you there?");
    bob.wait_for("the count gone", |rows| {
        rows.iter().any(|r| r.starts_with("2 @alice   "))
    });
    // Typing here answers alice, privately.
    bob.type_keys("right here\r");
    alice.expect_out("[bob -> alice] right here");
    // A click on the lobby's entry (row 1, column 2) goes back to it.
    bob.type_keys("\x1b[<0;2;1M\x1b[<0;2;1m");
    bob.wait_for("the lobby again", |rows| {
        !rows.iter().any(|r| r.contains("right here"))
    });
    bob.type_keys("to everyone\r");
    alice.expect_out("<bob> to everyone");
}

#[test]
fn a_room_is_a_conversation_of_its_own() {
    let (sh, ah, bh) = (Home::new(), Home::new(), Home::new());
    let server = util::Server::start(&sh);
    let mut bob = util::join(&bh, &server, "bob");
    let mut alice = connect_tui(&ah, &server, "alice", false);
    bob.expect_out("* alice joined");
    // /join puts the room on the screen once the server has said so.
    alice.type_keys("/join #dev\r");
    alice.wait_text("you joined #dev (1 member: alice), you are its operator");
    alice.wait_for("#dev in the list", |rows| {
        rows.iter().any(|r| r.starts_with("2 #dev "))
    });
    bob.send_line("/join #dev");
    bob.expect(Stream::Out, "bob's join", |l| {
        l.starts_with("* you joined #dev (2 members")
    });
    alice.wait_text("bob joined");
    // Away in the lobby, bob's line waits in #dev, counted.
    alice.type_keys("\x1b1");
    alice.wait_for("the lobby on the screen", |rows| {
        !rows.iter().any(|r| r.contains("you joined #dev"))
    });
    bob.send_line("hello from bob");
    alice.wait_for("#dev with 1 unread", |rows| {
        rows.iter().any(|r| r.starts_with("2 #dev 1 "))
    });
    assert!(
        !alice.screen().contains("hello from bob"),
        "{}",
        alice.screen()
    );
    // There: the line without its room before it, nothing unread.
    alice.type_keys("\x1b2");
    alice.wait_text("<bob> hello from bob");
    alice.wait_for("the count gone", |rows| {
        rows.iter().any(|r| r.starts_with("2 #dev   "))
    });
    assert!(!alice.screen().contains("#dev <bob>"), "{}", alice.screen());
    // What alice types here goes to the room.
    alice.type_keys("hi bob\r");
    bob.expect_out("#dev <alice> hi bob");
    // /part leaves it listed as left, and typing there is refused.
    alice.type_keys("/part\r");
    bob.expect_out("* #dev alice left");
    alice.wait_text("2 #dev (left)");
    alice.type_keys("still here?\r");
    alice.wait_text("not sent: you are no longer in #dev");
}
