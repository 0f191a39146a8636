//! The words for everything the client shows about a session: one place
//! turns a client [`Event`] (and the facts of the session itself: where we
//! are, how far the server is trusted) into sentences, and both interfaces
//! use it. Plain mode prints the words as lines; the full-screen view
//! styles them. A new event kind gets its words here and nowhere else.
//!
//! Everything that came from the network is sanitised here, so neither
//! interface has to remember to.

use qchat_client::people::Marks;
use qchat_client::{ConnectionState, Event, TrustState};
use qchat_proto::clock::utc_minute;
use qchat_proto::text::sanitize;
use qchat_proto::MemberInfo;

/// An event in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Words {
    /// Something a member wrote; the interface decorates the names.
    Said(Said),
    /// A sentence about the room (joins, leaves, renames, notices).
    Info(String),
    /// The member list: a heading and one entry per member.
    Members {
        /// `members (N):`
        heading: String,
        /// `alice 5m 192.0.2.1:4433 (operator)` (address for the operator).
        entries: Vec<String>,
    },
    /// Something failed (refused message, failed command): stderr in
    /// plain mode.
    Error(String),
    /// Something the user must not miss about the conversation itself (a
    /// verified contact's keys changed): stdout in plain mode, where the
    /// record of the conversation is, as `* WARNING: …`; bad news in the
    /// full-screen view.
    Warning(String),
    /// We were removed from the room: part of the conversation's record
    /// (stdout in plain mode), shown as bad news in the full-screen view.
    Removed(String),
}

/// A line somebody wrote, sanitised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Said {
    /// The sender.
    pub from: String,
    /// The recipient of a private message.
    pub to: Option<String>,
    /// The text.
    pub text: String,
    /// Whether it was `/me`.
    pub action: bool,
    /// Whether it is from before we joined.
    pub history: bool,
    /// Whether the sender's name carried the verified mark when the line
    /// arrived.
    pub verified: bool,
    /// The room it was said in, for a room besides the lobby (shown
    /// before the line: `#dev <alice> hi`).
    pub room: Option<String>,
}

/// The verified mark, after a name: `<alice ✓>`, `alice ✓ 5m`.
pub const MARK: &str = "✓";

/// `name`, with the mark if `verified`.
pub fn name_marked(name: &str, verified: bool) -> String {
    if verified {
        format!("{name} {MARK}")
    } else {
        name.to_owned()
    }
}

/// Sanitised, owned.
pub fn s(text: &str) -> String {
    sanitize(text).into_owned()
}

/// The words for an event, or `None` for bookkeeping events no one reads
/// (numbering and delivery marks), with no name marked verified.
#[cfg(test)]
pub fn event(ev: &Event) -> Option<Words> {
    marked(ev, &Marks::default())
}

