//! What operators rely on: the OpenAPI document, Prometheus metrics,
//! request ids in responses and logs, and graceful shutdown.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Hub, HubFiles, TestProcessor};

/// Every route the router serves, as (method, path).
const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/ui/app.js"),
    ("get", "/ui/app.css"),
    ("get", "/api/events"),
    ("get", "/api/session"),
    ("post", "/api/session"),
    ("delete", "/api/session"),
    ("get", "/api/taskflows/{taskflowId}"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/api/openapi.json"),
    ("get", "/api/taskflows"),
    ("get", "/api/plugins"),
    ("get", "/api/plugins/{name}/versions"),
    ("post", "/api/plugins/{name}/rollback"),
    ("get", "/api/processors"),
    ("get", "/ws"),
    ("post", "/api/tasks"),
    ("get", "/api/tasks/{instanceId}"),
    ("post", "/api/tasks/{instanceId}"),
    ("get", "/api/threads"),
    ("get", "/api/threads/{threadId}"),
];

#[tokio::test]
async fn openapi_lists_every_route() {
    let files = HubFiles::with_plugins(&["story", "llm-mock"]);
    let hub = Hub::start(&files, &[]);

    let (status, document) = hub.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    let documented: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect();
    assert_eq!(documented, served);

    // Each operation documents its error body, and the body schemas exist.
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for name in [
        "Task",
        "ErrorBody",
        "StartCommand",
        "UpdateCommand",
        "ThreadView",
        "MenuNode",
    ] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    let start = &document["paths"]["/api/tasks"]["post"]["responses"];
    for status in ["201", "400", "404", "413", "415", "422"] {
        assert!(
            start.get(status).is_some(),
            "POST /api/tasks does not document {status}"
        );
    }
    let update = &document["paths"]["/api/tasks/{instanceId}"]["post"]["responses"];
    assert!(update.get("409").is_some());
}

/// Returns the value of the metric line starting with `series`.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

