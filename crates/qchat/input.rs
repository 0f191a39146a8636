//! What a typed line means: a message, or a `/command`. Shared by the plain
//! interface and the full-screen one, so both accept exactly the same
//! commands.

use qchat_client::Command;
use qchat_proto::{DeviceOp, ModOp};

/// One typed line, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Something for the network task.
    Send(Command),
    /// Show the command list.
    Help,
    /// Show the server's fingerprint (and how far it is trusted, or how
    /// others connect).
    Fingerprint,
    /// Make another room the current one: where typed lines go.
    Switch(String),
    /// Nothing to do (an empty line).
    Nothing,
    /// A mistake, explained in one line.
    Error(String),
}

/// A command's name, argument synopsis and one-line description.
pub struct CommandHelp {
    /// The name, with its slash.
    pub name: &'static str,
    /// The arguments.
    pub args: &'static str,
    /// What it does.
    pub about: &'static str,
    /// Only for the server's operator.
    pub operator: bool,
}

/// Every command, in the order `/help` lists them.
pub const COMMANDS: &[CommandHelp] = &[
    CommandHelp {
        name: "/help",
        args: "",
        about: "list the commands",
        operator: false,
    },
    CommandHelp {
        name: "/who",
        args: "",
        about: "who is in the room, and for how long",
        operator: false,
    },
    CommandHelp {
        name: "/whois",
        args: "NAME",
        about: "a member's key fingerprint (to compare out of band), or that it is a guest",
        operator: false,
    },
    CommandHelp {
        name: "/device",
        args: "link | list | remove FP",
        about: "your name's devices: a one-time code to link a new one, the list, or remove a key",
        operator: false,
    },
    CommandHelp {
        name: "/verify",
        args: "NAME FP",
        about: "after checking NAME's fingerprint with them, mark their name verified (✓)",
        operator: false,
    },
    CommandHelp {
        name: "/join",
        args: "#ROOM",
        about:
            "join a room (created if it does not exist: you are its operator); typed lines go there",
        operator: false,
    },
    CommandHelp {
        name: "/part",
        args: "[#ROOM] [REASON]",
        about: "leave a room (the current one if none is named)",
        operator: false,
    },
    CommandHelp {
        name: "/switch",
        args: "#ROOM",
        about: "send typed lines to another room you are in (#lobby included)",
        operator: false,
    },
    CommandHelp {
        name: "/rooms",
        args: "",
        about: "the rooms, with their members and topics",
        operator: false,
    },
    CommandHelp {
        name: "/topic",
        args: "TEXT",
        about: "set the current room's topic (its operators)",
        operator: false,
    },
    CommandHelp {
        name: "/invite",
        args: "NAME",
        about: "let a member into the current room when it is invite-only (its operators)",
        operator: false,
    },
    CommandHelp {
        name: "/room",
        args: "invite-only on|off",
        about: "make the current room invite-only, or open (its operators)",
        operator: false,
    },
    CommandHelp {
        name: "/msg",
        args: "NAME TEXT",
        about: "a private message to one member",
        operator: false,
    },
    CommandHelp {
        name: "/me",
        args: "ACTION",
        about: "say what you are doing (* you ACTION)",
        operator: false,
    },
    CommandHelp {
        name: "/nick",
        args: "NEW",
        about: "change your name",
        operator: false,
    },
    CommandHelp {
        name: "/fingerprint",
        args: "",
        about: "the server's key fingerprint and how far it is trusted",
        operator: false,
    },
    CommandHelp {
        name: "/quit",
        args: "[REASON]",
        about: "leave the room (others see the reason)",
        operator: false,
    },
    CommandHelp {
        name: "/kick",
        args: "NAME [REASON]",
        about: "remove a member from the room",
        operator: true,
    },
    CommandHelp {
        name: "/ban",
        args: "NAME [REASON]",
        about:
            "ban a member's keys (every device; a guest: its address, for a while) and remove it",
        operator: true,
    },
    CommandHelp {
        name: "/unban",
        args: "NAME|FP|ADDRESS",
        about: "lift a ban",
        operator: true,
    },
    CommandHelp {
        name: "/bans",
        args: "",
        about: "the bans in force: who, keys, by whom, when, why",
        operator: true,
    },
    CommandHelp {
        name: "/op",
        args: "NAME",
        about: "make a member's keys operators (kept across restarts)",
        operator: true,
    },
    CommandHelp {
        name: "/deop",
        args: "NAME",
        about: "take operator rights back from a member's keys",
        operator: true,
    },
];

