//! Routes about the hub itself: health, the taskflow menu, plugins,
//! processors and their WebSocket, metrics, and the OpenAPI document.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::schema::{ErrorBody, Health};
use crate::auth::ADMIN_GROUP;
use crate::engine::catalog::{MenuNode, TaskflowGraph};
use crate::plugin::PluginStatus;
use crate::processors::{ProcessorStatus, session};
use crate::reload::{RollbackError, RolledBack};
use crate::storage::PluginVersionRecord;

/// Initial read buffer of a processor's WebSocket.
const SOCKET_BUFFER_BYTES: usize = 4096;

/// Checks that the hub can read its database.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "hub",
    responses(
        (status = 200, description = "The hub serves and its database answers", body = Health),
        (status = 500, description = "The database cannot be read", body = ErrorBody),
    )
)]
pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state
        .engine
        .storage()
        .ping()
        .await
        .map_err(|err| ApiError::internal(&err))?;
    Ok(Json(Health {
        status: "ok".into(),
        database: "ok".into(),
        plugins: state.registry.snapshot().plugins.len(),
    }))
}

/// Returns the start tasks as a tree, with the nodes above them.
#[utoipa::path(
    get,
    path = "/api/taskflows",
    tag = "taskflows",
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "The menu tree", body = Vec<MenuNode>),
        (status = 401, description = "No valid token or session", body = ErrorBody),
    )
)]
pub async fn taskflows(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Json<Vec<MenuNode>> {
    let catalog = &state.registry.snapshot().catalog;
    Json(if caller.is_dev() {
        catalog.menu()
    } else {
        catalog.menu_for(Some(&caller.groups))
    })
}

/// Returns the tasks of one taskflow and the `next` and `error` edges
/// between them, for drawing the flow.
#[utoipa::path(
    get,
    path = "/api/taskflows/{taskflowId}",
    tag = "taskflows",
    params(("taskflowId" = String, Path, description = "A taskflow id, e.g. `examples.story`")),
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 200, description = "The taskflow's graph", body = TaskflowGraph),
        (status = 400, description = "The id is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "No loaded task is below this id, or none you may start", body = ErrorBody),
    )
)]
pub async fn taskflow_graph(
    State(state): State<AppState>,
    Caller(caller): Caller,
    taskflow_id: Result<Path<String>, PathRejection>,
) -> Result<Json<TaskflowGraph>, ApiError> {
    let taskflow_id = taskflow_id.map(|Path(id)| id).map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            rejection.body_text(),
        )
    })?;
    let snapshot = state.registry.snapshot();
    let catalog = &snapshot.catalog;
    // A taskflow with no start task the caller may start is treated like
    // an unknown one, as a start of it would be.
    let visible = caller.is_dev() || catalog.may_start_below(&taskflow_id, &caller.groups);
    visible
        .then(|| catalog.graph(&taskflow_id))
        .flatten()
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no loaded task is below {taskflow_id}; GET /api/taskflows lists the taskflows"
            ))
        })
}

/// Returns every plugin file the hub has seen: the serving version, what
/// it exports, and the last load error.
#[utoipa::path(
    get,
    path = "/api/plugins",
    tag = "plugins",
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "The plugins, by name", body = Vec<PluginStatus>),
        (status = 401, description = "No valid token or session", body = ErrorBody),
    )
)]
pub async fn plugins(
    State(state): State<AppState>,
    Caller(_caller): Caller,
) -> Json<Vec<PluginStatus>> {
    Json(state.registry.statuses())
}

/// Returns every recorded version of a plugin, newest first: when it
/// loaded, when it stopped serving, and which version replaced it.
#[utoipa::path(
    get,
    path = "/api/plugins/{name}/versions",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 200, description = "The versions, newest first", body = Vec<PluginVersionRecord>),
        (status = 400, description = "The name is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "The hub never saw this plugin", body = ErrorBody),
    )
)]
pub async fn plugin_versions(
    State(state): State<AppState>,
    Caller(_caller): Caller,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<PluginVersionRecord>>, ApiError> {
    let name = name.map(|Path(name)| name).map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            rejection.body_text(),
        )
    })?;
    let versions = state
        .engine
        .storage()
        .plugin_versions(&name)
        .await
        .map_err(|err| ApiError::internal(&err))?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!(
            "the hub has no record of plugin `{name}`"
        )));
    }
    Ok(Json(versions))
}

