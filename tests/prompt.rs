//! The first-contact question and the changed-key refusal, on a real
//! pseudo-terminal: `qchat connect` only asks when standard input and
//! standard error are terminals, so pipes cannot test this.
//!
//! The pty has echo off (rexpect's default), so the transcript holds only
//! what qchat wrote. Every wait is bounded by the session timeout.

use std::process::Command;

use rexpect::process::WaitStatus;
use rexpect::session::PtySession;

use crate::util::{join, Home, Server, WAIT};

const QUESTION: &str = "Are you sure you want to continue connecting (yes/no/[fingerprint])? ";
const AGAIN: &str = "Please type 'yes', 'no' or the fingerprint: ";

/// A `qchat` process on a pseudo-terminal.
struct Pty {
    session: PtySession,
    transcript: String,
}

impl Pty {
    fn spawn(cmd: Command) -> Pty {
        let timeout = u64::try_from(WAIT.as_millis()).expect("a timeout in ms");
        let session = rexpect::spawn_with_options(
            cmd,
            rexpect::reader::Options::new().timeout_ms(Some(timeout)),
        )
        .expect("spawn qchat on a pty");
        Pty {
            session,
            transcript: String::new(),
        }
    }

    /// Waits for `needle`; returns what came before it.
    fn expect(&mut self, needle: &str) -> String {
        match self.session.exp_string(needle) {
            Ok(before) => {
                self.transcript.push_str(&before);
                self.transcript.push_str(needle);
                before
            }
            Err(e) => panic!(
                "waiting for {needle:?}: {e}\n--- transcript so far ---\n{}",
                self.transcript
            ),
        }
    }

    fn send_line(&mut self, line: &str) {
        self.session.send_line(line).expect("write to the pty");
    }

    /// Ends input (Ctrl-D on an empty line).
    fn end_input(&mut self) {
        self.session.send_control('d').expect("send ^D");
    }

    /// Waits for the process to exit; returns its status and everything
    /// printed since the last expectation.
    fn finish(mut self) -> (i32, String) {
        let rest = match self.session.exp_eof() {
            Ok(rest) => rest,
            Err(e) => panic!(
                "qchat did not exit: {e}\n--- transcript so far ---\n{}",
                self.transcript
            ),
        };
        self.transcript.push_str(&rest);
        let code = match self.session.process().wait() {
            Ok(WaitStatus::Exited(_, code)) => code,
            other => panic!("qchat ended abnormally: {other:?}\n{}", self.transcript),
        };
        (code, self.transcript)
    }
}

/// `qchat connect` on a pty with no trust flags: the default, `ask`.
fn connect_on_pty(home: &Home, server: &Server, extra: &[&str]) -> Pty {
    let mut cmd = home.command();
    cmd.args(["connect", &server.target(), "--name", "x", "--plain"])
        .args(extra);
    Pty::spawn(cmd)
}