/// Parses one line typed while `room` is the current room: a message
/// goes to it, and the room commands (`/part`, `/topic`, `/invite`,
/// `/room`, `/kick`) apply to it unless they name another. In `#lobby`
/// this is [`parse`].
pub fn parse_in(line: &str, room: &str) -> Input {
    use qchat_proto::names::{is_lobby, validate_room, LOBBY};
    let in_lobby = is_lobby(room);
    let trimmed = line.trim_end_matches(['\r', '\n']);
    let (cmd, rest) = match trimmed.strip_prefix('/') {
        Some(c) if !c.starts_with('/') => split_word(c),
        _ => ("", ""),
    };
    let needs_room = |what: &str| {
        Input::Error(format!(
            "{what} applies to the current room, and {LOBBY} is the server's own room; /join or /switch to a room first"
        ))
    };
    match cmd.to_ascii_lowercase().as_str() {
        "join" | "switch" => {
            let (name, extra) = split_word(rest);
            if name.is_empty() || !extra.is_empty() {
                return usage(if cmd.eq_ignore_ascii_case("join") {
                    "/join"
                } else {
                    "/switch"
                });
            }
            if let Err(e) = validate_room(name) {
                return Input::Error(format!("{}: {e}", qchat_proto::text::sanitize(name)));
            }
            if is_lobby(name) {
                Input::Switch(LOBBY.into())
            } else if cmd.eq_ignore_ascii_case("join") {
                Input::Send(Command::Join(name.to_string()))
            } else {
                Input::Switch(name.to_string())
            }
        }
        "part" | "leave" => {
            let (first, after) = split_word(rest);
            let (target, reason) = if first.starts_with('#') {
                (first, after)
            } else {
                (room, rest)
            };
            if is_lobby(target) {
                return Input::Error(format!(
                    "everyone is always in {LOBBY}; /quit leaves the server"
                ));
            }
            Input::Send(Command::Part {
                room: target.to_string(),
                reason: reason.to_string(),
            })
        }
        "rooms" if rest.is_empty() => Input::Send(Command::Rooms),
        "rooms" => usage("/rooms"),
        "topic" if in_lobby => needs_room("/topic"),
        "topic" => Input::Send(Command::Topic {
            room: room.to_string(),
            text: rest.to_string(),
        }),
        "invite" if in_lobby => needs_room("/invite"),
        "invite" => match split_word(rest) {
            (name, "") if !name.is_empty() => Input::Send(Command::Invite {
                room: room.to_string(),
                name: name.to_string(),
            }),
            _ => usage("/invite"),
        },
        "room" if in_lobby => needs_room("/room"),
        "room" => {
            let (what, on) = split_word(rest);
            match (
                what.to_ascii_lowercase().as_str(),
                on.to_ascii_lowercase().as_str(),
            ) {
                ("invite-only", "on") => Input::Send(Command::RoomMode {
                    room: room.to_string(),
                    invite_only: true,
                }),
                ("invite-only", "off") => Input::Send(Command::RoomMode {
                    room: room.to_string(),
                    invite_only: false,
                }),
                _ => usage("/room"),
            }
        }
        _ => match parse(line) {
            Input::Send(Command::Say(text)) if !in_lobby => Input::Send(Command::RoomSay {
                room: room.to_string(),
                text,
                action: false,
            }),
            Input::Send(Command::Action(text)) if !in_lobby => Input::Send(Command::RoomSay {
                room: room.to_string(),
                text,
                action: true,
            }),
            Input::Send(Command::Kick { name, reason }) if !in_lobby => {
                Input::Send(Command::RoomKick {
                    room: room.to_string(),
                    name,
                    reason,
                })
            }
            other => other,
        },
    }
}