/// The words for an event, names marked verified as `marks` says now.
pub fn marked(ev: &Event, marks: &Marks) -> Option<Words> {
    let said = |from: &str, to: Option<&str>, text: &str, action, history| {
        Words::Said(Said {
            from: s(from),
            to: to.map(s),
            text: message_text(text),
            action,
            history,
            verified: marks.verified(from),
            room: None,
        })
    };
    Some(match ev {
        Event::Chat { from, text, .. } => said(from, None, text, false, false),
        Event::Action { from, text, .. } => said(from, None, text, true, false),
        Event::Private {
            from,
            to,
            text,
            history,
            ..
        } => said(from, Some(to), text, false, *history),
        Event::History {
            from, text, action, ..
        } => said(from, None, text, *action, true),
        Event::Joined { name } => Words::Info(format!("{} joined", s(name))),
        Event::Left { name, reason } if reason.is_empty() => {
            Words::Info(format!("{} left", s(name)))
        }
        Event::Left { name, reason } => Words::Info(format!("{} left ({})", s(name), s(reason))),
        Event::Renamed { old, new } => {
            Words::Info(format!("{} is now known as {}", s(old), s(new)))
        }
        Event::Members(members) => Words::Members {
            heading: format!("members ({}):", members.len()),
            entries: members
                .iter()
                .map(|m| member(m, marks.verified(&m.name)))
                .collect(),
        },
        Event::Whois {
            name,
            keys,
            here,
            guest,
            since_ms,
        } => Words::Info(whois(name, keys, *here, *guest, *since_ms)),
        Event::LinkCode { code, expires_ms } => Words::Info(link_code(code, *expires_ms)),
        Event::Bans(bans) if bans.is_empty() => Words::Info("bans: none".into()),
        Event::Bans(bans) => Words::Members {
            heading: format!("bans ({}):", bans.len()),
            entries: bans.iter().map(ban).collect(),
        },
        Event::Devices { name, devices } => Words::Members {
            heading: format!("devices of {} ({}):", s(name), devices.len()),
            entries: devices.iter().map(device).collect(),
        },
        Event::Notice { text } => Words::Info(format!("notice: {}", s(text))),
        Event::Kicked { by, reason } => Words::Removed(kicked(by, reason)),
        Event::ShuttingDown { reason, back } => Words::Info(shutting_down(reason, *back)),
        Event::Connection(state) => Words::Info(connection(state)),
        Event::MemberReconnecting { name } => Words::Info(format!("{} is reconnecting", s(name))),
        Event::MemberReturned { name } => Words::Info(format!("{} is back", s(name))),
        Event::Refused { reason, .. } => Words::Error(format!("message not sent: {}", s(reason))),
        Event::Failed { what, reason } => {
            Words::Error(format!("/{} failed: {}", s(what), s(reason)))
        }
        Event::Verified {
            name,
            keys,
            previous,
        } => Words::Info(verified(name, keys, previous.as_deref())),
        Event::ContactChanged {
            name,
            verified,
            now,
            guest,
        } => Words::Warning(contact_changed(name, verified, now, *guest)),
        // The contacts layer always resolves these; should one pass, it is
        // the line without any claim of having been checked.
        Event::Signed { line, .. } => return marked(line, &Marks::default()),
        Event::Forged {
            from,
            text,
            action,
            private,
            contact,
            ..
        } => Words::Warning(forged(from, text, *action, *private, *contact)),
        Event::InRoom { room, event } => prefixed(room, marked(event, marks)?),
        Event::RoomJoined {
            room,
            topic,
            members,
            operator,
            invite_only,
        } => Words::Info(room_joined(room, topic, members, *operator, *invite_only)),
        Event::RoomReplayed { .. } => return None,
        Event::Parted { room, by, reason } if by.is_empty() => {
            Words::Info(format!("you left {}", s(room))).with_reason(reason)
        }
        // (A part without `by` is ours, said above.)
        Event::Parted { room, .. } | Event::Topic { room, .. } | Event::RoomMode { room, .. } => {
            prefixed(room, in_own_room(ev)?)
        }
        Event::RoomList(rooms) => Words::Members {
            heading: format!("rooms ({}):", rooms.len()),
            entries: rooms.iter().map(room_entry).collect(),
        },
        Event::Invited { room, by } => Words::Info(format!(
            "{} invited you to {}; /join {} to enter",
            s(by),
            s(room),
            s(room)
        )),
        Event::Sent { .. }
        | Event::Delivered { .. }
        | Event::Roster { .. }
        | Event::Mark { .. } => return None,
    })
}

/// A room's own news — its topic or mode changed, or we were kicked from
/// it — as said where the room is already named by where the line stands
/// (the full-screen client's conversation of that room): without the
/// room's name. `None` for any other event.
pub fn in_own_room(ev: &Event) -> Option<Words> {
    Some(match ev {
        Event::Parted { by, reason, .. } if !by.is_empty() => Words::Removed(kicked(by, reason)),
        Event::Topic { by, text, .. } if text.is_empty() => {
            Words::Info(format!("{} cleared the topic", s(by)))
        }
        Event::Topic { by, text, .. } => {
            Words::Info(format!("{} set the topic: {}", s(by), s(text)))
        }
        Event::RoomMode {
            by, invite_only, ..
        } => Words::Info(format!(
            "{} made the room {}",
            s(by),
            if *invite_only { "invite-only" } else { "open" }
        )),
        _ => return None,
    })
}

/// `words` of `room`, said where rooms share one view (plain mode): the
/// room's name first.
fn prefixed(room: &str, words: Words) -> Words {
    let room = s(room);
    match words {
        Words::Said(said) => Words::Said(Said {
            room: Some(room),
            ..said
        }),
        Words::Info(t) => Words::Info(format!("{room} {t}")),
        Words::Warning(t) => Words::Warning(format!("{room} {t}")),
        Words::Error(t) => Words::Error(format!("{room}: {t}")),
        Words::Removed(t) => Words::Removed(format!("{room} {t}")),
        Words::Members { heading, entries } => Words::Members {
            heading: format!("{room} {heading}"),
            entries,
        },
    }
}

