//! Merging an update into a task.
//!
//! An update is a partial task. The fields a client or a provider may
//! change are merged into the current task; the fields the hub owns must
//! be left out or sent with their current value, so a client may send back
//! the whole task it read.
//!
//! Objects merge key by key (JSON Merge Patch, RFC 7386): a key set to
//! `null` is removed, nested objects merge recursively, and any other value
//! replaces the old one. A field set to `null` at the top level is cleared.

use serde_json::{Map, Value};

use super::task::Task;

/// Fields an update may change.
const WRITABLE: &[&str] = &[
    "state",
    "output",
    "request",
    "response",
    "error",
    "nextTask",
    "command",
    "commandArgs",
];

/// Fields the hub owns. An update may repeat their current value.
const HUB_OWNED: &[&str] = &[
    "id",
    "instanceId",
    "threadId",
    "parentInstanceId",
    "userId",
    "groupId",
    "environments",
    "environment",
    "status",
    "input",
    "config",
    "createdAt",
    "updatedAt",
    "completedAt",
];

/// Why an update cannot be merged; each names the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The update is not a JSON object.
    #[error("the task in an update must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    /// The update names a field no task has.
    #[error("unknown task field `{0}`; fields an update may set: {fields}", fields = WRITABLE.join(", "))]
    UnknownField(String),
    /// The update changes a field the hub owns.
    #[error(
        "field `{0}` is set by the hub and cannot be changed; leave it out or send its current value"
    )]
    HubOwned(String),
    /// A field has the wrong JSON type.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
}

/// Returns `current` with `update` merged in. `version` is ignored here:
/// the caller checks it before merging and bumps it after.
///
/// # Errors
///
/// Returns a [`MergeError`] naming the first field that cannot be merged;
/// `current` is never changed.
pub fn merge(current: &Task, update: &Value) -> Result<Task, MergeError> {
    let Value::Object(update) = update else {
        return Err(MergeError::NotAnObject(json_kind(update)));
    };
    let current_json = serde_json::to_value(current).expect("a task always serializes");
    let Value::Object(current_fields) = &current_json else {
        unreachable!("a task serializes to an object")
    };

    let mut merged = current.clone();
    for (field, value) in update {
        if field == "version" {
            continue;
        }
        if HUB_OWNED.contains(&field.as_str()) {
            if current_fields.get(field) != Some(value) {
                return Err(MergeError::HubOwned(field.clone()));
            }
            continue;
        }
        match field.as_str() {
            "state" => {
                merge_value(&mut merged.state, value);
                check_state(&merged.state)?;
            }
            "output" => merge_value(&mut merged.output, value),
            "request" => merge_value(&mut merged.request, value),
            "response" => merge_value(&mut merged.response, value),
            "commandArgs" => merge_value(&mut merged.command_args, value),
            "error" => {
                merged.error = optional_string(value, "error")?;
                if merged
                    .error
                    .as_deref()
                    .is_some_and(|error| error.trim().is_empty())
                {
                    return Err(MergeError::WrongType {
                        field: "error",
                        expected: "a message saying what failed, or null",
                    });
                }
            }
            "nextTask" => merged.next_task = optional_string(value, "nextTask")?,
            "command" => merged.command = optional_string(value, "command")?,
            _ => return Err(MergeError::UnknownField(field.clone())),
        }
    }
    Ok(merged)
}

