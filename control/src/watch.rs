//! Convergence: a thread that tells its process when control documents may have changed.
//! With a notification channel (Redis) it subscribes and reports each notified document at
//! once; after every (re)subscription and at least once per poll period it reports "check
//! everything", so a notification missed while disconnected delays a change by one period
//! at most. Without a channel (files) it reports "check everything" every period.

use crate::Backend;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the watcher reports: `Some(doc)` for a notified document, `None` for "check every
/// document". The callback returns `false` to stop the watcher.
pub type OnChange = Box<dyn Fn(Option<&str>) -> bool + Send>;

/// Starts the watcher thread for `backend`, checking everything at least every `period`.
pub fn spawn(backend: Arc<dyn Backend>, period: Duration, on_change: OnChange) -> std::io::Result<()> {
    let period = period.max(Duration::from_millis(10));
    std::thread::Builder::new()
        .name("control-watch".into())
        .spawn(move || match backend.notifications() {
            None => loop {
                std::thread::sleep(period);
                if !on_change(None) {
                    return;
                }
            },
            Some((url, channel)) => subscribe_loop(&url, &channel, period, &*on_change),
        })
        .map(|_| ())
}

#[derive(serde::Deserialize)]
struct Notice {
    doc: String,
}

fn subscribe_loop(url: &str, channel: &str, period: Duration, on_change: &dyn Fn(Option<&str>) -> bool) {
    let place = invariant_core::secret::redact_url(url);
    let mut last_full = Instant::now();
    let mut failing = false;
    loop {
        let connected = (|| -> redis::RedisResult<redis::Connection> {
            let client = redis::Client::open(url)?;
            let conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
            conn.set_read_timeout(Some(period))?;
            Ok(conn)
        })();
        // The subscription lives as long as this `PubSub` (dropping one unsubscribes).
        let mut conn = connected;
        let subscribed = match conn.as_mut() {
            Ok(conn) => {
                let mut pubsub = conn.as_pubsub();
                pubsub.subscribe(channel).map(|()| pubsub)
            }
            Err(e) => Err(e.clone()),
        };
        let mut pubsub = match subscribed {
            Ok(pubsub) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(redis = %place, "control notifications back; re-reading every revision");
                }
                pubsub
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(redis = %place, error = %e, "control notifications unavailable; polling");
                }
                failing = true;
                // Still poll: the documents may be readable while the subscription is not.
                if last_full.elapsed() >= period {
                    last_full = Instant::now();
                    if !on_change(None) {
                        return;
                    }
                }
                std::thread::sleep(period.min(Duration::from_millis(500)));
                continue;
            }
        };
        // Subscribed (again): whatever was published while away is caught up now.
        last_full = Instant::now();
        if !on_change(None) {
            return;
        }
        loop {
            match pubsub.get_message() {
                Ok(msg) => {
                    let doc = msg
                        .get_payload::<String>()
                        .ok()
                        .and_then(|p| serde_json::from_str::<Notice>(&p).ok())
                        .map(|n| n.doc);
                    if !on_change(doc.as_deref()) {
                        return;
                    }
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => {
                    tracing::warn!(redis = %place, error = %e, "control subscription lost; reconnecting");
                    failing = true;
                    break;
                }
            }
            if last_full.elapsed() >= period {
                last_full = Instant::now();
                if !on_change(None) {
                    return;
                }
            }
        }
    }
}