impl Words {
    /// An info line with ` (REASON)` after it when there is a reason.
    fn with_reason(self, reason: &str) -> Words {
        match self {
            Words::Info(t) if !reason.is_empty() => Words::Info(format!("{t} ({})", s(reason))),
            other => other,
        }
    }
}

/// Joining a room: `you joined #dev (3 members: …); topic: …`.
fn room_joined(
    room: &str,
    topic: &str,
    members: &[String],
    operator: bool,
    invite_only: bool,
) -> String {
    let names: Vec<String> = members.iter().map(|m| s(m)).collect();
    let mut line = format!(
        "you joined {} ({} {}: {})",
        s(room),
        members.len(),
        if members.len() == 1 {
            "member"
        } else {
            "members"
        },
        names.join(", ")
    );
    if operator {
        line.push_str(", you are its operator");
    }
    if invite_only {
        line.push_str(", invite-only");
    }
    if !topic.is_empty() {
        line.push_str(&format!("; topic: {}", s(topic)));
    }
    line
}

/// One room of a `/rooms` answer: `#dev 2 members (invite-only): topic`.
fn room_entry(r: &qchat_proto::RoomInfo) -> String {
    let mut e = format!(
        "{} {} member{}",
        s(&r.name),
        r.members,
        if r.members == 1 { "" } else { "s" }
    );
    if r.invite_only {
        e.push_str(" (invite-only)");
    }
    if !r.topic.is_empty() {
        e.push_str(&format!(": {}", s(&r.topic)));
    }
    e
}

/// Sanitised like [`s`], except that a line break stays a line break:
/// a multi-line message is shown as lines (each one sanitised), never as
/// `^J`. Names and reasons go through [`s`], where a line break is an
/// escape, because they are one line by definition.
/// A line that is not provably its sender's. The text is kept on one
/// line, so it can never pass for a line of its own after the warning.
pub fn forged(from: &str, text: &str, action: bool, private: bool, contact: bool) -> String {
    let what = match (private, action) {
        (true, _) => "private message",
        (false, true) => "action",
        (false, false) => "line",
    };
    if contact {
        format!(
            "WARNING: forged {what} claiming to be {}: {}",
            s(from),
            s(text)
        )
    } else {
        format!(
            "unverified {what} from {} (its signature does not verify): {}",
            s(from),
            s(text)
        )
    }
}

/// Message text, sanitised line by line.
pub fn message_text(text: &str) -> String {
    if !text.contains('\n') {
        return s(text);
    }
    text.split('\n').map(s).collect::<Vec<_>>().join("\n")
}

/// The server is going away: for good (the host's `/quit REASON`, an
/// operator's Ctrl-C) or for a restart, after which the client comes back
/// by itself.
pub fn shutting_down(reason: &str, back: bool) -> String {
    match (back, reason.is_empty()) {
        (true, true) => "server restarting, reconnecting".into(),
        (true, false) => format!("server restarting: {}, reconnecting", s(reason)),
        (false, true) => "server shutting down".into(),
        (false, false) => format!("server shutting down: {}", s(reason)),
    }
}

