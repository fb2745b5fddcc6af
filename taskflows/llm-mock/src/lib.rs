//! A deterministic stand-in for a language model: the `llm` environment.
//!
//! It reads `config.prompt` and answers without any network, so the example
//! flows run anywhere and tests can assert on exact outputs:
//!
//! - by default the output is `{"text": "..."}`, a short story about what
//!   the prompt names after the word "about", cut to `config.maxWords`;
//! - with `config.format` set to `"json"` the output is
//!   `{"title": "...", "parts": ["...", ...], "sources": [...]}`, built from
//!   the text after the prompt's first colon.
//!
//! `config.context` may list earlier task ids; their outputs are read from
//! the hub through the `host.output` import and counted in `sources`.
//!
//! Copy this crate to start an environment adapter of your own.

wit_bindgen::generate!({
    world: "environment-plugin",
    path: "../../wit",
});

use exports::taskhub::plugin::environment::Guest;
use serde_json::{Value, json};
use taskhub::plugin::host::{self, Level};
use taskhub::plugin::types::{RunError, Task};

struct LlmMock;

impl Guest for LlmMock {
    fn environments() -> Vec<String> {
        vec!["llm".into()]
    }

    fn run(mut task: Task) -> Result<Task, RunError> {
        let config = parse(&task.config, "config")?;
        let prompt = config
            .get("prompt")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                RunError::InvalidTask(format!(
                    "task {} has no string `config.prompt`; set one in its definition",
                    task.id
                ))
            })?;

        let output = if config.get("format").and_then(Value::as_str) == Some("json") {
            structure(prompt, &config)
        } else {
            let max_words = config.get("maxWords").and_then(Value::as_u64).unwrap_or(80);
            json!({ "text": story(prompt, max_words as usize) })
        };

        host::log(
            Level::Info,
            "answered prompt",
            &[
                ("task".into(), task.id.clone()),
                ("promptChars".into(), prompt.chars().count().to_string()),
            ],
        );
        task.output = output.to_string();
        task.state = json!({ "done": true }).to_string();
        Ok(task)
    }
}

/// Parses one of the task's JSON fields; the empty string means `null`.
fn parse(text: &str, field: &str) -> Result<Value, RunError> {
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(text)
        .map_err(|err| RunError::InvalidTask(format!("`{field}` is not valid JSON: {err}")))
}

/// Writes a short story about the subject the prompt names.
fn story(prompt: &str, max_words: usize) -> String {
    let subject = prompt
        .split_once(" about ")
        .map(|(_, rest)| rest)
        .unwrap_or(prompt)
        .trim_end_matches(['.', '!', '?'])
        .trim();
    let text = format!(
        "Once there was {subject}. Day after day it kept watch over the sea. \
         One stormy night a ship lost its way, and {subject} brought it home. \
         Since then everyone in the harbour remembers {subject}."
    );
    let words: Vec<&str> = text.split_whitespace().collect();
    words[..words.len().min(max_words)].join(" ")
}

/// Splits the text after the prompt's first colon into a title and parts.
fn structure(prompt: &str, config: &Value) -> Value {
    let text = prompt
        .split_once(':')
        .map(|(_, rest)| rest)
        .unwrap_or(prompt);
    let parts: Vec<String> = text
        .split_terminator(['.', '!', '?'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| format!("{part}."))
        .collect();
    let title: Vec<&str> = parts
        .first()
        .map(|first| {
            first
                .trim_end_matches('.')
                .split_whitespace()
                .take(5)
                .collect()
        })
        .unwrap_or_default();

    // Outputs of earlier tasks, read through the host rather than a template.
    let sources: Vec<Value> = config
        .get("context")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|id| {
            let words = host::output(id)
                .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                .and_then(|output| {
                    output
                        .get("text")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .map(|text| text.split_whitespace().count());
            json!({ "task": id, "words": words })
        })
        .collect();

    json!({ "title": title.join(" "), "parts": parts, "sources": sources })
}

export!(LlmMock);
