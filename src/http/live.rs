//! `GET /api/events`: the hub's events as server-sent events, for the
//! browser's live views.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::schema::ErrorBody;
use crate::events::Event;

/// Filter of `GET /api/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventFilter {
    /// Only task and thread events of this thread (plugin and processor
    /// events always come).
    thread_id: Option<String>,
}

/// Streams the hub's events as they happen.
///
/// Each event's `event` field is its kind (`taskChanged`, `threadEnded`,
/// `pluginLoaded`, `pluginRejected`, `pluginUnloaded`, `processorJoined`,
/// `processorLeft`) and its data the JSON of the event. A client that falls
/// behind gets a `resync` event with the number of events it missed, and
/// should read the state again. The stream ends when the hub shuts down.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "hub",
    params(EventFilter),
    responses(
        (status = 200, description = "A stream of server-sent events", body = String, content_type = "text/event-stream"),
        (status = 400, description = "Invalid filter", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    filter: Result<Query<EventFilter>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(filter) = filter.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!(
                "{}; use ?threadId=THREAD_ID or nothing",
                rejection.body_text()
            ),
        )
    })?;
    let receiver = state.engine.events().subscribe();
    let shutdown = state.engine.shutdown_signal();
    let stream = futures_util::stream::unfold(
        (receiver, shutdown, filter.thread_id),
        |(mut receiver, mut shutdown, thread_id)| async move {
            loop {
                if *shutdown.borrow() {
                    return None;
                }
                let received = tokio::select! {
                    received = receiver.recv() => received,
                    _ = shutdown.changed() => return None,
                };
                let event = match received {
                    Ok(event) => event,
                    Err(RecvError::Lagged(missed)) => {
                        let event = SseEvent::default()
                            .event("resync")
                            .data(format!("{{\"missed\":{missed}}}"));
                        return Some((Ok(event), (receiver, shutdown, thread_id)));
                    }
                    Err(RecvError::Closed) => return None,
                };
                if !matches_thread(&event, thread_id.as_deref()) {
                    continue;
                }
                let Some(event) = to_sse(&event) else {
                    continue;
                };
                return Some((Ok(event), (receiver, shutdown, thread_id)));
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn matches_thread(event: &Event, thread_id: Option<&str>) -> bool {
    let Some(wanted) = thread_id else {
        return true;
    };
    match event {
        Event::TaskChanged { task } => task.thread_id == wanted,
        Event::ThreadEnded { thread_id, .. } => thread_id == wanted,
        _ => true,
    }
}

fn to_sse(event: &Event) -> Option<SseEvent> {
    let data = serde_json::to_value(event).ok()?;
    let kind = data.get("type")?.as_str()?.to_owned();
    SseEvent::default().event(kind).json_data(data).ok()
}