/// Parses one line. A line that starts with `/` is a command; `//` at the
/// start sends the rest, slash included, as a message.
pub fn parse(line: &str) -> Input {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Input::Nothing;
    }
    if let Some(rest) = line.strip_prefix("//") {
        return Input::Send(Command::Say(format!("/{rest}")));
    }
    let Some(cmdline) = line.strip_prefix('/') else {
        return Input::Send(Command::Say(line.to_string()));
    };
    let (cmd, rest) = split_word(cmdline);
    match cmd.to_ascii_lowercase().as_str() {
        "join" | "switch" | "part" | "leave" | "rooms" | "topic" | "invite" | "room" => {
            parse_in(line, qchat_proto::names::LOBBY)
        }
        "help" | "?" => Input::Help,
        "fingerprint" => Input::Fingerprint,
        "who" | "names" => Input::Send(Command::Who),
        "whois" => {
            let (name, extra) = split_word(rest);
            if name.is_empty() || !extra.is_empty() {
                usage("/whois")
            } else {
                Input::Send(Command::Whois(name.to_string()))
            }
        }
        "device" | "devices" => {
            let (op, arg) = split_word(rest);
            match op.to_ascii_lowercase().as_str() {
                "link" if arg.is_empty() => Input::Send(Command::Device(DeviceOp::Link)),
                "list" | "" if arg.is_empty() => Input::Send(Command::Device(DeviceOp::List)),
                "remove" if !arg.is_empty() => match arg.parse::<qchat_tls::Fingerprint>() {
                    Ok(fp) => Input::Send(Command::Device(DeviceOp::Remove {
                        key: *fp.as_bytes(),
                    })),
                    Err(e) => Input::Error(format!("/device remove: {e}")),
                },
                _ => usage("/device"),
            }
        }
        "verify" => {
            let (name, fingerprint) = split_word(rest);
            if name.is_empty() || fingerprint.is_empty() {
                return usage("/verify");
            }
            // The rest of the line: the read-aloud form has spaces.
            match fingerprint.parse() {
                Ok(fingerprint) => Input::Send(Command::Verify {
                    name: name.to_string(),
                    fingerprint,
                }),
                Err(e) => Input::Error(format!("/verify: {e}")),
            }
        }
        "msg" | "query" => {
            let (to, text) = split_word(rest);
            if to.is_empty() || text.is_empty() {
                usage("/msg")
            } else {
                Input::Send(Command::Private {
                    to: to.to_string(),
                    text: text.to_string(),
                })
            }
        }
        "me" if rest.is_empty() => usage("/me"),
        "me" => Input::Send(Command::Action(rest.to_string())),
        "nick" => {
            let (name, extra) = split_word(rest);
            if name.is_empty() || !extra.is_empty() {
                usage("/nick")
            } else {
                Input::Send(Command::Nick(name.to_string()))
            }
        }
        "quit" | "exit" => Input::Send(Command::Quit(rest.to_string())),
        // Hidden from /help: a debugging aid that moves the connection to a
        // fresh local port, as a network change would.
        "rebind" if rest.is_empty() => Input::Send(Command::Rebind),
        "kick" => {
            let (name, reason) = split_word(rest);
            if name.is_empty() {
                usage("/kick")
            } else {
                Input::Send(Command::Kick {
                    name: name.to_string(),
                    reason: reason.to_string(),
                })
            }
        }
        "ban" => {
            let (name, reason) = split_word(rest);
            if name.is_empty() {
                usage("/ban")
            } else {
                Input::Send(Command::Moderate(ModOp::Ban {
                    name: name.to_string(),
                    reason: reason.to_string(),
                }))
            }
        }
        "unban" => match split_word(rest) {
            (target, "") if !target.is_empty() => {
                Input::Send(Command::Moderate(ModOp::Unban {
                    target: target.to_string(),
                }))
            }
            // A fingerprint read aloud is several words.
            _ if !rest.trim().is_empty() && rest.parse::<qchat_tls::Fingerprint>().is_ok() => {
                Input::Send(Command::Moderate(ModOp::Unban {
                    target: rest.trim().to_string(),
                }))
            }
            _ => usage("/unban"),
        },
        "bans" if rest.trim().is_empty() => Input::Send(Command::Moderate(ModOp::Bans)),
        "bans" => usage("/bans"),
        "op" | "deop" => {
            let op = cmd.eq_ignore_ascii_case("op");
            match split_word(rest) {
                (name, "") if !name.is_empty() => {
                    let name = name.to_string();
                    Input::Send(Command::Moderate(if op {
                        ModOp::Op { name }
                    } else {
                        ModOp::Deop { name }
                    }))
                }
                _ if op => usage("/op"),
                _ => usage("/deop"),
            }
        }
        _ => Input::Error(format!(
            "unknown command /{}; /help lists the commands (start a message with // to send a leading slash)",
            qchat_proto::text::sanitize(cmd)
        )),
    }
}

