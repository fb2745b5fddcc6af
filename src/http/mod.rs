//! The HTTP API (axum): routes, shared state, the OpenAPI document and the
//! request-level layers (request ids, tracing, metrics, body limit).
//!
//! Every route is registered through [`OpenApiRouter`], so the document at
//! `GET /api/openapi.json` lists exactly the routes the router serves.

mod auth;
mod body;
mod error;
mod live;
mod schema;
mod system;
mod tasks;
mod ui;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::Response;
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;

use crate::engine::Engine;
use crate::plugin::PluginRegistry;
use crate::processors::session::SessionConfig;

/// The header that carries a request's id, in and out.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The task engine; all changes go through it.
    pub engine: Arc<Engine>,
    /// Loaded plugins and the catalog.
    pub registry: Arc<PluginRegistry>,
    /// Settings of processor connections.
    pub sessions: Arc<SessionConfig>,
    /// The metrics recorder, rendered by `GET /metrics`.
    pub metrics: PrometheusHandle,
    /// The OpenAPI document as JSON, set once the router is built.
    pub openapi: Arc<OnceLock<String>>,
    /// The plugins folder's keeper, for rollbacks.
    pub reloader: Arc<crate::reload::Reloader>,
    /// Authentication: tokens, sessions, dev mode, rate limits.
    pub auth: Arc<crate::auth::Auth>,
}

/// The document's fixed parts; the paths come from the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "taskhub",
        description = "A task hub: taskflows and environments as WebAssembly components, tasks in SQLite.",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "tasks", description = "Start and update tasks"),
        (name = "threads", description = "Read threads and their tasks"),
        (name = "taskflows", description = "The start tasks users can launch"),
        (name = "plugins", description = "Loaded plugin components"),
        (name = "processors", description = "Remote processors over WebSocket"),
        (name = "hub", description = "Health, metrics, events and this document"),
        (name = "ui", description = "The browser UI"),
        (name = "session", description = "Log in and out of the browser UI"),
    ),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

/// Declares the two ways to authenticate: a bearer token and the browser
/// session cookie.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A token from `taskhub token create USER`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                auth::SESSION_COOKIE,
                "The browser session from POST /api/session",
            ))),
        );
    }
}

/// Builds the router and its OpenAPI document. `max_body_bytes` limits
/// request bodies.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let (router, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(system::health))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi))
        .routes(routes!(ui::index))
        .routes(routes!(ui::script))
        .routes(routes!(ui::style))
        .routes(routes!(live::events))
        .routes(routes!(auth::me, auth::login, auth::logout))
        .routes(routes!(system::taskflows))
        .routes(routes!(system::taskflow_graph))
        .routes(routes!(system::plugins))
        .routes(routes!(system::plugin_versions))
        .routes(routes!(system::plugin_rollback))
        .routes(routes!(system::processors))
        .routes(routes!(system::processor_socket))
        .routes(routes!(tasks::start_task))
        .routes(routes!(tasks::get_task, tasks::update_task))
        .routes(routes!(tasks::list_threads))
        .routes(routes!(tasks::get_thread))
        .split_for_parts();
    let json = document
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    let _ = state.openapi.set(json);

    router
        .fallback(system::not_found)
        .method_not_allowed_fallback(system::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(record_request))
        .layer(
            // Outermost first: the id is set before the span that logs it
            // is made, and copied to the response at the end.
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
        )
        .with_state(state)
}

/// Makes the span every log line of a request is written in, with the
/// request id as a field.
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        uri = %request.uri().path(),
    )
}

/// Counts the request and its duration by matched route, method and status.
async fn record_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    crate::metrics::http_request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
