//! The HTTP API (axum): routes, shared state and the request-level layers.
//!
//! | method and path | what it does |
//! | --- | --- |
//! | `GET /healthz` | liveness and database check |
//! | `GET /api/taskflows` | the menu tree of start tasks |
//! | `GET /api/plugins` | loaded plugins, versions, exports and load errors |
//! | `POST /api/tasks` | `{"command": "start", "task": {"id", "input"}}` |
//! | `GET /api/tasks/{instanceId}` | one task instance, live or archived |
//! | `POST /api/tasks/{instanceId}` | `{"command": "update", "task": {...}}` |
//! | `GET /api/threads` | threads, newest first, paged |
//! | `GET /api/threads/{threadId}` | one thread with every task in order |
//! | `GET /api/processors` | connected processors |
//! | `GET /ws` | WebSocket for processors (see `docs/PROCESSORS.md`) |

mod body;
mod error;
mod routes;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::engine::Engine;
use crate::plugin::PluginRegistry;
use crate::processors::session::SessionConfig;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The task engine; all changes go through it.
    pub engine: Arc<Engine>,
    /// Loaded plugins and the catalog.
    pub registry: Arc<PluginRegistry>,
    /// Settings of processor connections.
    pub sessions: Arc<SessionConfig>,
}

/// Builds the router. `max_body_bytes` limits request bodies.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(routes::health))
        .route("/api/taskflows", get(routes::taskflows))
        .route("/api/plugins", get(routes::plugins))
        .route("/api/tasks", axum::routing::post(routes::start_task))
        .route(
            "/api/tasks/{instance_id}",
            get(routes::get_task).post(routes::update_task),
        )
        .route("/api/threads", get(routes::list_threads))
        .route("/api/threads/{thread_id}", get(routes::get_thread))
        .route("/api/processors", get(routes::processors))
        .route("/ws", get(routes::processor_socket))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
