//! The story flow end to end, and the error-task paths of the flaky flow.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Hub, HubFiles, task_ids};

const EXAMPLES: &[&str] = &["story", "llm-mock", "interview", "flaky"];

#[tokio::test]
async fn story_thread_runs_every_step_in_order() {
    let files = HubFiles::with_plugins(EXAMPLES);
    let hub = Hub::start(&files, &[]);

    let started = hub
        .start_task("examples.story.start", json!({"topic": "a lighthouse"}))
        .await;
    assert_eq!(started["id"], "examples.story.start");
    assert_eq!(started["version"], 1);
    assert!(started["instanceId"].is_string());
    let thread_id = started["threadId"].as_str().unwrap();

    let thread = hub.wait_thread_end(thread_id).await;
    assert_eq!(thread["status"], "done", "{thread}");
    assert_eq!(thread["taskCount"], 3);
    assert_eq!(
        task_ids(&thread),
        [
            "examples.story.start",
            "examples.story.summarize",
            "examples.story.structure"
        ]
    );
    let tasks = thread["tasks"].as_array().unwrap();
    assert!(tasks.iter().all(|task| task["status"] == "done"));

    // Each step's input is the previous step's output.
    assert_eq!(tasks[0]["output"], json!({"topic": "a lighthouse"}));
    assert_eq!(tasks[1]["input"], tasks[0]["output"]);
    assert_eq!(
        tasks[1]["config"]["prompt"],
        "Tell a short story about a lighthouse."
    );
    let story = tasks[1]["output"]["text"].as_str().unwrap();
    assert!(story.starts_with("Once there was a lighthouse."), "{story}");

    // `structure`'s config template was filled from `summarize`'s output,
    // and the plugin read that output again through the host function.
    let prompt = tasks[2]["config"]["prompt"].as_str().unwrap();
    assert!(prompt.ends_with(story), "{prompt}");
    assert_eq!(tasks[2]["output"]["title"], "Once there was a lighthouse");
    assert_eq!(tasks[2]["output"]["parts"].as_array().unwrap().len(), 4);
    assert_eq!(
        tasks[2]["output"]["sources"],
        json!([{"task": "examples.story.summarize", "words": story.split_whitespace().count()}])
    );

    // Linked in order, and readable one by one from the archive.
    assert_eq!(tasks[1]["parentInstanceId"], tasks[0]["instanceId"]);
    assert_eq!(tasks[2]["parentInstanceId"], tasks[1]["instanceId"]);
    let path = format!("/api/tasks/{}", tasks[2]["instanceId"].as_str().unwrap());
    let (status, single) = hub.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(single, tasks[2]);
}

#[tokio::test]
async fn taskflows_lists_start_tasks_as_tree() {
    let files = HubFiles::with_plugins(EXAMPLES);
    let hub = Hub::start(&files, &[]);

    let (status, menu) = hub.get("/api/taskflows").await;
    assert_eq!(status, StatusCode::OK);
    let roots = menu.as_array().unwrap();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0]["id"], "examples");
    let flows: Vec<&str> = roots[0]["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| node["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        flows,
        ["examples.flaky", "examples.interview", "examples.story"]
    );
    let story = &roots[0]["children"][2];
    assert_eq!(story["label"], "Story");
    assert_eq!(
        story["children"],
        json!([{"id": "examples.story.start", "label": "Write a story", "start": true, "children": []}])
    );
}

#[tokio::test]
async fn plugin_failure_starts_named_error_task() {
    let files = HubFiles::with_plugins(EXAMPLES);
    let hub = Hub::start(&files, &[]);

    let started = hub
        .start_task("examples.flaky.start", json!({"text": "this will fail"}))
        .await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(
        task_ids(&thread),
        [
            "examples.flaky.start",
            "examples.flaky.check",
            "examples.flaky.recover"
        ]
    );
    assert_eq!(thread["status"], "failed");
    let tasks = thread["tasks"].as_array().unwrap();
    assert_eq!(tasks[1]["status"], "failed");
    let error = tasks[1]["error"].as_str().unwrap();
    assert!(error.contains("plugin `flaky` failed"), "{error}");
    assert!(error.contains("the word \"fail\""), "{error}");
    assert_eq!(thread["error"], tasks[1]["error"]);

    // The error task gets the failure and the failed task's input.
    assert_eq!(tasks[2]["status"], "done");
    assert_eq!(tasks[2]["input"]["error"], tasks[1]["error"]);
    assert_eq!(
        tasks[2]["input"]["failedTask"]["id"],
        "examples.flaky.check"
    );
    assert_eq!(
        tasks[2]["input"]["failedTask"]["input"],
        json!({"text": "this will fail"})
    );
}

#[tokio::test]
async fn failure_without_error_task_uses_nearest() {
    let files = HubFiles::with_plugins(EXAMPLES);
    let hub = Hub::start(&files, &[]);

    let started = hub
        .start_task("examples.flaky.quick", json!({"text": "fail fast"}))
        .await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(
        task_ids(&thread),
        [
            "examples.flaky.quick",
            "examples.flaky.quick.check",
            "examples.flaky.error"
        ]
    );
    assert_eq!(thread["status"], "failed");

    let passing = hub
        .start_task("examples.flaky.quick", json!({"text": "all good"}))
        .await;
    let thread = hub
        .wait_thread_end(passing["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["status"], "done");
    assert_eq!(
        thread["tasks"][1]["output"],
        json!({"text": "all good", "words": 2})
    );
}

#[tokio::test]
async fn threads_are_listed_newest_first_in_pages() {
    let files = HubFiles::with_plugins(EXAMPLES);
    let hub = Hub::start(&files, &[]);

    let mut started = Vec::new();
    for topic in ["one", "two", "three"] {
        let task = hub
            .start_task("examples.story.start", json!({"topic": topic}))
            .await;
        started.push(task["threadId"].as_str().unwrap().to_owned());
    }

    let (status, page) = hub.get("/api/threads?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = page["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|thread| thread["threadId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [started[2].as_str(), started[1].as_str()]);
    assert_eq!(page["next"], started[1].as_str());

    let (_, rest) = hub
        .get(&format!("/api/threads?limit=2&before={}", started[1]))
        .await;
    assert_eq!(rest["threads"][0]["threadId"], started[0].as_str());
    assert_eq!(rest["threads"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next"], serde_json::Value::Null);
}