/// Switches a plugin back to the version its serving version replaced, by
/// writing that version's file into the plugins folder.
#[utoipa::path(
    post,
    path = "/api/plugins/{name}/rollback",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "The plugin serves the earlier version", body = RolledBack),
        (status = 400, description = "The name is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "The plugin is not loaded", body = ErrorBody),
        (status = 409, description = "There is no earlier version to go back to", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Not in the admin group", body = ErrorBody),
    )
)]
pub async fn plugin_rollback(
    State(state): State<AppState>,
    Caller(caller): Caller,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<RolledBack>, ApiError> {
    if !caller.is_admin() {
        tracing::warn!(user_id = %caller.user_id, "rollback rejected: not in the admin group");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("only members of the `{ADMIN_GROUP}` group may roll plugins back"),
        ));
    }
    let name = name.map(|Path(name)| name).map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            rejection.body_text(),
        )
    })?;
    match state.reloader.rollback(&name).await {
        Ok(rolled_back) => Ok(Json(rolled_back)),
        Err(err @ RollbackError::NotLoaded(_)) => Err(ApiError::not_found(err.to_string())),
        Err(err @ (RollbackError::NoEarlier(_) | RollbackError::Missing(_))) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_earlier_version",
            err.to_string(),
        )),
        Err(err @ RollbackError::Failed(_)) => Err(ApiError::internal(&err)),
    }
}

/// Returns the connected processors: every one for members of the admin
/// group, and the caller's own (registered with their processor token)
/// for everyone else.
#[utoipa::path(
    get,
    path = "/api/processors",
    tag = "processors",
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "The processors, by id", body = Vec<ProcessorStatus>),
        (status = 401, description = "No valid token or session", body = ErrorBody),
    )
)]
pub async fn processors(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Json<Vec<ProcessorStatus>> {
    let owner = (!caller.is_admin()).then_some(caller.user_id.as_str());
    Json(state.engine.processors().statuses(owner))
}

/// Opens a processor connection (WebSocket); `docs/PROCESSORS.md`
/// describes the protocol.
#[utoipa::path(
    get,
    path = "/ws",
    tag = "processors",
    responses(
        (status = 101, description = "Switched to the WebSocket protocol"),
        (status = 400, description = "Not a valid WebSocket upgrade request", body = ErrorBody),
        (status = 426, description = "The connection cannot be upgraded", body = ErrorBody),
    )
)]
pub async fn processor_socket(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            "not_a_websocket",
            format!(
                "{}; processors connect here with a WebSocket client",
                rejection.body_text()
            ),
        )
    })?;
    let limit = state.sessions.max_message_bytes;
    // Idle processors are the common case: small buffers that grow with
    // the traffic keep a thousand of them cheap.
    Ok(upgrade
        .read_buffer_size(SOCKET_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            session::run(socket, address, state.engine, state.sessions, state.auth)
        }))
}

/// Renders the metrics in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "hub",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 500, description = "The database cannot be read", body = ErrorBody),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    // Queue depth is read at scrape time; an environment whose queue
    // emptied is reported as 0 rather than left at its last value.
    static REPORTED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let counts = state
        .engine
        .storage()
        .pending_counts()
        .await
        .map_err(|err| ApiError::internal(&err))?;
    {
        let mut reported = REPORTED.lock().expect("metrics lock poisoned");
        let reported = reported.get_or_insert_with(HashSet::new);
        for environment in reported.iter() {
            if !counts.iter().any(|(name, _)| name == environment) {
                crate::metrics::queue_depth(environment, 0);
            }
        }
        for (environment, count) in &counts {
            crate::metrics::queue_depth(environment, (*count).max(0) as u64);
            reported.insert(environment.clone());
        }
    }
    let text = state.metrics.render();
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Returns this document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "hub",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
pub async fn openapi(State(state): State<AppState>) -> Response {
    let document = state.openapi.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], document).into_response()
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route for {}; GET /api/openapi.json lists the API's routes",
        uri.path()
    ))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