/// Merges `patch` into `target` following JSON Merge Patch (RFC 7386).
pub fn merge_value(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("target was just made an object")
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_value(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn check_state(state: &Value) -> Result<(), MergeError> {
    let expected = "an object such as {\"done\": true}, where `done` is a boolean";
    match state {
        Value::Null => Ok(()),
        Value::Object(fields) => match fields.get("done") {
            None | Some(Value::Bool(_)) => Ok(()),
            Some(_) => Err(MergeError::WrongType {
                field: "state",
                expected,
            }),
        },
        _ => Err(MergeError::WrongType {
            field: "state",
            expected,
        }),
    }
}

fn optional_string(value: &Value, field: &'static str) -> Result<Option<String>, MergeError> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text.clone())),
        _ => Err(MergeError::WrongType {
            field,
            expected: "a string or null",
        }),
    }
}

/// Deepest nesting of arrays and objects a task field may have. serde_json
/// reads at most 128 levels, and the hub wraps a failed task's input two
/// levels deeper for its error task, so 64 leaves ample room.
pub const MAX_DEPTH: usize = 64;

/// Largest a task may grow to, serialized, in bytes.
pub const MAX_TASK_BYTES: usize = 8 << 20;

/// Checks that `task` stays within [`MAX_DEPTH`] and [`MAX_TASK_BYTES`].
///
/// # Errors
///
/// Names the field or size that is too large.
pub fn check_limits(task: &Task) -> Result<(), String> {
    let fields = [
        ("input", &task.input),
        ("output", &task.output),
        ("state", &task.state),
        ("request", &task.request),
        ("response", &task.response),
        ("commandArgs", &task.command_args),
    ];
    for (name, value) in fields {
        let depth = nesting_depth(value);
        if depth > MAX_DEPTH {
            return Err(format!(
                "`{name}` nests {depth} levels deep; the hub accepts at most {MAX_DEPTH}"
            ));
        }
    }
    let size = serde_json::to_vec(task)
        .map(|bytes| bytes.len())
        .unwrap_or(0);
    if size > MAX_TASK_BYTES {
        return Err(format!(
            "the task would grow to {size} bytes; the hub keeps a task under {MAX_TASK_BYTES} bytes, \
             so store large data elsewhere and pass a reference"
        ));
    }
    Ok(())
}

/// Returns how deeply arrays and objects nest in `value` (0 for a scalar).
pub fn nesting_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(nesting_depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(nesting_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Returns the JSON type name of `value`, for messages.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::task::TaskStatus;

    fn task() -> Task {
        Task {
            id: "examples.story.summarize".into(),
            instance_id: "i-1".into(),
            thread_id: "t-1".into(),
            parent_instance_id: None,
            user_id: None,
            group_id: None,
            environments: vec!["llm".into()],
            environment: Some("llm".into()),
            status: TaskStatus::Waiting,
            state: json!({"current": "asking"}),
            input: json!({"topic": "a lighthouse"}),
            output: json!({"text": "old", "keep": 1}),
            config: json!({"prompt": "p"}),
            request: Value::Null,
            response: Value::Null,
            error: None,
            next_task: Some("examples.story.structure".into()),
            command: None,
            command_args: Value::Null,
            version: 3,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
            completed_at: None,
        }
    }

    #[test]
    fn objects_merge_key_by_key() {
        let merged = merge(
            &task(),
            &json!({"output": {"text": "new", "extra": [1, 2]}}),
        )
        .unwrap();
        assert_eq!(
            merged.output,
            json!({"text": "new", "keep": 1, "extra": [1, 2]})
        );
    }

    #[test]
    fn null_key_removes_it() {
        let merged = merge(&task(), &json!({"output": {"keep": null}})).unwrap();
        assert_eq!(merged.output, json!({"text": "old"}));
    }

    #[test]
    fn null_field_clears_it() {
        let merged = merge(&task(), &json!({"output": null, "nextTask": null})).unwrap();
        assert_eq!(merged.output, Value::Null);
        assert_eq!(merged.next_task, None);
    }

    #[test]
    fn state_done_merges_with_current() {
        let merged = merge(&task(), &json!({"state": {"done": true}})).unwrap();
        assert_eq!(merged.state, json!({"current": "asking", "done": true}));
        assert!(merged.is_done());
    }

    #[test]
    fn arrays_and_scalars_replace() {
        let mut target = json!({"list": [1, 2, 3], "n": 1});
        merge_value(&mut target, &json!({"list": [4], "n": "x"}));
        assert_eq!(target, json!({"list": [4], "n": "x"}));
    }

    #[test]
    fn object_patch_replaces_scalar_target() {
        let mut target = json!("text");
        merge_value(&mut target, &json!({"a": {"b": null, "c": 1}}));
        assert_eq!(target, json!({"a": {"c": 1}}));
    }

    #[test]
    fn hub_owned_field_with_same_value_is_accepted() {
        let current = task();
        let mut whole = serde_json::to_value(&current).unwrap();
        whole["response"] = json!({"answer": "yes"});
        let merged = merge(&current, &whole).unwrap();
        assert_eq!(merged.response, json!({"answer": "yes"}));
        assert_eq!(merged.thread_id, current.thread_id);
    }

    #[test]
    fn hub_owned_field_change_is_rejected() {
        let error = merge(&task(), &json!({"threadId": "t-2"})).unwrap_err();
        assert_eq!(error, MergeError::HubOwned("threadId".into()));
        let error = merge(&task(), &json!({"input": {"topic": "other"}})).unwrap_err();
        assert_eq!(error, MergeError::HubOwned("input".into()));
    }

    #[test]
    fn unknown_field_is_rejected() {
        let error = merge(&task(), &json!({"outptu": {}})).unwrap_err();
        assert_eq!(error, MergeError::UnknownField("outptu".into()));
        assert!(error.to_string().contains("output"));
    }

    #[test]
    fn wrong_types_are_rejected() {
        let error = merge(&task(), &json!({"error": 5})).unwrap_err();
        assert_eq!(
            error,
            MergeError::WrongType {
                field: "error",
                expected: "a string or null"
            }
        );
        assert!(merge(&task(), &json!({"state": {"done": "yes"}})).is_err());
        assert!(merge(&task(), &json!({"state": [true]})).is_err());
        assert_eq!(
            merge(&task(), &json!([1])).unwrap_err(),
            MergeError::NotAnObject("an array")
        );
    }

    #[test]
    fn empty_error_is_rejected() {
        assert!(merge(&task(), &json!({"error": " "})).is_err());
        assert!(merge(&task(), &json!({"error": "it broke"})).is_ok());
    }

    #[test]
    fn limits_catch_deep_and_large_tasks() {
        let mut deep = json!(1);
        for _ in 0..=MAX_DEPTH {
            deep = json!([deep]);
        }
        let mut nested = task();
        nested.output = deep;
        assert!(
            check_limits(&nested)
                .unwrap_err()
                .contains("`output` nests 65 levels")
        );

        let mut large = task();
        large.response = json!("x".repeat(MAX_TASK_BYTES));
        assert!(check_limits(&large).unwrap_err().contains("bytes"));
        assert!(check_limits(&task()).is_ok());
        assert_eq!(nesting_depth(&json!({"a": [1, {"b": []}]})), 4);
    }

    #[test]
    fn version_is_left_to_the_caller() {
        let merged = merge(&task(), &json!({"version": 99})).unwrap();
        assert_eq!(merged.version, 3);
    }

    #[test]
    fn failed_merge_leaves_task_unchanged() {
        let current = task();
        let before = current.clone();
        let _ = merge(&current, &json!({"output": {"a": 1}, "threadId": "x"}));
        assert_eq!(current, before);
    }
}