/// Seconds to show for a wait: rounded up, so "next in 0s" is never shown
/// while something is still to come.
fn secs_up(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The connection's state as the full-screen status line shows it: short,
/// and true for as long as it lasts.
pub fn status(state: &ConnectionState) -> String {
    match state {
        ConnectionState::Connected {
            resumed: true,
            missed,
            ..
        } => format!("resumed, {missed} missed"),
        ConnectionState::Connected { .. } => "connected".into(),
        ConnectionState::Lost { .. } => "connection lost".into(),
        other => connection(other),
    }
}

/// Which changes of the connection's state deserve a line of their own:
/// one line per transition, not one per report (the network task reports
/// `NoAnswer` every second while it lasts). Both interfaces keep one.
#[derive(Debug, Default)]
pub struct Transitions {
    /// The connection dropped and is not back yet.
    down: bool,
    /// The server has not answered for a while (already said).
    silent: bool,
    /// The node of a cluster the session just moved to, for the line that
    /// says it is back.
    moved_to: Option<String>,
}

impl Transitions {
    /// The line for `state`, if it is news.
    pub fn line(&mut self, state: &ConnectionState) -> Option<String> {
        match state {
            ConnectionState::NoAnswer { .. } if self.silent || self.down => None,
            ConnectionState::NoAnswer { .. } => {
                self.silent = true;
                Some(connection(state))
            }
            ConnectionState::Lost { .. } => {
                self.down = true;
                self.silent = false;
                Some(connection(state))
            }
            // Said with the "reconnected" that follows at once.
            ConnectionState::Moved { node } => {
                self.moved_to = Some(node.clone());
                None
            }
            // Every attempt is in the status line; the conversation (and a
            // script reading plain mode) gets the first and then every
            // tenth, so a long outage is visible without burying the talk.
            ConnectionState::Reconnecting { attempt, .. } => {
                self.down = true;
                (*attempt == 1 || attempt % 10 == 0).then(|| connection(state))
            }
            ConnectionState::Connected {
                resumed, missed, ..
            } => {
                let (down, silent) = (self.down, self.silent);
                self.down = false;
                self.silent = false;
                let back = match self.moved_to.take() {
                    Some(node) => format!("reconnected to {}", s(&node)),
                    None => "reconnected".into(),
                };
                match (down, missed) {
                    (true, 0) => Some(back),
                    (true, n) => Some(format!("{back}, {n} missed")),
                    // A resume after a start by hand (the resume point
                    // was on disk): worth saying how much came back.
                    (false, n) if *resumed && *n > 0 => Some(format!("resumed, {n} missed")),
                    (false, _) if silent => Some("the server answers again".into()),
                    (false, _) => None,
                }
            }
        }
    }
}

/// A change of the connection's state, in words: the plain interface prints
/// it as a line, the full-screen one shows it in the status line too.
pub fn connection(state: &ConnectionState) -> String {
    match state {
        ConnectionState::Connected {
            resumed: true,
            missed: 0,
            ..
        } => "reconnected".into(),
        ConnectionState::Connected {
            resumed: true,
            missed,
            ..
        } => format!("reconnected, {missed} missed"),
        ConnectionState::Connected { .. } => "connected".into(),
        ConnectionState::NoAnswer { secs } => format!("no answer for {secs}s"),
        ConnectionState::Moved { node } => format!("moved to {}", s(node)),
        ConnectionState::Lost { reason } => format!("connection lost: {}", s(reason)),
        // A cluster's node that shut down: another node, without a wait.
        ConnectionState::Reconnecting { attempt, next_in } if next_in.is_zero() => {
            format!("reconnecting (attempt {attempt}, now)")
        }
        ConnectionState::Reconnecting { attempt, next_in } => format!(
            "reconnecting (attempt {attempt}, next in {}s)",
            secs_up(*next_in)
        ),
    }
}

/// `kicked by op: REASON`, without the colon when there is no reason.
pub fn kicked(by: &str, reason: &str) -> String {
    if reason.is_empty() {
        format!("kicked by {}", s(by))
    } else {
        format!("kicked by {}: {}", s(by), s(reason))
    }
}

/// One member of a `/who` answer.
/// `/verify` stored a contact.
pub fn verified(
    name: &str,
    keys: &[qchat_tls::Fingerprint],
    previous: Option<&[qchat_tls::Fingerprint]>,
) -> String {
    let name = s(name);
    let mut line = format!(
        "verified {name} ({}): stored in your contacts; the name carries {MARK} while its keys are exactly these",
        qchat_client::contacts::list(keys)
    );
    if let Some(previous) = previous.filter(|p| *p != keys) {
        line.push_str(&format!(
            " (replacing the keys verified before: {})",
            qchat_client::contacts::list(previous)
        ));
    }
    line
}

/// A verified contact's keys are not the ones the user verified: both sets,
/// and what to do, like a changed server key.
pub fn contact_changed(
    name: &str,
    verified: &[qchat_tls::Fingerprint],
    now: &[qchat_tls::Fingerprint],
    guest: bool,
) -> String {
    let name = s(name);
    let then = qchat_client::contacts::list(verified);
    let what = if guest {
        format!(
            "{name} is held by a guest (no key), not by the key(s) you verified ({then}): this is not the {name} you verified"
        )
    } else {
        format!(
            "{name}'s keys are not the ones you verified: verified {then}; now {}. \
             It may be {name} with a new device or key, or someone else",
            qchat_client::contacts::list(now)
        )
    };
    format!(
        "WARNING: {what}. No {MARK} for {name} until you check the fingerprint with them and run /verify {name} FINGERPRINT"
    )
}

fn member(m: &MemberInfo, verified: bool) -> String {
    let mut item = format!(
        "{} {}",
        name_marked(&s(&m.name), verified),
        short_duration(m.connected_secs)
    );
    if !m.addr.is_empty() {
        item.push_str(&format!(" {}", s(&m.addr)));
    }
    if m.operator {
        item.push_str(" (operator)");
    }
    item
}

/// `/whois` on one line: every key in the canonical form (what `qchat
/// fingerprint --mine` prints on that person's machine) and read aloud, or
/// that the member is a guest; and since when.
pub fn whois(
    name: &str,
    keys: &[qchat_tls::Fingerprint],
    here: bool,
    guest: bool,
    since_ms: u64,
) -> String {
    let since = utc_minute(since_ms);
    let presence = if here { "here now" } else { "not here now" };
    if guest || keys.is_empty() {
        return format!(
            "{}: a guest (no key; the name is not registered), here since {since}",
            s(name)
        );
    }
    let keys: Vec<String> = keys
        .iter()
        .map(|k| format!("{} (read aloud: {})", k.canonical(), k.read_aloud()))
        .collect();
    let noun = if keys.len() == 1 { "key" } else { "keys" };
    format!(
        "{}: registered to {noun} {} since {since}; {presence}",
        s(name),
        keys.join(" and ")
    )
}

/// A new link code: the line `link code: CODE` and how to use it.
pub fn link_code(code: &str, expires_ms: u64) -> String {
    let code = s(code);
    format!(
        "link code: {code} (one use, until {}; on the new device: qchat connect HOST --name NAME --link {code}; \
         anyone with it can add a key to your name until then, so pass it on only to yourself)",
        utc_minute(expires_ms)
    )
}

/// One key of my name in `/device list`: both spellings, when added,
/// when last used, and which one this device is.
fn device(d: &qchat_proto::DeviceInfo) -> String {
    let fp = qchat_tls::Fingerprint::from_bytes(d.key);
    format!(
        "{} (read aloud: {}) added {}, last seen {}{}",
        fp.canonical(),
        fp.read_aloud(),
        utc_minute(d.added_ms),
        utc_minute(d.last_ms),
        if d.this { " (this device)" } else { "" }
    )
}

/// One ban in `/bans`: who, which keys (or which address, until when),
/// by whom, when, and why.
fn ban(b: &qchat_proto::BanInfo) -> String {
    let what = if b.keys.is_empty() {
        format!(
            "the guest {}'s address {} until {}",
            s(&b.name),
            s(&b.addr),
            utc_minute(b.until_ms)
        )
    } else {
        let keys: Vec<String> = b
            .keys
            .iter()
            .map(|k| qchat_tls::Fingerprint::from_bytes(*k).canonical())
            .collect();
        let noun = if keys.len() == 1 { "key" } else { "keys" };
        format!("{} ({noun} {})", s(&b.name), keys.join(", "))
    };
    let why = if b.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", s(&b.reason))
    };
    format!(
        "{what}, banned by {} on {}{why}",
        s(&b.by),
        utc_minute(b.at_ms)
    )
}

