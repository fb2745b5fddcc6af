//! Route handlers. Each translates a request into an engine call or a read
//! and the result into JSON; none writes task state itself.

use axum::Json;
use std::net::SocketAddr;

use axum::extract::rejection::PathRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AppState;
use super::body::JsonBody;
use super::error::ApiError;
use crate::engine::StartRequest;
use crate::engine::merge::json_kind;
use crate::engine::task::{Task, rfc3339};
use crate::processors::session;
use crate::storage::{TaskRecord, ThreadRecord};

/// Threads per page when `limit` is not given.
const DEFAULT_PAGE: u32 = 50;

/// Largest page of threads.
const MAX_PAGE: u32 = 500;

/// Initial read buffer of a processor's WebSocket.
const SOCKET_BUFFER_BYTES: usize = 4096;

pub async fn health(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state
        .engine
        .storage()
        .ping()
        .await
        .map_err(|err| ApiError::internal(&err))?;
    let plugins = state.registry.snapshot().plugins.len();
    Ok(Json(
        json!({ "status": "ok", "database": "ok", "plugins": plugins }),
    ))
}

pub async fn taskflows(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.registry.snapshot().catalog.menu())
}

pub async fn plugins(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.registry.statuses())
}

pub async fn processors(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.engine.processors().statuses())
}

pub async fn processor_socket(
    State(state): State<AppState>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    upgrade: WebSocketUpgrade,
) -> impl IntoResponse {
    let limit = state.sessions.max_message_bytes;
    // Idle processors are the common case: small buffers that grow with
    // the traffic keep a thousand of them cheap.
    upgrade
        .read_buffer_size(SOCKET_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| session::run(socket, address, state.engine, state.sessions))
}

pub async fn start_task(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let task = command_task(
        &body,
        "start",
        "POST /api/tasks/{instanceId} takes `update`",
    )?;
    for field in task.keys() {
        if field != "id" && field != "input" {
            return Err(ApiError::invalid_task(format!(
                "field `{field}` cannot be set when starting a task; send only `id` and `input`"
            )));
        }
    }
    let id = match task.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        Some(Value::String(_)) => {
            return Err(ApiError::invalid_task(
                "`task.id` is empty: name the start task, e.g. \"examples.story.start\"",
            ));
        }
        Some(other) => {
            return Err(ApiError::invalid_task(format!(
                "`task.id` must be a task id string such as \"examples.story.start\", not {}",
                json_kind(other)
            )));
        }
        None => {
            return Err(ApiError::invalid_task(
                "missing `task.id`: name the start task, e.g. \"examples.story.start\"",
            ));
        }
    };
    let input = task.get("input").cloned().unwrap_or(Value::Null);
    let started = state
        .engine
        .start(StartRequest {
            id,
            input,
            user_id: None,
            group_id: None,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(started)))
}

pub async fn update_task(
    State(state): State<AppState>,
    instance_id: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody,
) -> Result<Json<Task>, ApiError> {
    let instance_id = path_value(instance_id)?;
    let task = command_task(&body, "update", "POST /api/tasks takes `start`")?;
    let updated = state
        .engine
        .update(&instance_id, &Value::Object(task.clone()))
        .await?;
    Ok(Json(updated))
}

pub async fn get_task(
    State(state): State<AppState>,
    instance_id: Result<Path<String>, PathRejection>,
) -> Result<Json<Task>, ApiError> {
    let instance_id = path_value(instance_id)?;
    let (_, record) = state
        .engine
        .storage()
        .task(&instance_id)
        .await
        .map_err(|err| ApiError::internal(&err))?
        .ok_or_else(|| ApiError::not_found(format!("no task instance {instance_id}")))?;
    Ok(Json(task_from_record(&record)?))
}

/// One thread with its tasks in order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadView {
    #[serde(flatten)]
    thread: ThreadSummary,
    tasks: Vec<Task>,
}

/// A thread without its tasks.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadSummary {
    thread_id: String,
    start_task_id: String,
    status: String,
    error: Option<String>,
    user_id: Option<String>,
    group_id: Option<String>,
    task_count: i64,
    created_at: String,
    updated_at: String,
}

impl From<ThreadRecord> for ThreadSummary {
    fn from(thread: ThreadRecord) -> Self {
        Self {
            thread_id: thread.thread_id,
            start_task_id: thread.start_task_id,
            status: thread.status,
            error: thread.error,
            user_id: thread.user_id,
            group_id: thread.group_id,
            task_count: thread.task_count,
            created_at: rfc3339(thread.created_at),
            updated_at: rfc3339(thread.updated_at),
        }
    }
}

