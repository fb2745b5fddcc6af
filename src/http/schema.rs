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

/// The task of an update request. The fields the hub owns may be sent
/// too, but only with their current value, so a client can send back the
/// whole task it read.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskUpdate {
    /// The version of the task the update is based on.
    pub version: u64,
    /// Merged into the task's state; `{"done": true}` finishes the task.
    pub state: Option<Value>,
    /// Merged into the task's output.
    pub output: Option<Value>,
    /// Merged into the task's request.
    pub request: Option<Value>,
    /// Merged into the task's response.
    pub response: Option<Value>,
    /// Fails the task with this message.
    pub error: Option<String>,
    /// Replaces the task that follows.
    pub next_task: Option<String>,
    /// A verb for the hub, stored and passed along.
    pub command: Option<String>,
    /// Arguments of `command`.
    pub command_args: Option<Value>,
    /// Hub-owned: the task definition id.
    pub id: Option<String>,
    /// Hub-owned: the instance id; must match the path.
    pub instance_id: Option<String>,
    /// Hub-owned: the thread.
    pub thread_id: Option<String>,
    /// Hub-owned: the previous instance.
    pub parent_instance_id: Option<String>,
    /// Hub-owned: who started the thread.
    pub user_id: Option<String>,
    /// Hub-owned: the thread's group.
    pub group_id: Option<String>,
    /// Hub-owned: environments the task needs.
    pub environments: Option<Vec<String>>,
    /// Hub-owned: the current environment.
    pub environment: Option<String>,
    /// Hub-owned: the lifecycle status.
    pub status: Option<crate::engine::task::TaskStatus>,
    /// Hub-owned: the task's input.
    pub input: Option<Value>,
    /// Hub-owned: the task's config.
    pub config: Option<Value>,
    /// Hub-owned: RFC 3339 creation time.
    pub created_at: Option<String>,
    /// Hub-owned: RFC 3339 time of the last change.
    pub updated_at: Option<String>,
    /// Hub-owned: RFC 3339 time the task finished.
    pub completed_at: Option<String>,
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
