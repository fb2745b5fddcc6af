//! The `llm-openai` adapter against a small OpenAI-compatible mock server
//! on 127.0.0.1, with its manifest granting the host, the endpoint and a
//! secret key.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::support::{Hub, HubFiles, plugin, task_ids};

/// The key the hub passes to the plugin as a secret; it must never show up
/// in the hub's log or API.
const KEY: &str = "sk-test-0123456789";

/// An OpenAI-compatible server: it answers by what the prompt contains.
struct MockServer {
    address: String,
    /// Authorization headers it received.
    seen_keys: Arc<Mutex<Vec<String>>>,
}

async fn completions(
    axum::extract::State(seen): axum::extract::State<Arc<Mutex<Vec<String>>>>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Response {
    let key = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    seen.lock().unwrap().push(key);
    let prompt = request["messages"]
        .as_array()
        .and_then(|messages| messages.last())
        .and_then(|message| message["content"].as_str())
        .unwrap_or("")
        .to_owned();
    if prompt.contains("slow") {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if prompt.contains("broken") {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "model overloaded"}})),
        )
            .into_response();
    }
    if prompt.contains("garbage") {
        return (StatusCode::OK, "this is not json").into_response();
    }
    let content = if request["response_format"]["type"] == "json_object" {
        json!({"title": "A mock title", "parts": ["one", "two"]}).to_string()
    } else {
        format!("mock reply to: {prompt}")
    };
    Json(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": request["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    }))
    .into_response()
}

impl MockServer {
    async fn start() -> Self {
        let seen_keys = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(completions))
            .with_state(seen_keys.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { address, seen_keys }
    }
}

/// Installs `story` and `llm-openai` with a manifest; `http_allow` is the
/// manifest's allow list.
fn install(files: &HubFiles, server: &MockServer, http_allow: &str, deadline_ms: u64) {
    files.install("story", "story");
    let manifest = format!(
        r#"
[limits]
deadline-ms = {deadline_ms}

[http]
allow = [{http_allow}]

[env]
LLM_ENDPOINT = "http://{address}/v1/chat/completions"
LLM_MODEL = "mock-model"

[secrets]
LLM_API_KEY = "TASKHUB_TEST_LLM_KEY"
"#,
        address = server.address
    );
    std::fs::write(files.plugins().join("llm-openai.toml"), manifest).unwrap();
    files.install("llm-openai", "llm-openai");
}

fn start_hub(files: &HubFiles) -> Hub {
    // The key reaches the hub process only, as an environment variable.
    Hub::start_with_env(files, &[], &[("TASKHUB_TEST_LLM_KEY", KEY)])
}

#[tokio::test]
async fn story_runs_on_openai_compatible_server() {
    let server = MockServer::start().await;
    let files = HubFiles::new();
    let allow = format!("\"{}\"", server.address);
    install(&files, &server, &allow, 5000);
    let hub = start_hub(&files);

    let started = hub
        .start_task("examples.story.start", json!({"topic": "a lighthouse"}))
        .await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["status"], "done", "{thread}");
    assert_eq!(
        thread["tasks"][1]["output"],
        json!({"text": "mock reply to: Tell a short story about a lighthouse."})
    );
    assert_eq!(
        thread["tasks"][2]["output"],
        json!({"title": "A mock title", "parts": ["one", "two"]})
    );

    // The secret reached the server, and nowhere else.
    assert!(
        server
            .seen_keys
            .lock()
            .unwrap()
            .iter()
            .all(|key| key == &format!("Bearer {KEY}"))
    );
    assert!(!hub.logs_contain(KEY), "the secret is in the log");
    let (_, plugins) = hub.get("/api/plugins").await;
    let text = plugins.to_string();
    assert!(!text.contains(KEY), "the secret is in /api/plugins");
    let grants = &plugin(plugins.as_array().unwrap(), "llm-openai").unwrap()["grants"];
    assert_eq!(grants["secrets"], json!(["LLM_API_KEY"]));
    assert_eq!(grants["env"], json!(["LLM_ENDPOINT", "LLM_MODEL"]));
    assert_eq!(grants["deadlineMs"], 5000);
}

#[tokio::test]
async fn server_faults_become_error_tasks() {
    let server = MockServer::start().await;
    let files = HubFiles::new();
    let allow = format!("\"{}\"", server.address);
    install(&files, &server, &allow, 800);
    let hub = start_hub(&files);

    let cases = [
        ("something slow", "ran past its deadline of 800 ms"),
        ("something broken", "answered 500: {\"error\""),
        ("garbage", "is not JSON"),
    ];
    for (topic, expected) in cases {
        let started = hub
            .start_task("examples.story.start", json!({"topic": topic}))
            .await;
        let thread = hub
            .wait_thread_end(started["threadId"].as_str().unwrap())
            .await;
        assert_eq!(
            task_ids(&thread),
            [
                "examples.story.start",
                "examples.story.summarize",
                "examples.story.error"
            ],
            "{topic}"
        );
        let error = thread["tasks"][1]["error"].as_str().unwrap();
        assert!(error.contains(expected), "{topic}: {error}");
    }
    let (status, _) = hub.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn request_outside_grants_is_denied() {
    let server = MockServer::start().await;
    let files = HubFiles::new();
    // The manifest allows another port on the same host.
    install(&files, &server, "\"127.0.0.1:1\"", 5000);
    let hub = start_hub(&files);

    let started = hub
        .start_task("examples.story.start", json!({"topic": "anything"}))
        .await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    let error = thread["tasks"][1]["error"].as_str().unwrap();
    assert!(error.contains("HTTP request denied"), "{error}");
    hub.wait_for_log(&["denied an HTTP request", "plugin=llm-openai", "version="])
        .await;
    assert!(
        server.seen_keys.lock().unwrap().is_empty(),
        "a denied request reached the server"
    );
}

#[tokio::test]
async fn manifest_change_reloads_grants() {
    let server = MockServer::start().await;
    let files = HubFiles::new();
    install(&files, &server, "\"127.0.0.1:1\"", 5000);
    let hub = start_hub(&files);
    let plugins = hub
        .wait_plugins(|plugins| plugin(plugins, "llm-openai").is_some())
        .await;
    let version = plugin(&plugins, "llm-openai").unwrap()["version"].clone();

    // Same component, new manifest: the hub reloads it with the new grants.
    install(&files, &server, &format!("\"{}\"", server.address), 5000);
    let plugins = hub
        .wait_plugins(|plugins| {
            plugin(plugins, "llm-openai").is_some_and(|p| p["grants"]["httpAllow"][0]["port"] != 1)
        })
        .await;
    assert_eq!(plugin(&plugins, "llm-openai").unwrap()["version"], version);
    let started = hub
        .start_task("examples.story.start", json!({"topic": "grants"}))
        .await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["status"], "done", "{thread}");

    // A broken manifest keeps the serving grants and reports the error.
    std::fs::write(
        files.plugins().join("llm-openai.toml"),
        "[limits]\nmemory-mib = 0\n",
    )
    .unwrap();
    let plugins = hub
        .wait_plugins(|plugins| {
            plugin(plugins, "llm-openai").is_some_and(|p| !p["lastError"].is_null())
        })
        .await;
    let message = plugin(&plugins, "llm-openai").unwrap()["lastError"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("invalid manifest"), "{message}");
    assert!(message.contains("memory-mib"), "{message}");
}
