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

use std::collections::HashMap;

use super::AppState;
use super::auth::{Caller, can_access, hidden};
use super::error::ApiError;
use super::schema::ErrorBody;
use crate::auth::Principal;
use crate::events::Event;
use crate::storage::Storage;

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
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 200, description = "A stream of server-sent events", body = String, content_type = "text/event-stream"),
        (status = 400, description = "Invalid filter", body = ErrorBody),
        (status = 404, description = "`threadId` names no thread you may see", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    Caller(caller): Caller,
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
    if let Some(thread_id) = &filter.thread_id
        && !caller.is_dev()
    {
        let thread = state
            .engine
            .storage()
            .thread(thread_id)
            .await
            .map_err(|err| ApiError::internal(&err))?;
        if !thread.is_some_and(|thread| can_access(&caller, &thread)) {
            return Err(hidden(&caller, "thread", thread_id));
        }
    }
    let receiver = state.engine.events().subscribe();
    let shutdown = state.engine.shutdown_signal();
    let visible = Visibility {
        caller,
        storage: state.engine.storage().clone(),
        auth: state.auth.clone(),
        known: HashMap::new(),
    };
    let stream = futures_util::stream::unfold(
        (receiver, shutdown, filter.thread_id, visible),
        |(mut receiver, mut shutdown, thread_id, mut visible)| async move {
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
                        return Some((Ok(event), (receiver, shutdown, thread_id, visible)));
                    }
                    Err(RecvError::Closed) => return None,
                };
                // A stream opened in dev mode ends with it, because it
                // has no credential to check once users exist.
                if visible.caller.is_dev() && !visible.auth.refresh_dev().await.unwrap_or(false) {
                    return None;
                }
                if !matches_thread(&event, thread_id.as_deref()) || !visible.allows(&event).await {
                    continue;
                }
                let Some(event) = to_sse(&event) else {
                    continue;
                };
                return Some((Ok(event), (receiver, shutdown, thread_id, visible)));
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The filter of threads whose events a caller may receive, with the
/// results already looked up.
struct Visibility {
    caller: Principal,
    storage: Storage,
    auth: std::sync::Arc<crate::auth::Auth>,
    /// Thread id → whether the caller may see it.
    known: HashMap<String, bool>,
}

impl Visibility {
    async fn allows(&mut self, event: &Event) -> bool {
        if self.caller.is_dev() {
            return true;
        }
        let thread_id = match event {
            Event::TaskChanged { task } => &task.thread_id,
            Event::ThreadEnded { thread_id, .. } => thread_id,
            _ => return true,
        };
        if let Some(allowed) = self.known.get(thread_id) {
            return *allowed;
        }
        if self.known.len() >= 4096 {
            // A stream open for days meets many threads, so start over
            // rather than grow without end.
            self.known.clear();
        }
        let allowed = matches!(
            self.storage.thread(thread_id).await,
            Ok(Some(thread)) if can_access(&self.caller, &thread)
        );
        self.known.insert(thread_id.clone(), allowed);
        allowed
    }
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
