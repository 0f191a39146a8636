//! Wall-clock time as the protocol carries it: milliseconds since the Unix
//! epoch, and how a person reads such a time.
//!
//! One place for both, because the server stamps what it stores (claims,
//! bans, messages) and clients and the server alike print those stamps in
//! refusals and answers: the same instant must read the same everywhere.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in ms since the Unix epoch; 0 on a clock set before 1970, the far
/// future saturating rather than wrapping.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `ms` as a UTC date and time to the minute (`2026-11-29 22:40 UTC`), the
/// form refusals and answers use; a stamp no calendar can show reads as
/// "an unknown time" rather than failing, since it comes off the network.
pub fn utc_minute(ms: u64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    i128::from(ms)
        .checked_mul(1_000_000)
        .and_then(|ns| time::OffsetDateTime::from_unix_timestamp_nanos(ns).ok())
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "an unknown time".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_as_utc_to_the_minute() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_minute(1_796_000_000_000), "2026-11-30 00:53 UTC");
        assert_eq!(utc_minute(u64::MAX), "an unknown time");
        assert!(now_ms() > 1_700_000_000_000);
    }
}
