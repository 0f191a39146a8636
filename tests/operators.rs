//! Operators and bans by key: a key given with `serve --operator` (as
//! `qchat fingerprint --mine` prints it in that person's home) may kick and
//! ban, anyone else is refused; a banned key is refused at the hello with
//! the reason, under any name and after a restart, until `/unban`; a
//! banned guest's address is refused; `/op` and `/deop` last across
//! restarts, and chat cannot deop or ban an `--operator` key.

use crate::util::{connect, join, Home, Proc, Server, Stream};

/// What `qchat fingerprint --mine` (plus `extra`) prints in `home`; it
/// makes the key if there is none yet.
fn my_fingerprint(home: &Home, extra: &[&str]) -> String {
    let out = home
        .command()
        .args(["fingerprint", "--mine"])
        .args(extra)
        .output()
        .expect("run qchat fingerprint --mine");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// Connects and expects a refusal on stderr containing `needle`.
fn refused(home: &Home, server: &Server, name: &str, extra: &[&str], needle: &str) -> String {
    let mut args = vec!["--accept-new"];
    args.extend_from_slice(extra);
    let mut p = connect(home, &server.target(), name, &args);
    let line = p.expect_err_contains(needle);
    assert!(!p.wait().success(), "{name}: {}", p.transcript());
    line
}

/// Stops the server with SIGTERM and starts it again on the same home and
/// address.
fn restart(server: Server, home: &Home, extra: &[&str]) -> Server {
    let addr = server.target();
    let mut proc = server.proc;
    proc.signal("TERM");
    assert!(proc.wait().success(), "{}", proc.transcript());
    Server::start_on(home, &addr, extra)
}

/// Waits for `p`'s notice containing `needle`.
fn notice(p: &mut Proc, needle: &str) -> String {
    p.expect(Stream::Out, needle, |l| {
        l.starts_with("* notice: ") && l.contains(needle)
    })
}

#[test]
fn an_operator_key_kicks_and_bans_and_the_ban_outlives_a_restart() {
    let (hs, hc, hm, hb, hg) = (
        Home::new(),
        Home::new(),
        Home::new(),
        Home::new(),
        Home::new(),
    );
    // Any spelling of the fingerprint will do: here, read aloud.
    let carol_fp = my_fingerprint(&hc, &["--read-aloud"]);
    let flags = ["--operator", carol_fp.as_str()];
    let mut server = Server::start_on(&hs, "127.0.0.1:0", &flags);
    let mut carol = join(&hc, &server, "carol");
    let mut mallory = join(&hm, &server, "mallory");
    let mut bob = join(&hb, &server, "bob");

    // A member without operator rights is refused, with why.
    bob.send_line("/kick mallory");
    bob.expect_err_contains("/kick failed: only operators can kick");
    bob.send_line("/ban mallory");
    bob.expect_err_contains("/ban failed: only operators may use /ban");

    // The --operator key kicks...
    carol.send_line("/kick bob too loud");
    let line = bob.expect(Stream::Out, "the kick", |l| {
        l.starts_with("* kicked by carol")
    });
    assert!(line.contains("too loud"), "{line}");
    bob.wait();

    // ...and bans: the member is put out with the reason.
    carol.send_line("/ban mallory spamming links");
    let line = mallory.expect(Stream::Out, "the ban", |l| {
        l.starts_with("* kicked by carol")
    });
    assert!(
        line.contains("banned") && line.contains("spamming links"),
        "{line}"
    );
    mallory.wait();
    notice(&mut carol, "banned mallory (1 key)");

    // The key is refused at the hello with the reason, under any name.
    let line = refused(&hm, &server, "mallory", &[], "banned");
    assert!(
        line.contains("spamming links") && line.contains("carol"),
        "{line}"
    );
    refused(&hm, &server, "mal2", &[], "your key is banned");

    carol.send_line("/bans");
    let line = carol.expect(Stream::Out, "the ban list", |l| {
        l.starts_with("* bans (1):")
    });
    let mallory_fp = my_fingerprint(&hm, &[]);
    assert!(line.contains(&mallory_fp), "{line}");
    assert!(
        line.contains("banned by carol") && line.contains("spamming links"),
        "{line}"
    );

    // A guest has no key: its address is banned, for a while.
    let mut gus = connect(&hg, &server.target(), "gus", &["--accept-new", "--guest"]);
    gus.expect(Stream::Out, "the connected line", |l| {
        l.starts_with("* connected to ")
    });
    carol.send_line("/ban gus");
    gus.expect(Stream::Out, "the ban", |l| {
        l.starts_with("* kicked by carol")
    });
    gus.wait();
    notice(&mut carol, "banned the guest gus's address");
    let line = refused(&hg, &server, "gus2", &["--guest"], "your address is banned");
    assert!(line.contains("until"), "{line}");
    carol.send_line("/unban gus");
    notice(&mut carol, "unbanned the address");
    let mut gus = connect(&hg, &server.target(), "gus", &["--accept-new", "--guest"]);
    gus.expect(Stream::Out, "the connected line", |l| {
        l.starts_with("* connected to ")
    });
    gus.close_stdin();
    gus.wait();

    carol.close_stdin();
    carol.wait();

    // The key ban is stored: after a restart it still holds.
    server = restart(server, &hs, &flags);
    let line = refused(&hm, &server, "mallory", &[], "banned");
    assert!(line.contains("spamming links"), "{line}");

    // Lifted (here by the key's fingerprint), the key is let back in.
    let mut carol = join(&hc, &server, "carol");
    carol.send_line(&format!("/unban {mallory_fp}"));
    notice(&mut carol, "unbanned mallory");
    let mut mallory = join(&hm, &server, "mallory");
    mallory.close_stdin();
    assert!(mallory.wait().success(), "{}", mallory.transcript());
    carol.send_line("/bans");
    carol.expect(Stream::Out, "no bans", |l| l.starts_with("* bans: none"));
    carol.close_stdin();
    carol.wait();
}

#[test]
fn op_and_deop_last_across_restarts_and_settings_operators_stay() {
    let (hs, hc, hb, hd) = (Home::new(), Home::new(), Home::new(), Home::new());
    let carol_fp = my_fingerprint(&hc, &[]);
    let flags = ["--operator", carol_fp.as_str()];
    let mut server = Server::start_on(&hs, "127.0.0.1:0", &flags);
    let mut carol = join(&hc, &server, "carol");
    let mut bob = join(&hb, &server, "bob");

    carol.send_line("/op bob");
    notice(&mut carol, "bob is now an operator");
    notice(&mut bob, "carol made you an operator");

    // An operator made in chat cannot take away what the settings gave.
    bob.send_line("/deop carol");
    bob.expect_err_contains("/deop failed: carol is an operator by the server's settings");
    bob.send_line("/ban carol");
    bob.expect_err_contains("cannot be banned");
    // Nor can an operator be banned before it is deopped.
    carol.send_line("/ban bob");
    carol.expect_err_contains("/ban failed: bob is an operator");
    for mut p in [bob, carol] {
        p.close_stdin();
        p.wait();
    }

    // After a restart bob is still an operator: he can kick.
    server = restart(server, &hs, &flags);
    let mut bob = join(&hb, &server, "bob");
    let mut dave = join(&hd, &server, "dave");
    bob.send_line("/kick dave");
    dave.expect(Stream::Out, "the kick", |l| {
        l.starts_with("* kicked by bob")
    });
    dave.wait();

    let mut carol = join(&hc, &server, "carol");
    carol.send_line("/deop bob");
    notice(&mut carol, "bob is no longer an operator");
    // At once: bob's next kick is refused...
    bob.send_line("/kick carol");
    bob.expect_err_contains("/kick failed: only operators can kick");
    bob.close_stdin();
    bob.wait();
    carol.close_stdin();
    carol.wait();

    // ...and after a restart too.
    server = restart(server, &hs, &flags);
    let mut bob = join(&hb, &server, "bob");
    bob.send_line("/bans");
    bob.expect_err_contains("/bans failed: only operators");
    bob.close_stdin();
    bob.wait();
    drop(server);
}
