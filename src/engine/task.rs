//! The task object as the API, the storage and the plugins see it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a task instance is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting for a provider of its environment.
    Pending,
    /// Handed to a provider (a plugin call or a processor).
    Dispatched,
    /// Waiting for a person to answer it (the `user` environment).
    Waiting,
    /// Finished; archived.
    Done,
    /// Failed; archived, and the error task started.
    Failed,
}

impl TaskStatus {
    /// Returns the name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Dispatched => "dispatched",
            Self::Waiting => "waiting",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// Whether the instance is finished and archived.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

/// One task instance.
///
/// Field names follow the JSON every part of the system shares (camelCase).
/// `null` JSON fields mean "no value".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Task definition id, a dotted path.
    pub id: String,
    /// This instance.
    pub instance_id: String,
    /// The chain of instances this one belongs to.
    pub thread_id: String,
    /// The instance before this one in the thread.
    pub parent_instance_id: Option<String>,
    /// Who started the thread.
    pub user_id: Option<String>,
    /// The group the thread runs for.
    pub group_id: Option<String>,
    /// Environments the task needs, visited in order.
    pub environments: Vec<String>,
    /// The environment the instance waits for or runs in now.
    pub environment: Option<String>,
    /// Lifecycle status, set by the hub.
    pub status: TaskStatus,
    /// State-machine data; `{"done": true}` finishes the task.
    pub state: Value,
    /// Data given at start.
    pub input: Value,
    /// Data produced for later tasks.
    pub output: Value,
    /// Configuration from the definition, templates filled.
    pub config: Value,
    /// A message from one part of the task to another.
    pub request: Value,
    /// The answer to `request`.
    pub response: Value,
    /// Why the task failed.
    pub error: Option<String>,
    /// The definition to start when this one is done.
    pub next_task: Option<String>,
    /// A verb the task asks the hub to perform.
    pub command: Option<String>,
    /// Arguments of `command`.
    pub command_args: Value,
    /// Increases with every accepted update.
    pub version: u64,
    /// RFC 3339 time the instance was created.
    pub created_at: String,
    /// RFC 3339 time of the last change.
    pub updated_at: String,
    /// RFC 3339 time the instance finished.
    pub completed_at: Option<String>,
}

impl Task {
    /// Whether `state.done` is `true`.
    pub fn is_done(&self) -> bool {
        self.state.get("done").and_then(Value::as_bool) == Some(true)
    }
}

/// Returns the current time as unix milliseconds.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Formats unix milliseconds as RFC 3339 with millisecond precision.
pub fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
