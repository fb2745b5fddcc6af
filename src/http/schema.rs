//! Types that exist to describe request and response bodies in the OpenAPI
//! document. The handlers parse bodies themselves, to give precise errors;
//! these types say what the handlers accept.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::tasks::ThreadSummary;

/// Every error response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The code and message of an error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code for programs, e.g. `version_conflict`.
    #[schema(example = "version_conflict")]
    pub code: String,
    /// What was wrong, on which value, and what to do.
    pub message: String,
}

/// The `command` of a start request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartVerb {
    /// Start a thread.
    Start,
}

/// The `command` of an update request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpdateVerb {
    /// Update a task.
    Update,
}

/// Body of `POST /api/tasks`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartCommand {
    /// Always `start`.
    pub command: StartVerb,
    /// The start task.
    pub task: StartTask,
}

/// The task of a start request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartTask {
    /// Id of a start task, as listed by `GET /api/taskflows`.
    #[schema(example = "examples.story.start", min_length = 1)]
    pub id: String,
    /// Input of the task; any JSON value.
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
}

/// Body of `POST /api/tasks/{instanceId}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCommand {
    /// Always `update`.
    pub command: UpdateVerb,
    /// The fields to merge, with the version they are based on.
    pub task: TaskUpdate,
}

/// The task of an update request. Fields the hub owns (`id`, `threadId`,
/// `input`, `config`, ...) may be sent too, with their current value.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskUpdate {
    /// The version of the task the update is based on.
    pub version: u64,
    /// Merged into the task's state; `{"done": true}` finishes the task.
    #[schema(value_type = Option<Object>)]
    pub state: Option<Value>,
    /// Merged into the task's output.
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    /// Merged into the task's request.
    #[schema(value_type = Option<Object>)]
    pub request: Option<Value>,
    /// Merged into the task's response.
    #[schema(value_type = Option<Object>)]
    pub response: Option<Value>,
    /// Fails the task with this message.
    pub error: Option<String>,
    /// Replaces the task that follows.
    pub next_task: Option<String>,
    /// A verb for the hub, stored and passed along.
    pub command: Option<String>,
    /// Arguments of `command`.
    #[schema(value_type = Option<Object>)]
    pub command_args: Option<Value>,
}

/// Body of `GET /healthz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// `ok` when a read of the database succeeded.
    pub database: String,
    /// Plugins serving now.
    pub plugins: usize,
}

/// Body of `GET /api/threads`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ThreadList {
    /// Threads, newest first.
    pub threads: Vec<ThreadSummary>,
    /// Pass as `before` to get the next page; `null` on the last page.
    pub next: Option<String>,
}
