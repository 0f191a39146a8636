//! Following a key-value bucket for as long as its reader lives: every
//! entry already there, then every change, in revision order; after NATS
//! went away, watching again from the revision after the last one seen, so
//! that nothing is missed and nothing is taken twice. Presence
//! ([`super::presence`]), the rooms' members ([`super::members`]) and the
//! rooms' descriptions ([`super::rooms`]) each follow their bucket so.

use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;

/// How long to wait before watching again after NATS went away.
pub const REWATCH: Duration = Duration::from_millis(500);

/// Hands every entry of `store` (`what`, for the log) to `on`, until `on`
/// breaks or `alive` says the reader is gone (asked whenever the watch
/// ended).
pub async fn bucket<F, Fut>(store: kv::Store, what: &str, alive: impl Fn() -> bool, mut on: F)
where
    F: FnMut(kv::Entry) -> Fut,
    Fut: Future<Output = ControlFlow<()>>,
{
    let mut last = 0u64;
    loop {
        let watched = if last == 0 {
            store.watch_with_history(">").await
        } else {
            store.watch_all_from_revision(last + 1).await
        };
        match watched {
            Ok(mut changes) => {
                while let Some(change) = changes.next().await {
                    let entry = match change {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::debug!("watching {what}: {e}");
                            break;
                        }
                    };
                    last = last.max(entry.revision);
                    if on(entry).await.is_break() {
                        return;
                    }
                }
            }
            Err(e) => tracing::debug!("cannot watch {what}: {e}"),
        }
        if !alive() {
            return;
        }
        tokio::time::sleep(REWATCH).await;
    }
}