pub async fn get_thread(
    State(state): State<AppState>,
    thread_id: Result<Path<String>, PathRejection>,
) -> Result<Json<ThreadView>, ApiError> {
    let thread_id = path_value(thread_id)?;
    let storage = state.engine.storage();
    let thread = storage
        .thread(&thread_id)
        .await
        .map_err(|err| ApiError::internal(&err))?
        .ok_or_else(|| ApiError::not_found(format!("no thread {thread_id}")))?;
    let records = storage
        .thread_tasks(&thread_id)
        .await
        .map_err(|err| ApiError::internal(&err))?;
    let tasks = records
        .iter()
        .map(task_from_record)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(ThreadView {
        thread: thread.into(),
        tasks,
    }))
}

/// Paging parameters of `GET /api/threads`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreadPage {
    /// Threads per page, 1 to 500.
    limit: Option<u32>,
    /// Return threads older than this thread id (the `next` of the
    /// previous page).
    before: Option<String>,
}

pub async fn list_threads(
    State(state): State<AppState>,
    page: Result<Query<ThreadPage>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(page) = page.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!(
                "{}; use ?limit=1..{MAX_PAGE}&before=THREAD_ID",
                rejection.body_text()
            ),
        )
    })?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("`limit` must be between 1 and {MAX_PAGE}, got {limit}"),
        ));
    }
    let storage = state.engine.storage();
    let cursor = match &page.before {
        Some(thread_id) => Some(
            storage
                .thread(thread_id)
                .await
                .map_err(|err| ApiError::internal(&err))?
                .ok_or_else(|| {
                    ApiError::not_found(format!("no thread {thread_id} to page before"))
                })?,
        ),
        None => None,
    };
    let threads = storage
        .threads(limit, cursor.as_ref())
        .await
        .map_err(|err| ApiError::internal(&err))?;
    let next = (threads.len() == limit as usize)
        .then(|| threads.last().map(|thread| thread.thread_id.clone()))
        .flatten();
    let threads: Vec<ThreadSummary> = threads.into_iter().map(Into::into).collect();
    Ok(Json(json!({ "threads": threads, "next": next })))
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route for {}; the README lists the API's routes",
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

/// Checks the command envelope and returns its task object.
fn command_task<'a>(
    body: &'a Value,
    expected: &str,
    other_route: &str,
) -> Result<&'a serde_json::Map<String, Value>, ApiError> {
    let Value::Object(fields) = body else {
        return Err(ApiError::unknown_command(format!(
            "the body must be an object like {{\"command\": \"{expected}\", \"task\": {{...}}}}, not {}",
            json_kind(body)
        )));
    };
    match fields.get("command") {
        Some(Value::String(command)) if command == expected => {}
        Some(Value::String(command)) => {
            return Err(ApiError::unknown_command(format!(
                "unknown command `{command}` for this route, which takes `{expected}`; {other_route}"
            )));
        }
        Some(other) => {
            return Err(ApiError::unknown_command(format!(
                "`command` must be the string \"{expected}\", not {}",
                json_kind(other)
            )));
        }
        None => {
            return Err(ApiError::unknown_command(format!(
                "missing `command`: send {{\"command\": \"{expected}\", \"task\": {{...}}}}"
            )));
        }
    }
    for field in fields.keys() {
        if field != "command" && field != "task" {
            return Err(ApiError::unknown_command(format!(
                "unknown field `{field}` beside `command` and `task`"
            )));
        }
    }
    match fields.get("task") {
        Some(Value::Object(task)) => Ok(task),
        Some(other) => Err(ApiError::invalid_task(format!(
            "`task` must be an object, not {}",
            json_kind(other)
        ))),
        None => Err(ApiError::invalid_task(format!(
            "missing `task`: send {{\"command\": \"{expected}\", \"task\": {{...}}}}"
        ))),
    }
}

/// Returns a path parameter, or a JSON 400 when it is not valid UTF-8.
fn path_value(value: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    value.map(|Path(value)| value).map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("{}; ids are ASCII", rejection.body_text()),
        )
    })
}

fn task_from_record(record: &TaskRecord) -> Result<Task, ApiError> {
    serde_json::from_str(&record.body).map_err(|err| {
        ApiError::internal(&format!(
            "stored task {} is unreadable: {err}",
            record.instance_id
        ))
    })
}
