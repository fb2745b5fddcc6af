//! The `examples.flaky` taskflow and the `checker` environment that runs it:
//! one component that exports both interfaces.
//!
//! The checker fails on any text that contains the word "fail", so the
//! error paths are easy to try:
//!
//! - `examples.flaky.check` names its error task in `config.errorTask`
//!   (`examples.flaky.recover`);
//! - `examples.flaky.quick.check` names none, so the hub starts the nearest
//!   `*.error` definition above it, `examples.flaky.error`.

wit_bindgen::generate!({
    world: "plugin",
    path: "../../wit",
});

use exports::taskhub::plugin::environment::Guest as Environment;
use exports::taskhub::plugin::taskflow::Guest as Taskflow;
use serde_json::{Value, json};
use taskhub::plugin::types::{RunError, Task, TaskDefinition};

struct Flaky;

impl Taskflow for Flaky {
    fn definitions() -> Vec<TaskDefinition> {
        vec![
            definition("examples.flaky", "Flaky check", None, None),
            TaskDefinition {
                start: true,
                ..definition(
                    "examples.flaky.start",
                    "Check a text",
                    Some(&[]),
                    Some("examples.flaky.check"),
                )
            },
            TaskDefinition {
                config: Some(r#"{"errorTask": "examples.flaky.recover"}"#.into()),
                ..definition("examples.flaky.check", "Check", Some(&["checker"]), None)
            },
            definition(
                "examples.flaky.recover",
                "Recover from a failed check",
                Some(&[]),
                None,
            ),
            TaskDefinition {
                start: true,
                ..definition(
                    "examples.flaky.quick",
                    "Check a text, no recovery",
                    Some(&[]),
                    Some("examples.flaky.quick.check"),
                )
            },
            definition(
                "examples.flaky.quick.check",
                "Check",
                Some(&["checker"]),
                None,
            ),
            definition("examples.flaky.error", "Check failed", Some(&[]), None),
        ]
    }
}

impl Environment for Flaky {
    fn environments() -> Vec<String> {
        vec!["checker".into()]
    }

    fn run(mut task: Task) -> Result<Task, RunError> {
        let input: Value = serde_json::from_str(&task.input).unwrap_or(Value::Null);
        let Some(text) = input.get("text").and_then(Value::as_str) else {
            return Err(RunError::InvalidTask(
                "`input.text` is missing; start the task with {\"text\": \"...\"}".into(),
            ));
        };
        if text.to_lowercase().contains("fail") {
            return Err(RunError::Failed(format!(
                "the checker rejects any text with the word \"fail\": {text:?}"
            )));
        }
        task.output = json!({ "text": text, "words": text.split_whitespace().count() }).to_string();
        task.state = json!({ "done": true }).to_string();
        Ok(task)
    }
}

fn definition(
    id: &str,
    label: &str,
    environments: Option<&[&str]>,
    next_task: Option<&str>,
) -> TaskDefinition {
    TaskDefinition {
        id: id.into(),
        label: label.into(),
        start: false,
        environments: environments.map(|names| names.iter().map(|&name| name.into()).collect()),
        config: None,
        next_task: next_task.map(Into::into),
        error_task: None,
    }
}

export!(Flaky);