/// "5m", "2h", "12s": how long someone has been here.
pub fn short_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The facts about a session that the header and `/fingerprint` show:
/// known before the first event, from the trust decision (a member) or the
/// server's own identity (the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct About {
    /// The server's name from the welcome.
    pub server_name: String,
    /// Where the server is, as the user reaches it.
    pub server_addr: String,
    /// How far the server is trusted; `None` for the host, who is the
    /// server.
    pub trust: Option<TrustState>,
    /// Our name as the server registered it.
    pub name: String,
    /// The room when we joined.
    pub members: Vec<String>,
    /// The server's key fingerprint, canonical form.
    pub fingerprint: String,
    /// The same, in the read-aloud form.
    pub read_aloud: String,
    /// Ready-to-send `qchat connect` lines (the host's; empty for members).
    pub connect_lines: Vec<String>,
}

impl About {
    /// The same facts with what the server's welcome said: its name, ours,
    /// and who is here.
    pub fn welcomed(self, welcome: qchat_client::Welcome) -> About {
        About {
            server_name: welcome.server_name,
            name: welcome.name,
            members: welcome.members,
            ..self
        }
    }

    /// The first lines of a session, before any event: who we are, where,
    /// how far the server is trusted, and who is here.
    pub fn header(&self) -> Vec<String> {
        let first = match self.trust {
            Some(trust) => format!(
                "connected to {} at {} ({trust}) as {}",
                s(&self.server_name),
                s(&self.server_addr),
                s(&self.name)
            ),
            None => format!(
                "joined the room as {} (operator), hosting {} at {}",
                s(&self.name),
                s(&self.server_name),
                s(&self.server_addr)
            ),
        };
        let room = format!(
            "in the room: {}",
            self.members
                .iter()
                .map(|m| s(m))
                .collect::<Vec<_>>()
                .join(", ")
        );
        vec![first, room]
    }

