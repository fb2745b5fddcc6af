//! Host bindings generated from `wit/taskhub.wit`, and the conversions
//! between the WIT records and the hub's own types.

use serde_json::Value;

use crate::engine::catalog::Definition;
use crate::engine::task::Task;

wasmtime::component::bindgen!({
    world: "plugin",
    path: "wit",
    imports: { default: async },
    exports: { default: async },
});

pub use self::taskhub::plugin::host::Level;
pub use self::taskhub::plugin::types::{
    RunError, Task as WitTask, TaskDefinition as WitTaskDefinition,
};
pub use exports::taskhub::plugin::{environment, taskflow};

/// The WIT package this hub implements, as it appears in export names.
pub const WIT_PACKAGE: &str = "taskhub:plugin@0.1.0";

/// Export name of the taskflow interface.
pub const TASKFLOW_EXPORT: &str = "taskhub:plugin/taskflow@0.1.0";

/// Export name of the environment interface.
pub const ENVIRONMENT_EXPORT: &str = "taskhub:plugin/environment@0.1.0";

/// Returns the task as a plugin receives it.
pub fn to_wit_task(task: &Task) -> WitTask {
    WitTask {
        id: task.id.clone(),
        instance_id: task.instance_id.clone(),
        thread_id: task.thread_id.clone(),
        parent_instance_id: task.parent_instance_id.clone(),
        user_id: task.user_id.clone(),
        group_id: task.group_id.clone(),
        environments: task.environments.clone(),
        version: task.version,
        state: json_text(&task.state),
        input: json_text(&task.input),
        output: json_text(&task.output),
        config: json_text(&task.config),
        request: json_text(&task.request),
        response: json_text(&task.response),
        error: task.error.clone(),
        next_task: task.next_task.clone(),
        command: task.command.clone(),
        command_args: json_text(&task.command_args),
    }
}

/// A JSON field of a task a plugin returned that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "field `{field}` is not valid JSON ({source}); return JSON text, or the empty string for null"
)]
pub struct InvalidJson {
    /// The field.
    pub field: &'static str,
    /// The parse error.
    pub source: serde_json::Error,
}

/// Returns `current` with the fields a plugin may change taken from
/// `returned`. Changes to fields the hub owns are ignored.
///
/// # Errors
///
/// Fails when a JSON field of `returned` does not parse.
pub fn apply_wit_task(current: &Task, returned: WitTask) -> Result<Task, InvalidJson> {
    let mut task = current.clone();
    task.state = parse_json(&returned.state, "state")?;
    task.output = parse_json(&returned.output, "output")?;
    task.request = parse_json(&returned.request, "request")?;
    task.response = parse_json(&returned.response, "response")?;
    task.command_args = parse_json(&returned.command_args, "commandArgs")?;
    // An empty message is no error.
    task.error = returned.error.filter(|error| !error.trim().is_empty());
    task.next_task = returned.next_task;
    task.command = returned.command;
    Ok(task)
}

/// Returns a plugin's definition in the hub's form.
///
/// # Errors
///
/// Fails when `config` does not parse.
pub fn to_definition(definition: WitTaskDefinition) -> Result<Definition, String> {
    let config = match definition.config {
        Some(text) => Some(
            parse_json(&text, "config")
                .map_err(|err| format!("task definition {}: {err}", definition.id))?,
        ),
        None => None,
    };
    Ok(Definition {
        id: definition.id,
        label: definition.label,
        start: definition.start,
        environments: definition.environments,
        config,
        next_task: definition.next_task,
        error_task: definition.error_task,
    })
}

fn json_text(value: &Value) -> String {
    if value.is_null() {
        String::new()
    } else {
        value.to_string()
    }
}

fn parse_json(text: &str, field: &'static str) -> Result<Value, InvalidJson> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(text).map_err(|source| InvalidJson { field, source })
}