fn fingerprint_as(server_home: &Home, form: &str) -> String {
    let out = server_home
        .command()
        .args(["fingerprint", form])
        .output()
        .expect("run qchat fingerprint");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

fn pins(home: &Home) -> String {
    std::fs::read_to_string(home.known_hosts()).unwrap_or_default()
}

fn pin_line(home: &Home, server: &Server) -> Option<String> {
    pins(home)
        .lines()
        .find(|l| l.starts_with(&format!("{} ", server.target())))
        .map(str::to_string)
}

/// Reads the first-contact text up to the question and checks that it
/// names the server, the address it resolved to, and both fingerprint forms.
fn expect_first_contact(pty: &mut Pty, server: &Server, server_home: &Home) {
    let text = pty.expect(QUESTION);
    let target = server.target();
    assert!(
        text.contains(&format!("The authenticity of server '{target}' ({target})")),
        "{text}"
    );
    assert!(
        text.contains(&format!("Its key fingerprint is {}", server.fingerprint)),
        "{text}"
    );
    let aloud = fingerprint_as(server_home, "--read-aloud");
    assert!(text.contains(&format!("Read aloud: {aloud}")), "{text}");
}

#[test]
fn answering_yes_trusts_on_first_use_and_says_where_the_pin_went() {
    let (hs, hc) = (Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut pty = connect_on_pty(&hc, &server, &[]);
    expect_first_contact(&mut pty, &server, &hs);
    assert!(pin_line(&hc, &server).is_none(), "pinned before the answer");
    pty.send_line("yes");
    let added = pty.expect(&hc.known_hosts().display().to_string());
    assert!(
        added.contains(&format!("permanently added {}", server.target())),
        "{added}"
    );
    pty.expect(&format!(
        "* connected to qchat at {} (trusted on first use) as x",
        server.target()
    ));
    let pin = pin_line(&hc, &server).expect("a pin after yes");
    assert!(
        pin.contains(&server.fingerprint) && pin.ends_with(" tofu"),
        "{pin}"
    );
    pty.end_input();
    let (code, out) = pty.finish();
    assert_eq!(code, 0, "{out}");
}

#[test]
fn answering_no_or_nothing_refuses_and_writes_nothing() {
    let (hs, hc) = (Home::new(), Home::new());
    let server = Server::start(&hs);
    for answer in ["no", ""] {
        let mut pty = connect_on_pty(&hc, &server, &[]);
        expect_first_contact(&mut pty, &server, &hs);
        pty.send_line(answer);
        let (code, out) = pty.finish();
        assert_ne!(code, 0, "answer {answer:?}: {out}");
        assert!(out.contains("did not accept"), "answer {answer:?}: {out}");
        assert!(!out.contains("* connected"), "answer {answer:?}: {out}");
        assert!(
            !pins(&hc).contains("SHA256:"),
            "answer {answer:?} wrote a pin"
        );
    }
}

#[test]
fn pasting_the_fingerprint_in_another_spelling_records_a_verified_pin() {
    let (hs, hc) = (Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut pty = connect_on_pty(&hc, &server, &[]);
    expect_first_contact(&mut pty, &server, &hs);
    // Upper-case hex with colons, surrounded by the blanks a paste brings.
    let hex = fingerprint_as(&hs, "--hex").to_uppercase();
    assert!(hex.contains(':'), "{hex}");
    pty.send_line(&format!("  {hex}  "));
    pty.expect("permanently added");
    pty.expect(&format!(
        "* connected to qchat at {} (verified) as x",
        server.target()
    ));
    let pin = pin_line(&hc, &server).expect("a pin");
    assert!(pin.ends_with(" verified"), "{pin}");
    pty.end_input();
    let (code, out) = pty.finish();
    assert_eq!(code, 0, "{out}");
}

#[test]
fn garbage_is_asked_again_and_a_wrong_fingerprint_is_called_out() {
    let (hs, hc) = (Home::new(), Home::new());
    let server = Server::start(&hs);
    let mut pty = connect_on_pty(&hc, &server, &[]);
    expect_first_contact(&mut pty, &server, &hs);
    pty.send_line("sure, why not");
    pty.expect(AGAIN);
    // "y" is not "yes": accepting a key takes the whole word.
    pty.send_line("y");
    pty.expect(AGAIN);
    pty.send_line("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let said = pty.expect(AGAIN);
    assert!(said.contains("does not match"), "{said}");
    assert!(
        pin_line(&hc, &server).is_none(),
        "pinned while still asking"
    );
    pty.send_line("yes");
    pty.expect("(trusted on first use) as x");
    pty.end_input();
    let (code, out) = pty.finish();
    assert_eq!(code, 0, "{out}");
    assert!(pin_line(&hc, &server).is_some_and(|p| p.ends_with(" tofu")));
}

#[test]
fn a_changed_key_on_a_terminal_is_refused_without_a_question() {
    let (hs1, hs2, hc) = (Home::new(), Home::new(), Home::new());
    let mut first = Server::start(&hs1);
    let mut pinner = join(&hc, &first, "x");
    pinner.close_stdin();
    assert!(pinner.wait().success());
    let before = pins(&hc);
    let port = first.addr.port();
    first.proc.signal("TERM");
    assert!(first.proc.wait().success());
    let second = Server::start_on(&hs2, &format!("127.0.0.1:{port}"), &[]);

    for extra in [
        &[][..],
        &["--accept-new"][..],
        &["--trust", "accept-new"][..],
    ] {
        let mut pty = connect_on_pty(&hc, &second, extra);
        let warning = pty.expect("qchat known-hosts replace");
        assert!(warning.contains("WARNING"), "{warning}");
        assert!(warning.contains("KEY HAS CHANGED"), "{warning}");
        assert!(warning.contains("man-in-the-middle"), "{warning}");
        assert!(warning.contains(&first.fingerprint), "{warning}");
        assert!(warning.contains(&second.fingerprint), "{warning}");
        assert!(
            warning.contains(&format!("{}:3", hc.known_hosts().display())),
            "the warning names the pin's file and line: {warning}"
        );
        assert!(warning.contains("trusted on first use"), "{warning}");
        // Whatever is typed now changes nothing.
        let _ = pty.session.send_line("yes");
        let (code, out) = pty.finish();
        assert_ne!(code, 0, "{extra:?}: {out}");
        assert!(!out.contains("(yes/no"), "{extra:?} asked: {out}");
        assert!(!out.contains("* connected"), "{extra:?}: {out}");
        assert_eq!(pins(&hc), before, "{extra:?} changed the pin file");
    }
}

#[test]
fn the_name_prompt_offers_the_login_name_and_asks_again_when_it_is_taken() {
    let (hs, ha, hb) = (Home::new(), Home::new(), Home::new());
    let server = Server::start(&hs);
    let _alice = join(&ha, &server, "alice");
    let mut cmd = hb.command();
    cmd.env("USER", "alice")
        .args(["connect", &server.target(), "--plain", "--accept-new"]);
    let mut pty = Pty::spawn(cmd);
    pty.expect("Your name [alice]: ");
    pty.send_line("");
    pty.expect(&format!("connecting to {}", server.target()));
    // alice is here already: the question comes again, not an exit.
    let refusal = pty.expect("Your name [alice]: ");
    assert!(refusal.contains("taken"), "{refusal}");
    pty.send_line("alina");
    pty.expect(&format!(
        "* connected to qchat at {} (trusted on first use) as alina",
        server.target()
    ));
    pty.end_input();
    let (code, transcript) = pty.finish();
    assert_eq!(code, 0, "{transcript}");
    // Trusted once: the second connection did not ask or add the pin again.
    assert_eq!(
        transcript.matches("permanently added").count(),
        1,
        "{transcript}"
    );
}

/// The question never races the server's hello deadline: the first
/// connection is closed while the person decides, and the client joins on
/// a new one with the pin just stored. The wait is the point of the test;
/// the server's deadline is shortened so that the wait can be short too.
#[test]
fn a_slow_yes_still_joins() {
    let (hs, hc, ha) = (Home::new(), Home::new(), Home::new());
    let server = Server::start_on(&hs, "127.0.0.1:0", &["--hello-timeout", "1"]);
    let mut alice = join(&ha, &server, "alice");
    let mut pty = connect_on_pty(&hc, &server, &[]);
    expect_first_contact(&mut pty, &server, &hs);
    // Three times the server's deadline.
    std::thread::sleep(std::time::Duration::from_secs(3));
    pty.send_line("yes");
    pty.expect("permanently added");
    pty.expect(&format!(
        "* connected to qchat at {} (trusted on first use) as x",
        server.target()
    ));
    alice.expect_out("* x joined");
    pty.send_line("made it");
    alice.expect_out("<x> made it");
    pty.end_input();
    let (code, out) = pty.finish();
    assert_eq!(code, 0, "{out}");
}
