//! Replica cache coordination over Redis pub/sub (channel `inv:events`): when one server
//! reloads or unloads a model's files, it publishes an event; the other replicas drop their L1
//! cache entries of that model. (Lifecycle changes travel through the shared control state,
//! `invariant_control`, with its own notification and polling.) Without `cache.redis_url` a
//! server runs alone and publishes nothing.

use crate::InferenceService;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The pub/sub channel.
pub const CHANNEL: &str = "inv:events";

/// One event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// The publishing server (its own events are ignored).
    pub origin: String,
    /// The model whose serving changed.
    pub model: String,
    /// `reload` (or `unload`).
    pub kind: String,
}

/// A unique id for this process.
pub fn server_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Publishes an event (best effort: a missing Redis only means no other replica hears it).
pub async fn publish(state: &InferenceService, model: &str, kind: &str) {
    let Some(client) = &state.events else { return };
    let event = Event {
        origin: state.server_id.clone(),
        model: model.to_string(),
        kind: kind.to_string(),
    };
    let Ok(payload) = serde_json::to_string(&event) else {
        return;
    };
    let sent = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        conn.publish::<_, _, ()>(CHANNEL, payload).await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(1), sent).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot publish the {kind} event of {model}"),
        Err(_) => tracing::warn!("publishing the {kind} event of {model} timed out"),
    }
}

/// Applies an event from another replica: drops the model's L1 entries in every corridor.
/// (Registry changes reach every replica through the control state itself.)
pub fn apply(state: &InferenceService, event: &Event) {
    if event.origin == state.server_id {
        return;
    }
    for corridor in state.corridors.values() {
        corridor.cache.invalidate_model(&event.model);
    }
    tracing::info!(model = %event.model, kind = %event.kind, origin = %event.origin, "applied an event of another replica");
}

/// Subscribes to the channel for as long as the process runs, reconnecting after failures.
pub fn spawn_subscriber(state: Arc<InferenceService>) {
    let Some(client) = state.events.clone() else { return };
    tokio::spawn(async move {
        use futures_util::StreamExt;
        loop {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if let Err(e) = pubsub.subscribe(CHANNEL).await {
                        tracing::warn!(error = %e, "cannot subscribe to {CHANNEL}");
                    } else {
                        tracing::info!("subscribed to {CHANNEL}");
                        let mut messages = pubsub.into_on_message();
                        while let Some(msg) = messages.next().await {
                            let Ok(payload) = msg.get_payload::<String>() else {
                                continue;
                            };
                            match serde_json::from_str::<Event>(&payload) {
                                Ok(event) => apply(&state, &event),
                                Err(e) => tracing::warn!(error = %e, "ignoring a malformed event"),
                            }
                        }
                        tracing::warn!("the {CHANNEL} subscription ended; reconnecting");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "events Redis unavailable; retrying"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
}
