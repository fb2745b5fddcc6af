//! The `examples.interview` taskflow: a flow with a step for a person.
//!
//! `ask` needs the `user` environment, so the hub keeps it waiting until
//! someone sends an update over HTTP (or the browser UI) with a `response`
//! and `"state": {"done": true}`. `poem` then asks the `llm` environment
//! for a poem about the answer.

wit_bindgen::generate!({
    world: "taskflow-plugin",
    path: "../../wit",
});

use exports::taskhub::plugin::taskflow::Guest;
use taskhub::plugin::types::TaskDefinition;

struct Interview;

impl Guest for Interview {
    fn definitions() -> Vec<TaskDefinition> {
        vec![
            definition("examples.interview", "Interview", None, None, None),
            TaskDefinition {
                start: true,
                ..definition(
                    "examples.interview.start",
                    "Write a poem with me",
                    Some(&[]),
                    None,
                    Some("examples.interview.ask"),
                )
            },
            definition(
                "examples.interview.ask",
                "Choose a subject",
                Some(&["user"]),
                Some(
                    r#"{
                        "request": {
                            "prompt": "What should the poem be about?",
                            "fields": [
                                {"name": "answer", "label": "Subject", "type": "text", "required": true}
                            ]
                        }
                    }"#,
                ),
                Some("examples.interview.poem"),
            ),
            definition(
                "examples.interview.poem",
                "Write the poem",
                Some(&["llm"]),
                Some(
                    r#"{"prompt": "Write a poem about {{outputs.examples.interview.ask.answer}}.", "maxWords": 40}"#,
                ),
                None,
            ),
            definition(
                "examples.interview.error",
                "Interview failed",
                Some(&[]),
                None,
                None,
            ),
        ]
    }
}

fn definition(
    id: &str,
    label: &str,
    environments: Option<&[&str]>,
    config: Option<&str>,
    next_task: Option<&str>,
) -> TaskDefinition {
    TaskDefinition {
        id: id.into(),
        label: label.into(),
        start: false,
        environments: environments.map(|names| names.iter().map(|&name| name.into()).collect()),
        config: config.map(Into::into),
        next_task: next_task.map(Into::into),
        error_task: None,
    }
}

export!(Interview);
