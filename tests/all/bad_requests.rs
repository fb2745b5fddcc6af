//! Bad requests get the documented status and error body, and change
//! nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Hub, HubFiles};

fn code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap()
}

#[tokio::test]
async fn start_request_errors() {
    let files = HubFiles::with_plugins(&["story", "llm-mock"]);
    let hub = Hub::start(&files, &["--max-body-bytes", "2048"]);

    let (status, body) = hub
        .post_raw("/api/tasks", "application/json", "{\"command\": ".into())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "invalid_json");
    assert!(message(&body).contains("line 1"), "{body}");

    let (status, body) = hub
        .post("/api/tasks", &json!({"command": "launch", "task": {}}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "unknown_command");
    assert!(message(&body).contains("`launch`"), "{body}");

    let (status, body) = hub
        .post(
            "/api/tasks",
            &json!({"task": {"id": "examples.story.start"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&body).contains("missing `command`"), "{body}");

    let (status, body) = hub.post("/api/tasks", &json!([1, 2])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "unknown_command");

    let (status, body) = hub
        .post(
            "/api/tasks",
            &json!({"command": "start", "task": {"id": "examples.nope.start"}}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "unknown_task");
    assert!(message(&body).contains("examples.nope.start"), "{body}");

    let (status, body) = hub
        .post("/api/tasks", &json!({"command": "start", "task": {}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message(&body).contains("missing `task.id`"), "{body}");

    let (status, body) = hub
        .post(
            "/api/tasks",
            &json!({"command": "start", "task": {"id": 7}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message(&body).contains("not a number"), "{body}");

    let (status, body) = hub
        .post(
            "/api/tasks",
            &json!({"command": "start", "task": {"id": "examples.story.start", "threadId": "x"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message(&body).contains("`threadId`"), "{body}");

    let (status, body) = hub
        .post(
            "/api/tasks",
            &json!({"command": "start", "task": {"id": "examples.story.summarize"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message(&body).contains("not a start task"), "{body}");

    let (status, body) = hub.post_raw("/api/tasks", "text/plain", "{}".into()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(code(&body), "unsupported_media_type");

    let big = json!({"command": "start", "task": {"id": "examples.story.start", "input": {"topic": "x".repeat(4096)}}});
    let (status, body) = hub.post("/api/tasks", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(&body), "payload_too_large");

    // None of it started a thread.
    let (_, threads) = hub.get("/api/threads").await;
    assert_eq!(threads["threads"], json!([]));
}

#[tokio::test]
async fn update_request_errors() {
    let files = HubFiles::with_plugins(&["interview", "llm-mock"]);
    let hub = Hub::start(&files, &[]);
    let started = hub
        .start_task("examples.interview.start", json!(null))
        .await;
    let ask = hub
        .wait_last_task(started["threadId"].as_str().unwrap(), "waiting")
        .await;
    let path = format!("/api/tasks/{}", ask["instanceId"].as_str().unwrap());

    let cases = [
        (
            json!({"command": "start", "task": {"version": 1}}),
            StatusCode::BAD_REQUEST,
            "unknown command `start`",
        ),
        (
            json!({"command": "update"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing `task`",
        ),
        (
            json!({"command": "update", "task": {"response": {}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing `version`",
        ),
        (
            json!({"command": "update", "task": {"version": "1"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "non-negative integer",
        ),
        (
            json!({"command": "update", "task": {"version": 1, "threadId": "other"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "`threadId` is set by the hub",
        ),
        (
            json!({"command": "update", "task": {"version": 1, "respnse": {}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown task field `respnse`",
        ),
        (
            json!({"command": "update", "task": {"version": 1, "state": {"done": "yes"}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "`state` must be",
        ),
        (
            json!({"command": "update", "task": {"version": 1, "instanceId": "elsewhere"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "names instance elsewhere",
        ),
    ];
    for (body, expected_status, expected_message) in cases {
        let (status, answer) = hub.post(&path, &body).await;
        assert_eq!(status, expected_status, "{body} -> {answer}");
        assert!(
            message(&answer).contains(expected_message),
            "{body} -> {answer}"
        );
    }

    // Nothing changed.
    let (_, task) = hub.get(&path).await;
    assert_eq!(task, ask);

    let (status, body) = hub.get("/api/tasks/no-such-instance").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "not_found");
    let update = json!({"command": "update", "task": {"version": 1}});
    let (status, _) = hub.post("/api/tasks/no-such-instance", &update).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = hub.get("/api/threads/no-such-thread").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let files = HubFiles::new();
    let hub = Hub::start(&files, &[]);

    let (status, body) = hub.get("/api/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "not_found");

    let (status, body) = hub.post("/api/taskflows", &json!({})).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(code(&body), "method_not_allowed");

    let (status, body) = hub.get("/api/threads?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "invalid_query");

    let (status, body) = hub.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn deep_input_and_bad_updates_are_rejected() {
    let files = HubFiles::with_plugins(&["interview", "llm-mock", "flaky"]);
    let hub = Hub::start(&files, &[]);

    // Deep enough to break reading the error task back if it were stored.
    let mut deep = json!("leaf");
    for _ in 0..70 {
        deep = json!([deep]);
    }
    let (status, body) = hub
        .post("/api/tasks", &json!({"command": "start", "task": {"id": "examples.flaky.quick", "input": {"x": deep}}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(message(&body).contains("at most 64"), "{body}");

    let started = hub
        .start_task("examples.interview.start", json!(null))
        .await;
    let ask = hub
        .wait_last_task(started["threadId"].as_str().unwrap(), "waiting")
        .await;
    let path = format!("/api/tasks/{}", ask["instanceId"].as_str().unwrap());
    let cases = [
        (
            json!({"version": 1, "nextTask": "does.not.exist", "state": {"done": true}}),
            "not defined by any loaded plugin",
        ),
        (json!({"version": 1, "error": ""}), "`error` must be"),
        (json!({"version": 1, "output": deep}), "nests 70 levels"),
    ];
    for (task, expected) in cases {
        let (status, body) = hub
            .post(&path, &json!({"command": "update", "task": task}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{task} -> {body}");
        assert!(message(&body).contains(expected), "{task} -> {body}");
    }
    let (_, unchanged) = hub.get(&path).await;
    assert_eq!(unchanged, ask);

    let (status, body) = hub.get("/api/tasks/%FF").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "invalid_path");
}