    /// What `/fingerprint` shows: the server's key, and for a member how
    /// far it is trusted, for the host how others connect.
    pub fn fingerprint_lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!("fingerprint: {}", self.fingerprint),
            format!("read aloud:  {}", self.read_aloud),
        ];
        match self.trust {
            Some(TrustState::Verified) => lines.push(
                "trust: verified (the key matches a fingerprint checked out of band)".into(),
            ),
            Some(TrustState::TrustedOnFirstUse) => lines.push(
                "trust: trusted on first use (never checked; compare the fingerprint with the host's, then connect once with --fingerprint)"
                    .into(),
            ),
            None if self.connect_lines.is_empty() => {}
            None => {
                lines.push("others connect with:".into());
                lines.extend(self.connect_lines.iter().map(|l| format!("  {l}")));
            }
        }
        lines
    }
}

/// The plain-mode line for words: `<alice> hi`, `* bob joined`; errors are
/// `Err` (for stderr). The format is documented in README.md.
pub fn plain(words: &Words) -> Result<String, String> {
    match words {
        Words::Said(said) => Ok(plain_said(said)),
        Words::Info(text) | Words::Removed(text) => Ok(format!("* {text}")),
        Words::Warning(text) => Ok(format!("* {text}")),
        Words::Members { heading, entries } => Ok(format!("* {heading} {}", entries.join(", "))),
        Words::Error(text) => Err(text.clone()),
    }
}

/// How plain mode starts the continuation lines of a multi-line message:
/// no other output line starts with a space, so a script can tell them
/// from new lines.
pub const CONTINUATION: &str = "  ";

