//! Server addresses: how a user names a server, and the one spelling under
//! which it is pinned.
//!
//! Kept apart from the pin store because the address is used everywhere a
//! server is named (connecting, the command line, the bench), while only the
//! store cares how pins are written down.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// A server address that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a valid server address ({reason}); use host, host:port, an IPv6 address, or [ipv6]:port"
)]
pub struct HostError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A server address as used for pin lookups: lowercase host plus port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostKey {
    /// Lowercase DNS name, IPv4 address, or IPv6 address (without brackets,
    /// in its canonical compressed form).
    pub host: String,
    /// UDP port.
    pub port: u16,
}

impl HostKey {
    /// Parses `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address,
    /// using `default_port` when none is given.
    ///
    /// Hosts are lowercased and IPv6 addresses canonicalised so that every
    /// spelling of the same server finds the same pin.
    pub fn parse(s: &str, default_port: u16) -> Result<HostKey, HostError> {
        parse_host(s, Some(default_port))
    }
}

/// Parses the file's form, `host:port` or `[v6]:port`; the port is required.
impl FromStr for HostKey {
    type Err = HostError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_host(s, None)
    }
}

impl fmt::Display for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn parse_host(input: &str, default_port: Option<u16>) -> Result<HostKey, HostError> {
    let s = input.trim();
    let invalid = |reason| HostError {
        input: input.to_owned(),
        reason,
    };
    let port_of = |p: Option<&str>| -> Result<u16, HostError> {
        match p {
            None => default_port.ok_or_else(|| invalid("a port is required")),
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(invalid("the port must be a number from 1 to 65535")),
                Ok(port) => Ok(port),
            },
        }
    };

    if s.is_empty() {
        return Err(invalid("it is empty"));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(|| invalid("missing `]`"))?;
        let addr: Ipv6Addr = inside
            .parse()
            .map_err(|_| invalid("brackets must contain an IPv6 address"))?;
        let port = match after {
            "" => port_of(None)?,
            _ => port_of(Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| invalid("expected `:port` after `]`"))?,
            ))?,
        };
        return Ok(HostKey {
            host: addr.to_string(),
            port,
        });
    }
    if let Ok(addr) = s.parse::<Ipv6Addr>() {
        return Ok(HostKey {
            host: addr.to_string(),
            port: port_of(None)?,
        });
    }
    let (host, port) = match s.split_once(':') {
        Some((_, rest)) if rest.contains(':') => {
            return Err(invalid(
                "an IPv6 address with a port must be written [address]:port",
            ));
        }
        Some((host, port)) => (host, port_of(Some(port))?),
        None => (s, port_of(None)?),
    };
    // A trailing dot names the same host (absolute DNS name); dropping it
    // keeps one pin per server.
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(invalid("the host name is empty"));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(invalid(
            "host names may only contain letters, digits, '-', '.' and '_' (use the xn-- form for international names)",
        ));
    }
    Ok(HostKey {
        host: host.to_ascii_lowercase(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> HostKey {
        HostKey::parse(s, 7777).expect("valid host")
    }

    #[test]
    fn host_parse_forms() {
        assert_eq!(
            host("Example.ORG"),
            HostKey {
                host: "example.org".into(),
                port: 7777
            }
        );
        assert_eq!(host("example.org:8080").port, 8080);
        assert_eq!(host("example.org.").host, "example.org");
        assert_eq!(host("192.0.2.7:1").to_string(), "192.0.2.7:1");
        assert_eq!(
            host("[2001:DB8:0::1]:8080").to_string(),
            "[2001:db8::1]:8080"
        );
        assert_eq!(host("[::1]").to_string(), "[::1]:7777");
        assert_eq!(host("::1").to_string(), "[::1]:7777");
        assert_eq!(host("  host:9 ").to_string(), "host:9");
    }

    #[test]
    fn host_parse_rejects_bad_input() {
        for bad in [
            "",
            "host:0",
            "host:65536",
            "host:x",
            "2001:db8::1:8080:zz",
            "a:b:c",
            "[1.2.3.4]",
            "[::1",
            "[::1]8080",
            "ho st",
            "host/x",
            ":80",
            "héllo",
        ] {
            let err = HostKey::parse(bad, 7777).expect_err(bad);
            assert!(err.to_string().contains("[ipv6]:port"), "{err}");
        }
    }

    #[test]
    fn host_from_str_requires_a_port() {
        assert!("example.org".parse::<HostKey>().is_err());
        assert!("[::1]".parse::<HostKey>().is_err());
        assert_eq!(
            "[::1]:5".parse::<HostKey>().expect("valid"),
            HostKey {
                host: "::1".into(),
                port: 5
            }
        );
    }
}