fn usage(name: &str) -> Input {
    let args = COMMANDS
        .iter()
        .find(|c| c.name == name)
        .map_or("", |c| c.args);
    Input::Error(format!("usage: {name} {args}"))
}

/// The first word and the rest, trimmed.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

/// The `/help` text, one line per command.
pub fn help_lines(operator: bool) -> Vec<String> {
    COMMANDS
        .iter()
        .filter(|c| operator || !c.operator)
        .map(|c| {
            let synopsis = if c.args.is_empty() {
                c.name.to_string()
            } else {
                format!("{} {}", c.name, c.args)
            };
            format!("{synopsis:<22} {}", c.about)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_line_goes_to_the_current_room() {
        let say = |room: &str, text: &str, action| {
            Input::Send(Command::RoomSay {
                room: room.into(),
                text: text.into(),
                action,
            })
        };
        assert_eq!(parse_in("hi", "#dev"), say("#dev", "hi", false));
        assert_eq!(parse_in("/me waves", "#dev"), say("#dev", "waves", true));
        assert_eq!(
            parse_in("hi", "#lobby"),
            Input::Send(Command::Say("hi".into()))
        );
        assert_eq!(parse("hi"), Input::Send(Command::Say("hi".into())));
        assert_eq!(
            parse("/join #dev"),
            Input::Send(Command::Join("#dev".into()))
        );
        assert_eq!(
            parse_in("/join #Lobby", "#dev"),
            Input::Switch("#lobby".into())
        );
        assert_eq!(parse("/switch #dev"), Input::Switch("#dev".into()));
        assert!(matches!(parse("/join dev"), Input::Error(_)));
        assert_eq!(
            parse_in("/part", "#dev"),
            Input::Send(Command::Part {
                room: "#dev".into(),
                reason: String::new()
            })
        );
        assert_eq!(
            parse_in("/part #ops bye now", "#dev"),
            Input::Send(Command::Part {
                room: "#ops".into(),
                reason: "bye now".into()
            })
        );
        assert!(matches!(parse("/part"), Input::Error(_)), "not the lobby");
        assert!(matches!(parse("/topic x"), Input::Error(_)));
        assert_eq!(parse("/rooms"), Input::Send(Command::Rooms));
        assert!(matches!(parse("/rooms x"), Input::Error(_)));
        assert_eq!(
            parse_in("/room invite-only on", "#dev"),
            Input::Send(Command::RoomMode {
                room: "#dev".into(),
                invite_only: true
            })
        );
        assert_eq!(
            parse_in("/kick bob spam", "#dev"),
            Input::Send(Command::RoomKick {
                room: "#dev".into(),
                name: "bob".into(),
                reason: "spam".into()
            })
        );
        assert_eq!(
            parse("/kick bob"),
            Input::Send(Command::Kick {
                name: "bob".into(),
                reason: String::new()
            })
        );
    }

    #[test]
    fn messages_and_commands() {
        assert_eq!(parse("hello"), Input::Send(Command::Say("hello".into())));
        assert_eq!(parse("   "), Input::Nothing);
        assert_eq!(
            parse("//etc/passwd"),
            Input::Send(Command::Say("/etc/passwd".into()))
        );
        assert_eq!(parse("/help"), Input::Help);
        assert_eq!(parse("/fingerprint"), Input::Fingerprint);
        assert_eq!(parse("/WHO"), Input::Send(Command::Who));
        assert_eq!(
            parse("/msg bob  hi there "),
            Input::Send(Command::Private {
                to: "bob".into(),
                text: "hi there".into()
            })
        );
        assert_eq!(
            parse("/me waves"),
            Input::Send(Command::Action("waves".into()))
        );
        assert_eq!(parse("/nick zed"), Input::Send(Command::Nick("zed".into())));
        assert_eq!(
            parse("/whois alice"),
            Input::Send(Command::Whois("alice".into()))
        );
        let fp = qchat_tls::Fingerprint::from_bytes([7; 32]);
        for spelling in [fp.canonical(), fp.hex(), fp.read_aloud()] {
            assert_eq!(
                parse(&format!("/verify alice {spelling}")),
                Input::Send(Command::Verify {
                    name: "alice".into(),
                    fingerprint: fp
                }),
                "{spelling}"
            );
        }
        assert!(matches!(parse("/verify alice nonsense"), Input::Error(_)));
        assert_eq!(
            parse("/verify alice"),
            Input::Error("usage: /verify NAME FP".into())
        );
        assert_eq!(
            parse("/device link"),
            Input::Send(Command::Device(DeviceOp::Link))
        );
        assert_eq!(
            parse("/device list"),
            Input::Send(Command::Device(DeviceOp::List))
        );
        let fp = qchat_tls::Fingerprint::from_bytes([7; 32]);
        for spelling in [fp.canonical(), fp.read_aloud(), fp.hex()] {
            assert_eq!(
                parse(&format!("/device remove {spelling}")),
                Input::Send(Command::Device(DeviceOp::Remove { key: [7; 32] })),
                "{spelling}"
            );
        }
        assert!(matches!(parse("/device remove nonsense"), Input::Error(_)));
        assert_eq!(
            parse("/ban mallory spamming links"),
            Input::Send(Command::Moderate(ModOp::Ban {
                name: "mallory".into(),
                reason: "spamming links".into()
            }))
        );
        assert_eq!(
            parse("/OP bob"),
            Input::Send(Command::Moderate(ModOp::Op { name: "bob".into() }))
        );
        assert_eq!(
            parse("/deop bob"),
            Input::Send(Command::Moderate(ModOp::Deop { name: "bob".into() }))
        );
        assert_eq!(parse("/bans"), Input::Send(Command::Moderate(ModOp::Bans)));
        let aloud = fp.read_aloud();
        assert_eq!(
            parse(&format!("/unban {aloud}")),
            Input::Send(Command::Moderate(ModOp::Unban { target: aloud }))
        );
        assert_eq!(
            parse("/unban mallory"),
            Input::Send(Command::Moderate(ModOp::Unban {
                target: "mallory".into()
            }))
        );
        assert_eq!(
            parse("/quit bye all"),
            Input::Send(Command::Quit("bye all".into()))
        );
        assert_eq!(parse("/quit"), Input::Send(Command::Quit(String::new())));
        assert_eq!(parse("/rebind"), Input::Send(Command::Rebind));
        assert!(!help_lines(true).iter().any(|l| l.contains("rebind")));
        assert_eq!(
            parse("/kick eve spamming"),
            Input::Send(Command::Kick {
                name: "eve".into(),
                reason: "spamming".into()
            })
        );
    }

    #[test]
    fn mistakes_are_explained() {
        for bad in [
            "/msg",
            "/msg bob",
            "/me",
            "/nick",
            "/nick a b",
            "/kick",
            "/whois",
            "/whois a b",
            "/device remove",
            "/device link now",
            "/device frobnicate",
            "/ban",
            "/unban",
            "/unban two words",
            "/bans now",
            "/op",
            "/deop a b",
        ] {
            assert!(
                matches!(parse(bad), Input::Error(e) if e.starts_with("usage: ")),
                "{bad}"
            );
        }
        assert!(matches!(parse("/dance"), Input::Error(e) if e.contains("unknown command /dance")));
    }

    #[test]
    fn help_hides_operator_commands_from_members() {
        assert!(!help_lines(false).iter().any(|l| l.starts_with("/kick")));
        assert!(help_lines(true).iter().any(|l| l.starts_with("/kick")));
    }
}