fn plain_said(m: &Said) -> String {
    let text = m.text.replace('\n', &format!("\n{CONTINUATION}"));
    let from = name_marked(&m.from, m.verified);
    let body = match (&m.to, m.action) {
        (Some(to), _) => format!("[{from} -> {to}] {text}"),
        (None, true) => format!("* {from} {text}"),
        (None, false) => format!("<{from}> {text}"),
    };
    let body = if m.history {
        format!("[history] {body}")
    } else {
        body
    };
    match &m.room {
        Some(room) => format!("{room} {body}"),
        None => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ev: Event) -> String {
        plain(&event(&ev).expect("shown")).expect("stdout")
    }

    #[test]
    fn the_documented_plain_lines() {
        assert_eq!(
            line(Event::Chat {
                from: "alice".into(),
                text: "hi\u{1b}[2J".into(),
                time_ms: 0
            }),
            "<alice> hi^[[2J"
        );
        assert_eq!(
            line(Event::Private {
                from: "a".into(),
                to: "b".into(),
                text: "psst".into(),
                time_ms: 0,
                history: false,
            }),
            "[a -> b] psst"
        );
        assert_eq!(
            line(Event::Private {
                from: "a".into(),
                to: "b".into(),
                text: "earlier".into(),
                time_ms: 0,
                history: true,
            }),
            "[history] [a -> b] earlier"
        );
        assert_eq!(
            line(Event::History {
                from: "a".into(),
                text: "waves".into(),
                time_ms: 0,
                action: true
            }),
            "[history] * a waves"
        );
        assert_eq!(
            line(Event::Forged {
                from: "alice".into(),
                text: "pay\nme\x1b[2J".into(),
                time_ms: 0,
                action: false,
                private: false,
                contact: true,
            }),
            "* WARNING: forged line claiming to be alice: pay^Jme^[[2J"
        );
        assert_eq!(
            line(Event::Forged {
                from: "alice".into(),
                text: "psst".into(),
                time_ms: 0,
                action: false,
                private: true,
                contact: true,
            }),
            "* WARNING: forged private message claiming to be alice: psst"
        );
        assert_eq!(
            line(Event::Forged {
                from: "bob".into(),
                text: "psst".into(),
                time_ms: 0,
                action: false,
                private: true,
                contact: false,
            }),
            "* unverified private message from bob (its signature does not verify): psst"
        );
        assert_eq!(
            line(Event::Forged {
                from: "bob".into(),
                text: "waves".into(),
                time_ms: 0,
                action: true,
                private: false,
                contact: false,
            }),
            "* unverified action from bob (its signature does not verify): waves"
        );
        assert_eq!(
            line(Event::Left {
                name: "bob".into(),
                reason: String::new()
            }),
            "* bob left"
        );
        assert_eq!(
            line(Event::Left {
                name: "bob".into(),
                reason: "bye".into()
            }),
            "* bob left (bye)"
        );
        assert_eq!(
            line(Event::Renamed {
                old: "a".into(),
                new: "b".into()
            }),
            "* a is now known as b"
        );
        assert_eq!(
            line(Event::Members(vec![MemberInfo {
                name: "alice".into(),
                connected_secs: 300,
                addr: String::new(),
                operator: true,
            }])),
            "* members (1): alice 5m (operator)"
        );
        assert_eq!(
            line(Event::ShuttingDown {
                back: false,
                reason: "maintenance".into()
            }),
            "* server shutting down: maintenance"
        );
    }

    #[test]
    fn a_multi_line_message_keeps_its_lines_indented_and_sanitised() {
        assert_eq!(
            line(Event::Chat {
                from: "alice".into(),
                text: "first\nsecond\u{1b}[2J\nthird".into(),
                time_ms: 0
            }),
            "<alice> first\n  second^[[2J\n  third"
        );
        // A name is one line: a break in it stays an escape.
        assert_eq!(
            line(Event::Joined {
                name: "eve\nmallory".into()
            }),
            "* eve^Jmallory joined"
        );
    }

    #[test]
    fn shutting_down_says_whether_the_server_comes_back() {
        let says = |reason: &str, back| {
            line(Event::ShuttingDown {
                reason: reason.into(),
                back,
            })
        };
        assert_eq!(
            says("upgrade", true),
            "* server restarting: upgrade, reconnecting"
        );
        assert_eq!(says("", true), "* server restarting, reconnecting");
        assert_eq!(says("bye all", false), "* server shutting down: bye all");
        assert_eq!(says("", false), "* server shutting down");
    }

    #[test]
    fn one_line_per_connection_transition() {
        use std::time::Duration;
        let mut t = Transitions::default();
        let connected = |resumed, missed| ConnectionState::Connected {
            resumed,
            replayed: 3,
            missed,
        };
        // The first join says nothing: the header said it.
        assert_eq!(t.line(&connected(false, 0)), None);
        assert_eq!(
            t.line(&ConnectionState::NoAnswer { secs: 2 }).as_deref(),
            Some("no answer for 2s")
        );
        assert_eq!(t.line(&ConnectionState::NoAnswer { secs: 3 }), None);
        let lost = t
            .line(&ConnectionState::Lost {
                reason: "timed out".into(),
            })
            .expect("a line");
        assert!(lost.starts_with("connection lost"), "{lost}");
        let attempt = |attempt| ConnectionState::Reconnecting {
            attempt,
            next_in: Duration::from_millis(1500),
        };
        assert_eq!(
            t.line(&attempt(1)).as_deref(),
            Some("reconnecting (attempt 1, next in 2s)")
        );
        // A long outage: every tenth attempt, not every one.
        for n in 2..=9 {
            assert_eq!(t.line(&attempt(n)), None, "attempt {n}");
        }
        assert_eq!(
            t.line(&attempt(10)).as_deref(),
            Some("reconnecting (attempt 10, next in 2s)")
        );
        assert_eq!(t.line(&ConnectionState::NoAnswer { secs: 9 }), None);
        assert_eq!(t.line(&connected(true, 0)).as_deref(), Some("reconnected"));
        assert_eq!(t.line(&connected(false, 0)), None);
        t.line(&ConnectionState::Lost {
            reason: String::new(),
        });
        assert_eq!(
            t.line(&connected(true, 4)).as_deref(),
            Some("reconnected, 4 missed")
        );
        // A cluster's failover: the line names the node it moved to, once.
        t.line(&ConnectionState::Lost {
            reason: String::new(),
        });
        assert_eq!(
            t.line(&ConnectionState::Reconnecting {
                attempt: 1,
                next_in: Duration::ZERO
            })
            .as_deref(),
            Some("reconnecting (attempt 1, now)")
        );
        let moved = ConnectionState::Moved {
            node: "10.0.0.2:8080".into(),
        };
        assert_eq!(t.line(&moved), None);
        assert_eq!(
            t.line(&connected(true, 0)).as_deref(),
            Some("reconnected to 10.0.0.2:8080")
        );
        t.line(&ConnectionState::Lost {
            reason: String::new(),
        });
        assert_eq!(t.line(&connected(true, 0)).as_deref(), Some("reconnected"));
        // Silence that ends without a drop.
        t.line(&ConnectionState::NoAnswer { secs: 2 });
        assert_eq!(
            t.line(&connected(false, 0)).as_deref(),
            Some("the server answers again")
        );
        // The status line's words.
        assert_eq!(status(&connected(true, 4)), "resumed, 4 missed");
        assert_eq!(status(&connected(false, 0)), "connected");
        assert_eq!(
            status(&ConnectionState::Lost { reason: "x".into() }),
            "connection lost"
        );
    }

    #[test]
    fn bookkeeping_has_no_words_and_failures_go_to_stderr() {
        assert_eq!(event(&Event::Delivered { seq: 1 }), None);
        assert_eq!(event(&Event::Sent { seq: 1 }), None);
        let refused = event(&Event::Refused {
            seq: 1,
            reason: "too fast".into(),
        })
        .expect("shown");
        assert_eq!(plain(&refused), Err("message not sent: too fast".into()));
        let kicked = event(&Event::Kicked {
            by: "op".into(),
            reason: String::new(),
        })
        .expect("shown");
        assert_eq!(plain(&kicked), Ok("* kicked by op".into()));
    }

    #[test]
    fn a_rooms_news_names_the_room_in_plain_mode_but_not_in_its_own_view() {
        let topic = Event::Topic {
            room: "#dev".into(),
            by: "dave".into(),
            text: "releases".into(),
        };
        let mode = Event::RoomMode {
            room: "#dev".into(),
            by: "dave".into(),
            invite_only: false,
        };
        let kicked = Event::Parted {
            room: "#dev".into(),
            by: "dave".into(),
            reason: "enough".into(),
        };
        let own = |ev: &Event| in_own_room(ev).map(|w| plain(&w));
        assert_eq!(
            event(&topic).map(|w| plain(&w)),
            Some(Ok("* #dev dave set the topic: releases".into()))
        );
        assert_eq!(
            own(&topic),
            Some(Ok("* dave set the topic: releases".into()))
        );
        assert_eq!(
            event(&mode).map(|w| plain(&w)),
            Some(Ok("* #dev dave made the room open".into()))
        );
        assert_eq!(own(&mode), Some(Ok("* dave made the room open".into())));
        assert_eq!(own(&kicked), Some(Ok("* kicked by dave: enough".into())));
        assert!(matches!(
            event(&kicked).map(|w| plain(&w)),
            Some(Ok(l)) if l.contains("#dev kicked by dave: enough")
        ));
        // Our own part, and anything else, is worded the one way.
        let left = Event::Parted {
            room: "#dev".into(),
            by: String::new(),
            reason: String::new(),
        };
        assert_eq!(in_own_room(&left), None);
        assert_eq!(in_own_room(&Event::Sent { seq: 1 }), None);
    }

    #[test]
    fn names_from_the_network_are_sanitised() {
        let w = event(&Event::Joined {
            name: "eve\u{7}".into(),
        });
        assert_eq!(w, Some(Words::Info("eve^G joined".into())));
    }

    fn about(trust: Option<TrustState>) -> About {
        About {
            server_name: "den".into(),
            server_addr: "127.0.0.1:7878".into(),
            trust,
            name: "bob".into(),
            members: vec!["alice".into(), "bob".into()],
            fingerprint: "SHA256:abc".into(),
            read_aloud: "apple banana".into(),
            connect_lines: vec!["qchat connect 127.0.0.1:7878 --fingerprint SHA256:abc".into()],
        }
    }

    #[test]
    fn the_header_and_fingerprint_lines() {
        let member = about(Some(TrustState::TrustedOnFirstUse));
        assert_eq!(
            member.header(),
            [
                "connected to den at 127.0.0.1:7878 (trusted on first use) as bob",
                "in the room: alice, bob"
            ]
        );
        let fp = member.fingerprint_lines();
        assert_eq!(fp[0], "fingerprint: SHA256:abc");
        assert!(fp[2].starts_with("trust: trusted on first use"), "{fp:?}");
        assert!(!fp.iter().any(|l| l.contains("qchat connect")), "{fp:?}");

        // The host is told how others connect.
        let host = about(None);
        assert!(host.header()[0].starts_with("joined the room as bob (operator)"));
        assert_eq!(
            host.fingerprint_lines().last().map(String::as_str),
            Some("  qchat connect 127.0.0.1:7878 --fingerprint SHA256:abc")
        );
    }
}
