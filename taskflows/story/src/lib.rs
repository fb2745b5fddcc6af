//! The `examples.story` taskflow: a three-step flow that turns a topic into
//! a short structured story.
//!
//! `start` takes `{"topic": "..."}` and needs no environment, so the hub
//! completes it at once. `summarize` and `structure` need the `llm`
//! environment; `structure` refers to the output of `summarize` through a
//! template. This crate only describes the flow: the `llm-mock` plugin
//! (or any other provider of `llm`) runs the steps.
//!
//! Copy this crate to start a taskflow plugin of your own.

wit_bindgen::generate!({
    world: "taskflow-plugin",
    path: "../../wit",
});

use exports::taskhub::plugin::taskflow::Guest;
use taskhub::plugin::types::TaskDefinition;

struct Story;

impl Guest for Story {
    fn definitions() -> Vec<TaskDefinition> {
        vec![
            group("examples", "Examples"),
            TaskDefinition {
                // The whole flow talks to a language model, so the group sets
                // `llm` once and `start` opts out.
                environments: Some(vec!["llm".into()]),
                config: Some(r#"{"temperature": 0}"#.into()),
                ..group("examples.story", "Story")
            },
            TaskDefinition {
                id: "examples.story.start".into(),
                label: "Write a story".into(),
                start: true,
                environments: Some(vec![]),
                config: None,
                next_task: Some("examples.story.summarize".into()),
                error_task: None,
            },
            TaskDefinition {
                id: "examples.story.summarize".into(),
                label: "Summarize".into(),
                start: false,
                environments: None,
                config: Some(
                    r#"{"prompt": "Tell a short story about {{input.topic}}.", "maxWords": 60}"#
                        .into(),
                ),
                next_task: Some("examples.story.structure".into()),
                error_task: None,
            },
            TaskDefinition {
                id: "examples.story.structure".into(),
                label: "Structure".into(),
                start: false,
                environments: None,
                config: Some(
                    r#"{
                        "prompt": "Give this story a title and split it into parts: {{outputs.examples.story.summarize.text}}",
                        "format": "json",
                        "context": ["examples.story.summarize"]
                    }"#
                    .into(),
                ),
                next_task: None,
                error_task: None,
            },
            TaskDefinition {
                id: "examples.story.error".into(),
                label: "Story failed".into(),
                start: false,
                environments: Some(vec![]),
                config: None,
                next_task: None,
                error_task: None,
            },
        ]
    }
}

/// Returns a node that only labels the ids below it.
fn group(id: &str, label: &str) -> TaskDefinition {
    TaskDefinition {
        id: id.into(),
        label: label.into(),
        start: false,
        environments: None,
        config: None,
        next_task: None,
        error_task: None,
    }
}

export!(Story);
