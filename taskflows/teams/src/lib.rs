//! The `examples.teams` taskflow: who may start what, and who shares a
//! thread.
//!
//! - `examples.teams.board.start` is for the `writers` group (the `groups`
//!   of `examples.teams.board` are inherited by everything below it) and
//!   runs one thread per group: every writer who starts it joins the same
//!   board and sees the others' notes.
//! - `examples.teams.review.start` is for `editors` and runs one thread per
//!   user: starting it again returns to the review already open.
//! - `examples.teams.scratch.start` is for everyone, one thread per login
//!   session.
//!
//! Each ends in a step for a person (the `user` environment) whose prompt
//! greets them from their profile.

wit_bindgen::generate!({
    world: "taskflow-plugin",
    path: "../../wit",
});

use exports::taskhub::plugin::taskflow::Guest;
use taskhub::plugin::types::TaskDefinition;

struct Teams;

impl Guest for Teams {
    fn definitions() -> Vec<TaskDefinition> {
        vec![
            node("examples.teams", "Team work", None),
            node(
                "examples.teams.board",
                "Team board",
                Some(r#"{"groups": ["writers"]}"#),
            ),
            start(
                "examples.teams.board.start",
                "Open the writers' board",
                r#"{"threadMode": "group"}"#,
                "examples.teams.board.notes",
            ),
            person(
                "examples.teams.board.notes",
                "Notes",
                "Notes for the team (board opened by {{user.id}}). Each update replaces the notes, so send the whole list; finish when done.",
            ),
            node(
                "examples.teams.review",
                "Review",
                Some(r#"{"groups": ["editors"]}"#),
            ),
            start(
                "examples.teams.review.start",
                "Open my review",
                r#"{"threadMode": "user"}"#,
                "examples.teams.review.verdict",
            ),
            person(
                "examples.teams.review.verdict",
                "Verdict",
                "{{user.name}}, what is your verdict on {{input.title}}?",
            ),
            start(
                "examples.teams.scratch.start",
                "Open my scratchpad",
                r#"{"threadMode": "session"}"#,
                "examples.teams.scratch.pad",
            ),
            person(
                "examples.teams.scratch.pad",
                "Scratchpad",
                "Write anything, {{user.id}}.",
            ),
            TaskDefinition {
                environments: Some(Vec::new()),
                ..node("examples.teams.error", "Team work failed", None)
            },
        ]
    }
}

fn node(id: &str, label: &str, config: Option<&str>) -> TaskDefinition {
    TaskDefinition {
        id: id.into(),
        label: label.into(),
        start: false,
        environments: None,
        config: config.map(Into::into),
        next_task: None,
        error_task: None,
    }
}

fn start(id: &str, label: &str, config: &str, next: &str) -> TaskDefinition {
    TaskDefinition {
        start: true,
        environments: Some(Vec::new()),
        next_task: Some(next.into()),
        ..node(id, label, Some(config))
    }
}

fn person(id: &str, label: &str, prompt: &str) -> TaskDefinition {
    let config = format!(
        r#"{{"request": {{"prompt": {prompt:?}, "fields": [{{"name": "text", "label": "Text", "type": "text"}}]}}}}"#
    );
    TaskDefinition {
        environments: Some(vec!["user".into()]),
        ..node(id, label, Some(&config))
    }
}

export!(Teams);
