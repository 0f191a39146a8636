//! `qchat serve`'s settings file: precedence (flag over file over default),
//! errors that name the file, line and key and keep the server from
//! starting, `--check-config`, and the file's values reaching members.

use std::path::{Path, PathBuf};
use std::process::Output;

use qchat_proto::{ClientMsg, ServerMsg};

use crate::raw::{runtime, Raw};
use crate::util::{Home, Server};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the settings file");
    path
}

fn run(home: &Home, args: &[&str]) -> Output {
    home.command()
        .arg("serve")
        .args(args)
        .output()
        .expect("run qchat serve")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The `--check-config` line for `key`.
fn line_for(out: &str, key: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no line for {key} in:\n{out}"))
        .to_string()
}

#[test]
fn flags_override_the_file_which_overrides_the_defaults() {
    let home = Home::new();
    write(
        home.path(),
        "server.toml",
        "# the room\nrate = 7\nburst = 9\nname = \"lobby\"\nheadless = true\n",
    );
    let o = run(&home, &["--check-config", "--burst", "4"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.contains("server.toml"), "{out}");
    assert_eq!(line_for(&out, "rate"), "rate = 7  # file, line 2");
    assert_eq!(line_for(&out, "burst"), "burst = 4  # flag");
    assert_eq!(line_for(&out, "name"), "name = \"lobby\"  # file, line 4");
    assert_eq!(
        line_for(&out, "headless"),
        "headless = true  # file, line 5"
    );
    assert_eq!(line_for(&out, "backlog"), "backlog = 100  # default");

    // --config names another file; $QCHAT_HOME/server.toml is then not read.
    let other = tempfile::tempdir().expect("temp dir");
    let file = write(other.path(), "chat.toml", "history = 3\n");
    let file = file.to_str().expect("a UTF-8 temp path");
    let o = run(&home, &["--check-config", "--config", file]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert_eq!(line_for(&out, "history"), "history = 3  # file, line 1");
    assert_eq!(line_for(&out, "rate"), "rate = 5  # default");
}

#[test]
fn without_a_file_everything_is_a_default_or_a_flag() {
    let home = Home::new();
    let o = run(&home, &["--check-config", "--rate", "2"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.contains("# settings file: none"), "{out}");
    assert_eq!(line_for(&out, "rate"), "rate = 2  # flag");
    assert_eq!(
        line_for(&out, "listen"),
        "listen = \"[::]:8080\"  # default"
    );
}

#[test]
fn a_bad_file_names_file_line_and_key_and_nothing_starts() {
    let home = Home::new();
    let cases = [
        ("rate = 5\n\nrat = 6\n", 3, "rat", "unknown key"),
        ("burst = \"lots\"\n", 1, "burst", "whole number"),
        ("# limits\nburst = 0\n", 2, "burst", "not in 1..=1000000"),
        ("listen = \"nowhere\"\n", 1, "listen", "invalid value"),
        ("headless = 1\n", 1, "headless", "true or false"),
        ("new-identity = true\n", 1, "new-identity", "unknown key"),
    ];
    for (text, line, key, what) in cases {
        let path = write(home.path(), "server.toml", text);
        // Without --check-config too: the server must refuse to start.
        let o = run(&home, &["--listen", "127.0.0.1:0", "--headless"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{text:?}: {err}");
        let place = format!("{}:{line}: {key}: ", path.display());
        assert!(err.contains(&place), "{text:?}: {err:?} lacks {place:?}");
        assert!(err.contains(what), "{text:?}: {err:?} lacks {what:?}");
        assert!(!stdout(&o).contains("listening"), "{text:?} started");
    }
    // Broken TOML names the line.
    let path = write(home.path(), "server.toml", "rate = 5\nburst = \n");
    let o = run(&home, &["--check-config"]);
    assert_eq!(o.status.code(), Some(2));
    let place = format!("{}:2: not valid TOML", path.display());
    assert!(stderr(&o).contains(&place), "{}", stderr(&o));
    // A named file that does not exist is an error, not a silent default.
    let o = run(
        &home,
        &["--check-config", "--config", "/nonexistent/qchat.toml"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/qchat.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn settings_that_conflict_name_the_file() {
    let home = Home::new();
    write(
        home.path(),
        "server.toml",
        "idle-timeout = 2\nkeep-alive = 5\n",
    );
    let o = run(&home, &["--check-config"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("--keep-alive") && err.contains("server.toml"),
        "{err}"
    );
    // The flag wins over the file, and so resolves the conflict.
    let o = run(&home, &["--check-config", "--keep-alive", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A raw v3 member's welcome: the rate and burst the server announces.
async fn welcomed_rate(server: &Server) -> (u32, u32) {
    let raw = Raw::connect(server).await;
    let mut stream = raw.open().await;
    let hello = ClientMsg::HelloV3 {
        version: 3,
        name: "probe".into(),
        instance: [7; 16],
        resume: None,
    };
    stream
        .write(&hello.to_frame())
        .await
        .expect("the hello can be written");
    match stream.next_msg().await {
        Some(ServerMsg::WelcomeV3 { rate, burst, .. }) => (rate, burst),
        other => panic!("not welcomed: {other:?}"),
    }
}

#[test]
fn the_files_values_reach_the_running_server() {
    let home = Home::new();
    write(
        home.path(),
        "server.toml",
        "rate = 7\nburst = 9\nheadless = true\nstore = \"memory\"\n",
    );
    let server = Server::start_on(&home, "127.0.0.1:0", &["--burst", "11"]);
    let rt = runtime();
    assert_eq!(rt.block_on(welcomed_rate(&server)), (7, 11));
}

#[test]
fn sighup_reloads_what_can_change_and_names_what_needs_a_restart() {
    let home = Home::new();
    let path = write(
        home.path(),
        "server.toml",
        "rate = 7\nburst = 9\nheadless = true\nstore = \"memory\"\n",
    );
    let mut server = Server::start_on(&home, "127.0.0.1:0", &["--burst", "11"]);
    let rt = runtime();
    assert_eq!(rt.block_on(welcomed_rate(&server)), (7, 11));

    // The rate changes at once; the flag still wins over the file's burst;
    // the worker threads need a restart and are said to.
    std::fs::write(
        &path,
        "rate = 3\nburst = 2\nheadless = true\nstore = \"memory\"\nthreads = 1\n",
    )
    .expect("rewrite the settings file");
    server.proc.signal("HUP");
    server
        .proc
        .expect_err_contains("settings reloaded: rate 7 -> 3");
    server
        .proc
        .expect_err_contains("only take effect after a restart: threads");
    assert_eq!(rt.block_on(welcomed_rate(&server)), (3, 11));

    // A file that has become wrong changes nothing, and the server says so.
    std::fs::write(&path, "rate = 1\nburst = -4\n").expect("rewrite the settings file");
    server.proc.signal("HUP");
    server.proc.expect_err_contains("settings not reloaded");
    assert_eq!(rt.block_on(welcomed_rate(&server)), (3, 11));
}
