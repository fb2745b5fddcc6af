//! Stopping the hub, even with SIGKILL, loses nothing it acknowledged, and
//! tasks that were running are resumed.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Hub, HubFiles, task_ids};

#[tokio::test]
async fn killed_hub_keeps_threads_and_waiting_tasks() {
    let files = HubFiles::with_plugins(&["story", "llm-mock", "interview"]);
    let hub = Hub::start(&files, &[]);

    let story = hub
        .start_task("examples.story.start", json!({"topic": "a harbour"}))
        .await;
    let story_id = story["threadId"].as_str().unwrap().to_owned();
    let finished = hub.wait_thread_end(&story_id).await;
    let interview = hub
        .start_task("examples.interview.start", json!(null))
        .await;
    let interview_id = interview["threadId"].as_str().unwrap().to_owned();
    let ask = hub.wait_last_task(&interview_id, "waiting").await;
    hub.kill();

    let hub = Hub::start(&files, &[]);
    // The compiled artifacts from the first run are reused.
    let plugins = hub.wait_plugins(|plugins| plugins.len() == 3).await;
    for plugin in &plugins {
        assert_eq!(plugin["fromCache"], true, "{plugin}");
    }
    let (status, after) = hub.get(&format!("/api/threads/{story_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(after, finished);

    let (_, waiting) = hub
        .get(&format!(
            "/api/tasks/{}",
            ask["instanceId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(waiting, ask);
    let update = json!({"command": "update", "task": {
        "version": 1, "response": {"answer": "the harbour"}, "state": {"done": true}
    }});
    let path = format!("/api/tasks/{}", ask["instanceId"].as_str().unwrap());
    let (status, _) = hub.post(&path, &update).await;
    assert_eq!(status, StatusCode::OK);
    let thread = hub.wait_thread_end(&interview_id).await;
    assert_eq!(thread["status"], "done");
    assert_eq!(task_ids(&thread).len(), 3);
}

#[tokio::test]
async fn task_running_at_kill_is_resumed() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &["--plugin-deadline-ms", "20000"]);

    let slow = hub
        .start_task("testing.faults.run", json!({"mode": "slow", "ms": 60000}))
        .await;
    let thread_id = slow["threadId"].as_str().unwrap().to_owned();
    assert_eq!(slow["status"], "dispatched");
    hub.kill();

    // After the restart the call runs again (at least once), here with a
    // deadline it cannot meet, so the task ends in the error task.
    let hub = Hub::start(&files, &["--plugin-deadline-ms", "300"]);
    hub.wait_for_log(&["resuming task", slow["instanceId"].as_str().unwrap()])
        .await;
    let thread = hub.wait_thread_end(&thread_id).await;
    assert_eq!(
        task_ids(&thread),
        ["testing.faults.run", "testing.faults.error"]
    );
    let error = thread["tasks"][0]["error"].as_str().unwrap();
    assert!(error.contains("deadline of 300 ms"), "{error}");
}

#[tokio::test]
async fn pending_task_runs_when_provider_arrives() {
    // `story` without `llm-mock`: summarize waits for an `llm` provider.
    let files = HubFiles::with_plugins(&["story"]);
    let hub = Hub::start(&files, &[]);
    let started = hub
        .start_task("examples.story.start", json!({"topic": "patience"}))
        .await;
    let thread_id = started["threadId"].as_str().unwrap().to_owned();
    let summarize = hub.wait_last_task(&thread_id, "pending").await;
    assert_eq!(summarize["environment"], "llm");
    hub.kill();

    // The wait survives a restart, and the provider's arrival ends it.
    let hub = Hub::start(&files, &[]);
    let (_, still) = hub.get(&format!("/api/threads/{thread_id}")).await;
    assert_eq!(still["status"], "running");
    files.install("llm-mock", "llm-mock");
    let thread = hub.wait_thread_end(&thread_id).await;
    assert_eq!(thread["status"], "done");
    assert_eq!(thread["taskCount"], 3);
}

#[tokio::test]
async fn resume_waits_for_whole_plugins_folder() {
    // `llm-mock` sorts before `story`, so it loads first on restart; the
    // pending `summarize` must still not run before `story` (which defines
    // the next task) has loaded.
    let files = HubFiles::with_plugins(&["story"]);
    let hub = Hub::start(&files, &[]);
    let started = hub
        .start_task("examples.story.start", json!({"topic": "order"}))
        .await;
    let thread_id = started["threadId"].as_str().unwrap().to_owned();
    hub.wait_last_task(&thread_id, "pending").await;
    hub.kill();

    files.install("llm-mock", "llm-mock");
    let hub = Hub::start(&files, &[]);
    let thread = hub.wait_thread_end(&thread_id).await;
    assert_eq!(thread["status"], "done", "{thread}");
    assert_eq!(thread["taskCount"], 3);
}

#[tokio::test]
async fn second_hub_on_same_database_is_refused() {
    let files = HubFiles::with_plugins(&["story"]);
    let _hub = Hub::start(&files, &[]);

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_taskhub"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .arg("--plugins")
        .arg(files.plugins())
        .arg("--db")
        .arg(files.db())
        .arg("--cache-dir")
        .arg(files.cache())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another taskhub is using the database"),
        "{stderr}"
    );
}
