//! Questions asked on the terminal. These block on standard input, so they
//! run before the async runtime starts or on a blocking thread, never on a
//! runtime worker.

use std::io::{BufRead, Write};

use anyhow::{bail, Result};
use qchat_client::{Decision, UnknownServer};
use qchat_tls::Fingerprint;

/// Asks for a name until a valid one is given, offering the login name
/// (`$USER`) as the default when it is a valid name.
pub fn ask_name() -> Result<String> {
    let default = default_name(std::env::var("USER").ok());
    let stdin = std::io::stdin();
    loop {
        match &default {
            Some(d) => eprint!("Your name [{d}]: "),
            None => eprint!("Your name: "),
        }
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            bail!("no name given");
        }
        let name = match (line.trim(), &default) {
            ("", Some(d)) => d.as_str(),
            (typed, _) => typed,
        };
        match qchat_proto::names::validate(name) {
            Ok(()) => return Ok(name.to_string()),
            Err(e) => eprintln!("That name cannot be used: {e}."),
        }
    }
}

/// The default offered at the name prompt: the login name, if it would
/// be accepted.
fn default_name(user: Option<String>) -> Option<String> {
    user.filter(|u| qchat_proto::names::validate(u).is_ok())
}

/// The first-contact question, in the shape OpenSSH users know, plus the
/// read-aloud form for people comparing by voice.
pub fn confirm_unknown(info: UnknownServer) -> Decision {
    let stdin = std::io::stdin();
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "The authenticity of server '{}' ({}) can't be established.\n\
         Its key fingerprint is {}\n\
         Read aloud: {}\n\
         Compare it with what the server's operator sees (`qchat fingerprint` on the server).",
        info.host,
        info.addr,
        info.fingerprint.canonical(),
        info.fingerprint.read_aloud()
    );
    let mut question = "Are you sure you want to continue connecting (yes/no/[fingerprint])? ";
    loop {
        let _ = write!(err, "{question}");
        let _ = err.flush();
        let mut line = String::new();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => return Decision::Refuse,
            Ok(_) => {}
        }
        match answer(line.trim(), &info.fingerprint) {
            Some(d) => return d,
            None => {
                if line.trim().parse::<Fingerprint>().is_ok() {
                    let _ = writeln!(
                        err,
                        "The fingerprint you entered does not match the server's key."
                    );
                }
                question = "Please type 'yes', 'no' or the fingerprint: ";
            }
        }
    }
}

/// Interprets one answer; `None` means ask again.
fn answer(input: &str, presented: &Fingerprint) -> Option<Decision> {
    match input.to_ascii_lowercase().as_str() {
        "" | "no" | "n" => Some(Decision::Refuse),
        "yes" => Some(Decision::Accept),
        _ => match input.parse::<Fingerprint>() {
            Ok(fp) if fp == *presented => Some(Decision::AcceptVerified),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_name_is_offered_only_if_valid() {
        assert_eq!(default_name(Some("ann".into())), Some("ann".into()));
        assert_eq!(default_name(Some("two words".into())), None);
        assert_eq!(default_name(Some(String::new())), None);
        assert_eq!(default_name(None), None);
    }

    #[test]
    fn answers() {
        let fp = Fingerprint::from_bytes([7; 32]);
        assert_eq!(answer("", &fp), Some(Decision::Refuse));
        assert_eq!(answer("no", &fp), Some(Decision::Refuse));
        assert_eq!(answer("yes", &fp), Some(Decision::Accept));
        assert_eq!(answer(&fp.canonical(), &fp), Some(Decision::AcceptVerified));
        assert_eq!(
            answer(&fp.hex().to_uppercase(), &fp),
            Some(Decision::AcceptVerified)
        );
        assert_eq!(answer("maybe", &fp), None);
        assert_eq!(
            answer(&Fingerprint::from_bytes([8; 32]).canonical(), &fp),
            None
        );
    }
}
