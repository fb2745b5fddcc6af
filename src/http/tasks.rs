//! Routes that start, read and update tasks and threads. Each translates
//! the request into an engine call or a read; none writes task state
//! itself.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{Caller, can_access, check_rate, hidden};
use super::body::JsonBody;
use super::error::ApiError;
use super::schema::{ErrorBody, StartCommand, ThreadList, UpdateCommand};
use crate::auth::Principal;
use crate::engine::StartRequest;
use crate::engine::merge::json_kind;
use crate::engine::task::{Task, rfc3339};
use crate::storage::{TaskRecord, ThreadRecord};

/// Threads per page when `limit` is not given.
const DEFAULT_PAGE: u32 = 50;

/// Largest page of threads.
const MAX_PAGE: u32 = 500;

/// Starts a thread with a start task.
///
/// The answer is the first task as stored. The hub then runs the thread's
/// tasks on the providers of their environments.
#[utoipa::path(
    post,
    path = "/api/tasks",
    tag = "tasks",
    request_body = StartCommand,
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 201, description = "The thread's first task", body = Task),
        (status = 200, description = "A running thread of this task was joined (thread modes user, group, session); its latest task", body = Task),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 429, description = "Too many starts and updates; see Retry-After", body = ErrorBody),
        (status = 400, description = "Not JSON, or not a `start` command", body = ErrorBody),
        (status = 404, description = "No loaded taskflow defines the id", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not `application/json`", body = ErrorBody),
        (status = 422, description = "Not a valid start request", body = ErrorBody),
    )
)]
pub async fn start_task(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    check_rate(&state, &caller)?;
    let task = command_task(
        &body,
        "start",
        "POST /api/tasks/{instanceId} takes `update`",
    )?;
    for field in task.keys() {
        if field != "id" && field != "input" && field != "groupId" {
            return Err(ApiError::invalid_task(format!(
                "field `{field}` cannot be set when starting a task; send `id`, `input` and \
                 optionally `groupId`"
            )));
        }
    }
    let group_id = match task.get("groupId") {
        None | Some(Value::Null) => None,
        Some(Value::String(group)) => Some(group.clone()),
        Some(other) => {
            return Err(ApiError::invalid_task(format!(
                "`task.groupId` must be a group name, not {}",
                json_kind(other)
            )));
        }
    };
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
            user_id: caller.user_id.clone(),
            groups: caller.groups.clone(),
            unrestricted: caller.is_dev(),
            group_id,
            session: caller.credential.clone(),
            profile: caller.profile.clone(),
        })
        .await?;
    let status = if started.rejoined {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(started.task)))
}

/// Updates a live task: merges the fields, and finishes the task when
/// `state.done` is true or `error` is set.
#[utoipa::path(
    post,
    path = "/api/tasks/{instanceId}",
    tag = "tasks",
    params(("instanceId" = String, Path, description = "The task instance")),
    request_body = UpdateCommand,
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "The task after the update", body = Task),
        (status = 400, description = "Not JSON, or not an `update` command", body = ErrorBody),
        (status = 404, description = "No such task instance", body = ErrorBody),
        (status = 409, description = "Based on an old version, or the task is finished", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 429, description = "Too many starts and updates; see Retry-After", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not `application/json`", body = ErrorBody),
        (status = 422, description = "Not a valid update", body = ErrorBody),
    )
)]
pub async fn update_task(
    State(state): State<AppState>,
    Caller(caller): Caller,
    instance_id: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody,
) -> Result<Json<Task>, ApiError> {
    let instance_id = path_value(instance_id)?;
    check_rate(&state, &caller)?;
    authorize_task(&state, &caller, &instance_id).await?;
    let task = command_task(&body, "update", "POST /api/tasks takes `start`")?;
    let updated = state
        .engine
        .update(&instance_id, &Value::Object(task.clone()))
        .await?;
    Ok(Json(updated))
}

/// Returns one task instance, live or archived.
#[utoipa::path(
    get,
    path = "/api/tasks/{instanceId}",
    tag = "tasks",
    params(("instanceId" = String, Path, description = "The task instance")),
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 200, description = "The task", body = Task),
        (status = 400, description = "The id is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "No such task instance", body = ErrorBody),
    )
)]
pub async fn get_task(
    State(state): State<AppState>,
    Caller(caller): Caller,
    instance_id: Result<Path<String>, PathRejection>,
) -> Result<Json<Task>, ApiError> {
    let instance_id = path_value(instance_id)?;
    let record = authorize_task(&state, &caller, &instance_id).await?;
    Ok(Json(task_from_record(&record)?))
}

