//! A task in the `user` environment waits for an update over HTTP; the
//! version in the update guards against lost writes.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Hub, HubFiles, task_ids};

async fn waiting_question(hub: &Hub) -> (String, Value) {
    let started = hub
        .start_task("examples.interview.start", json!(null))
        .await;
    let thread_id = started["threadId"].as_str().unwrap().to_owned();
    let ask = hub.wait_last_task(&thread_id, "waiting").await;
    (thread_id, ask)
}

#[tokio::test]
async fn user_answer_moves_thread_on() {
    let files = HubFiles::with_plugins(&["interview", "llm-mock"]);
    let hub = Hub::start(&files, &[]);
    let (thread_id, ask) = waiting_question(&hub).await;

    assert_eq!(ask["id"], "examples.interview.ask");
    assert_eq!(ask["environment"], "user");
    assert_eq!(ask["request"]["prompt"], "What should the poem be about?");
    assert_eq!(ask["version"], 1);

    let path = format!("/api/tasks/{}", ask["instanceId"].as_str().unwrap());
    let update = json!({"command": "update", "task": {
        "version": 1, "response": {"answer": "the sea"}, "state": {"done": true}
    }});
    let (status, answered) = hub.post(&path, &update).await;
    assert_eq!(status, StatusCode::OK, "{answered}");
    assert_eq!(answered["status"], "done");
    assert_eq!(answered["version"], 2);
    assert_eq!(answered["output"], json!({"answer": "the sea"}));

    let thread = hub.wait_thread_end(&thread_id).await;
    assert_eq!(thread["status"], "done");
    assert_eq!(
        task_ids(&thread),
        [
            "examples.interview.start",
            "examples.interview.ask",
            "examples.interview.poem"
        ]
    );
    assert_eq!(
        thread["tasks"][2]["config"]["prompt"],
        "Write a poem about the sea."
    );
    let poem = thread["tasks"][2]["output"]["text"].as_str().unwrap();
    assert!(poem.contains("the sea"), "{poem}");

    // A finished task takes no more updates.
    let late = json!({"command": "update", "task": {"version": 2, "response": {"answer": "x"}}});
    let (status, error) = hub.post(&path, &late).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["error"]["code"], "task_finished");
}

#[tokio::test]
async fn stale_version_is_rejected_and_changes_nothing() {
    let files = HubFiles::with_plugins(&["interview", "llm-mock"]);
    let hub = Hub::start(&files, &[]);
    let (_, ask) = waiting_question(&hub).await;
    let path = format!("/api/tasks/{}", ask["instanceId"].as_str().unwrap());

    // A partial update: the task stays waiting and its version goes up.
    let partial =
        json!({"command": "update", "task": {"version": 1, "response": {"draft": "sea"}}});
    let (status, task) = hub.post(&path, &partial).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["status"], "waiting");
    assert_eq!(task["version"], 2);

    // Another client still has version 1.
    let stale = json!({"command": "update", "task": {
        "version": 1, "response": {"answer": "mountains"}, "state": {"done": true}
    }});
    let (status, error) = hub.post(&path, &stale).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["error"]["code"], "version_conflict");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("version 2"), "{message}");

    let (_, unchanged) = hub.get(&path).await;
    assert_eq!(unchanged["version"], 2);
    assert_eq!(unchanged["status"], "waiting");
    assert_eq!(unchanged["response"], json!({"draft": "sea"}));
}

#[tokio::test]
async fn concurrent_updates_one_wins() {
    let files = HubFiles::with_plugins(&["interview", "llm-mock"]);
    let hub = Hub::start(&files, &[]);
    let (_, ask) = waiting_question(&hub).await;
    let path = format!("/api/tasks/{}", ask["instanceId"].as_str().unwrap());

    let updates: Vec<_> = (0..8)
        .map(|n| {
            json!({"command": "update", "task": {"version": 1, "response": {"answer": format!("answer {n}")}}})
        })
        .collect();
    let results = join_all(updates.iter().map(|update| hub.post(&path, update))).await;
    let accepted = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count();
    let conflicts = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::CONFLICT)
        .count();
    assert_eq!(accepted, 1, "{results:?}");
    assert_eq!(conflicts, 7, "{results:?}");

    let (_, task) = hub.get(&path).await;
    assert_eq!(task["version"], 2);
}
