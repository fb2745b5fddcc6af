//! The `examples.remote` taskflow: steps that no plugin serves.
//!
//! `echo` and `count` need the `echo` and `wordcount` environments, which
//! the `taskhub-processor` program provides over WebSocket. Without a
//! processor connected the thread waits at `echo`, and continues as soon as
//! one registers.

wit_bindgen::generate!({
    world: "taskflow-plugin",
    path: "../../wit",
});

use exports::taskhub::plugin::taskflow::Guest;
use taskhub::plugin::types::TaskDefinition;

struct Remote;

impl Guest for Remote {
    fn definitions() -> Vec<TaskDefinition> {
        vec![
            definition("examples.remote", "Remote processor", None, None),
            TaskDefinition {
                start: true,
                ..definition(
                    "examples.remote.start",
                    "Echo and count a text",
                    Some("[]"),
                    Some("examples.remote.echo"),
                )
            },
            definition(
                "examples.remote.echo",
                "Echo on a processor",
                Some("echo"),
                Some("examples.remote.count"),
            ),
            TaskDefinition {
                // The echo step's output wraps the text, so the text comes
                // from the start task's output instead.
                config: Some(r#"{"text": "{{outputs.examples.remote.start.text}}"}"#.into()),
                ..definition(
                    "examples.remote.count",
                    "Count words on a processor",
                    Some("wordcount"),
                    None,
                )
            },
            definition(
                "examples.remote.error",
                "Remote step failed",
                Some("[]"),
                None,
            ),
        ]
    }
}

/// Returns a definition; `environment` is one name, or `"[]"` for none.
fn definition(
    id: &str,
    label: &str,
    environment: Option<&str>,
    next_task: Option<&str>,
) -> TaskDefinition {
    let environments = environment.map(|name| match name {
        "[]" => Vec::new(),
        name => vec![name.to_owned()],
    });
    TaskDefinition {
        id: id.into(),
        label: label.into(),
        start: false,
        environments,
        config: None,
        next_task: next_task.map(Into::into),
        error_task: None,
    }
}

export!(Remote);