/// One thread with its tasks in order.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThreadView {
    /// The thread.
    #[serde(flatten)]
    thread: ThreadSummary,
    /// Its tasks, in order.
    tasks: Vec<Task>,
}

/// A thread without its tasks.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThreadSummary {
    /// The thread.
    thread_id: String,
    /// The start task that began it.
    start_task_id: String,
    /// `running`, `done`, or `failed` once it ended after a failure.
    status: String,
    /// Its first failure.
    error: Option<String>,
    /// Who started it.
    user_id: Option<String>,
    /// The group it runs for.
    group_id: Option<String>,
    /// Whose one thread it is: `new` (a thread per start), `user`,
    /// `group` (shared by the group's members) or `session`.
    mode: String,
    /// Task instances so far.
    task_count: i64,
    /// RFC 3339 time it began.
    created_at: String,
    /// RFC 3339 time of its last change.
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
            mode: thread.mode,
            task_count: thread.task_count,
            created_at: rfc3339(thread.created_at),
            updated_at: rfc3339(thread.updated_at),
        }
    }
}

/// Returns a thread with every task in order, each with its output.
#[utoipa::path(
    get,
    path = "/api/threads/{threadId}",
    tag = "threads",
    params(("threadId" = String, Path, description = "The thread")),
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 200, description = "The thread and its tasks", body = ThreadView),
        (status = 400, description = "The id is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "No such thread", body = ErrorBody),
    )
)]
pub async fn get_thread(
    State(state): State<AppState>,
    Caller(caller): Caller,
    thread_id: Result<Path<String>, PathRejection>,
) -> Result<Json<ThreadView>, ApiError> {
    let thread_id = path_value(thread_id)?;
    let storage = state.engine.storage();
    let thread = storage
        .thread(&thread_id)
        .await
        .map_err(|err| ApiError::internal(&err))?
        .filter(|thread| can_access(&caller, thread))
        .ok_or_else(|| hidden(&caller, "thread", &thread_id))?;
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
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ThreadPage {
    /// Threads per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Return threads older than this thread id (the `next` of the
    /// previous page).
    before: Option<String>,
}

/// Lists threads, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/threads",
    tag = "threads",
    params(ThreadPage),
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 200, description = "A page of threads", body = ThreadList),
        (status = 400, description = "Invalid paging parameters", body = ErrorBody),
        (status = 404, description = "`before` names no thread", body = ErrorBody),
    )
)]
pub async fn list_threads(
    State(state): State<AppState>,
    Caller(caller): Caller,
    page: Result<Query<ThreadPage>, QueryRejection>,
) -> Result<Json<ThreadList>, ApiError> {
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
                .filter(|thread| {
                    let allowed = can_access(&caller, thread);
                    if !allowed {
                        hidden(&caller, "thread", thread_id);
                    }
                    allowed
                })
                .ok_or_else(|| {
                    ApiError::not_found(format!("no thread {thread_id} to page before"))
                })?,
        ),
        None => None,
    };
    let threads = if caller.is_dev() {
        storage.threads(limit, cursor.as_ref()).await
    } else {
        storage
            .threads_of(&caller.user_id, &caller.groups, limit, cursor.as_ref())
            .await
    }
    .map_err(|err| ApiError::internal(&err))?;
    let next = (threads.len() == limit as usize)
        .then(|| threads.last().map(|thread| thread.thread_id.clone()))
        .flatten();
    let threads = threads.into_iter().map(Into::into).collect();
    Ok(Json(ThreadList { threads, next }))
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

/// Reads task `instance_id` and checks the caller may see its thread.
/// Otherwise returns 404, as for an unknown id.
async fn authorize_task(
    state: &AppState,
    caller: &Principal,
    instance_id: &str,
) -> Result<TaskRecord, ApiError> {
    let storage = state.engine.storage();
    let record = storage
        .task(instance_id)
        .await
        .map_err(|err| ApiError::internal(&err))?
        .map(|(_, record)| record)
        .ok_or_else(|| ApiError::not_found(format!("no task instance {instance_id}")))?;
    if !caller.is_dev() {
        let thread = storage
            .thread(&record.thread_id)
            .await
            .map_err(|err| ApiError::internal(&err))?;
        if !thread.is_some_and(|thread| can_access(caller, &thread)) {
            return Err(hidden(caller, "task instance", instance_id));
        }
    }
    Ok(record)
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