async fn metrics_text(hub: &Hub) -> String {
    reqwest::get(format!("{}/metrics", hub.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn metrics_follow_a_story_thread() {
    let files = HubFiles::with_plugins(&["story", "llm-mock"]);
    let hub = Hub::start(&files, &[]);
    let response = reqwest::get(format!("{}/metrics", hub.base)).await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "{:?}",
        response.headers()
    );
    let before = response.text().await.unwrap();

    let started = hub
        .start_task("examples.story.start", json!({"topic": "counting"}))
        .await;
    hub.wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    let after = metrics_text(&hub).await;

    let completed = r#"taskhub_tasks_completed_total{taskflow="examples.story",environment="llm"}"#;
    assert_eq!(
        metric(&after, completed) - metric(&before, completed),
        2.0,
        "{after}"
    );
    let started_series =
        r#"taskhub_tasks_started_total{taskflow="examples.story",environment="none"}"#;
    assert_eq!(
        metric(&after, started_series) - metric(&before, started_series),
        1.0
    );
    let version = after
        .lines()
        .find(|line| line.starts_with(r#"taskhub_plugin_calls_total{plugin="llm-mock""#))
        .expect("no plugin call counter")
        .to_owned();
    assert!(version.ends_with(" 2"), "{version}");
    let requests = r#"taskhub_http_requests_total{route="/api/tasks",method="POST",status="201"}"#;
    assert_eq!(metric(&after, requests), 1.0);
    assert!(after.contains("taskhub_sqlite_commit_duration_seconds_count"));
    assert!(after.contains("taskhub_task_duration_seconds_bucket"));
    // No instance or thread id ever becomes a label.
    assert!(!after.contains(started["threadId"].as_str().unwrap()));
    assert!(!after.contains(started["instanceId"].as_str().unwrap()));
}

#[tokio::test]
async fn queue_depth_counts_waiting_tasks() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);
    for _ in 0..3 {
        hub.start_task("testing.remote.run", json!({})).await;
    }
    let text = metrics_text(&hub).await;
    assert_eq!(
        metric(&text, r#"taskhub_queue_depth{environment="remote"}"#),
        3.0,
        "{text}"
    );

    let mut processor = TestProcessor::register(&hub, "drain", &["remote"]).await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        tasks.push(processor.dispatched().await);
    }
    for task in &tasks {
        processor.finish(task, json!({})).await;
    }
    let text = metrics_text(&hub).await;
    assert_eq!(
        metric(&text, r#"taskhub_queue_depth{environment="remote"}"#),
        0.0,
        "{text}"
    );
    assert_eq!(metric(&text, "taskhub_processors_connected"), 1.0);
}

#[tokio::test]
async fn request_id_is_echoed_and_logged() {
    let files = HubFiles::with_plugins(&["story", "llm-mock"]);
    let hub = Hub::start(&files, &[]);
    let client = reqwest::Client::new();

    let response = client
        .post(format!("{}/api/tasks", hub.base))
        .header("x-request-id", "req-test-42")
        .json(&json!({"command": "start", "task": {"id": "examples.story.start", "input": {"topic": "ids"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], "req-test-42");
    hub.wait_for_log(&[
        "request_id=req-test-42",
        "task done",
        "examples.story.start",
    ])
    .await;

    let response = client
        .get(format!("{}/healthz", hub.base))
        .send()
        .await
        .unwrap();
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 36, "{generated}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn sigterm_lets_running_task_finish() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(
        &files,
        &[
            "--plugin-deadline-ms",
            "10000",
            "--shutdown-grace-secs",
            "8",
        ],
    );
    let mut processor = TestProcessor::register(&hub, "watcher", &["remote"]).await;
    let slow = hub
        .start_task("testing.faults.run", json!({"mode": "slow", "ms": 700}))
        .await;
    let thread_id = slow["threadId"].as_str().unwrap().to_owned();

    let (clean, took) = hub.terminate(Duration::from_secs(8));
    assert!(clean, "the hub did not exit cleanly");
    assert!(took < Duration::from_secs(8), "{took:?}");
    let close = processor.next_text().await.unwrap_err();
    assert_eq!(close.map(|(code, _)| code), Some(1001));

    // The call finished within the grace period and its result was
    // committed: after a restart nothing runs again.
    let hub = Hub::start(&files, &[]);
    let (_, thread) = hub.get(&format!("/api/threads/{thread_id}")).await;
    assert_eq!(thread["status"], "done", "{thread}");
    assert_eq!(thread["tasks"][0]["output"], json!({"variant": "a"}));
    assert!(!hub.logs_contain("resuming task"));
}

#[tokio::test]
async fn sigterm_cuts_short_after_grace() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(
        &files,
        &[
            "--plugin-deadline-ms",
            "20000",
            "--shutdown-grace-secs",
            "0.3",
        ],
    );
    let slow = hub
        .start_task("testing.faults.run", json!({"mode": "slow", "ms": 2500}))
        .await;
    let thread_id = slow["threadId"].as_str().unwrap().to_owned();
    let instance_id = slow["instanceId"].as_str().unwrap().to_owned();
    hub.wait_for_log(&["task started", &instance_id]).await;

    let logs = hub.log_handle();
    let (clean, took) = hub.terminate(Duration::from_secs(5));
    assert!(clean);
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The reader thread may still be copying the last lines.
    crate::support::wait_until("the cut-short log line", || async {
        logs.lock()
            .unwrap()
            .iter()
            .any(|line| line.contains("shutdown cut short") && line.contains(&instance_id))
            .then_some(())
    })
    .await;

    // The task was still dispatched, so the restarted hub runs it again.
    let hub = Hub::start(&files, &["--plugin-deadline-ms", "20000"]);
    let thread = hub.wait_thread_end(&thread_id).await;
    assert_eq!(thread["status"], "done");
    assert!(hub.logs_contain("resuming task"));
}
