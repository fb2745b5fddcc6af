//! Plugins that trap, loop, exhaust memory or return garbage: each call
//! turns into an error task and the hub keeps serving.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Hub, HubFiles, component, plugin, task_ids};

/// Runs the faults plugin in `mode` and returns the ended thread.
async fn run_fault(hub: &Hub, input: Value) -> Value {
    let started = hub.start_task("testing.faults.run", input).await;
    hub.wait_thread_end(started["threadId"].as_str().unwrap())
        .await
}

/// Asserts the thread failed into the error task and returns the error.
fn failure(thread: &Value) -> String {
    assert_eq!(thread["status"], "failed", "{thread}");
    assert_eq!(
        task_ids(thread),
        ["testing.faults.run", "testing.faults.error"]
    );
    assert_eq!(thread["tasks"][0]["status"], "failed");
    assert_eq!(thread["tasks"][1]["status"], "done");
    thread["tasks"][0]["error"].as_str().unwrap().to_owned()
}

async fn assert_still_serving(hub: &Hub) {
    let (status, _) = hub.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let thread = run_fault(hub, json!({"mode": "ok"})).await;
    assert_eq!(thread["status"], "done");
    assert_eq!(thread["tasks"][0]["output"], json!({"variant": "a"}));
}

#[tokio::test]
async fn trap_becomes_error_task() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);

    let error = failure(&run_fault(&hub, json!({"mode": "trap"})).await);
    assert!(error.contains("plugin `faults` trapped"), "{error}");
    // The panic message reaches the error through the captured stderr.
    assert!(
        error.contains("the faults plugin was asked to trap"),
        "{error}"
    );
    assert_still_serving(&hub).await;
}

#[tokio::test]
async fn endless_loop_is_stopped_by_deadline() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);

    let error = failure(&run_fault(&hub, json!({"mode": "loop"})).await);
    assert!(
        error.contains("ran past its deadline of 1000 ms"),
        "{error}"
    );
    assert_still_serving(&hub).await;
}

#[tokio::test]
async fn memory_bomb_hits_cap() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);

    let error = failure(&run_fault(&hub, json!({"mode": "alloc"})).await);
    assert!(error.contains("memory cap of 32 MiB"), "{error}");
    assert_still_serving(&hub).await;
}

#[tokio::test]
async fn loops_do_not_block_other_tasks() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &["--plugin-deadline-ms", "5000"]);

    // Two looping calls, one per core, while ordinary tasks keep finishing.
    let mut loops = Vec::new();
    for _ in 0..2 {
        loops.push(
            hub.start_task("testing.faults.run", json!({"mode": "loop"}))
                .await,
        );
    }
    for _ in 0..3 {
        let thread = run_fault(&hub, json!({"mode": "ok"})).await;
        assert_eq!(thread["status"], "done");
    }
    for started in loops {
        let (_, thread) = hub
            .get(&format!(
                "/api/threads/{}",
                started["threadId"].as_str().unwrap()
            ))
            .await;
        assert_eq!(
            thread["status"], "running",
            "the looping task ended before its deadline"
        );
    }
}

#[tokio::test]
async fn returned_garbage_fails_clearly() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);

    let error = failure(&run_fault(&hub, json!({"mode": "bad-json"})).await);
    assert!(error.contains("returned an invalid task"), "{error}");
    assert!(error.contains("`output` is not valid JSON"), "{error}");

    let error = failure(&run_fault(&hub, json!({"mode": "unfinished"})).await);
    assert!(error.contains("returned the task unfinished"), "{error}");

    let error = failure(&run_fault(&hub, json!({"mode": "fail"})).await);
    assert!(
        error.contains("plugin `faults` failed: the faults plugin was asked to fail"),
        "{error}"
    );

    let error = failure(&run_fault(&hub, json!({"mode": "explode"})).await);
    assert!(error.contains("rejected the task as invalid"), "{error}");
    assert!(error.contains("\"explode\""), "{error}");
    assert_still_serving(&hub).await;
}

#[tokio::test]
async fn update_during_call_runs_task_again() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &["--plugin-deadline-ms", "10000"]);

    let slow = hub
        .start_task("testing.faults.run", json!({"mode": "slow", "ms": 800}))
        .await;
    let path = format!("/api/tasks/{}", slow["instanceId"].as_str().unwrap());
    let note = json!({"command": "update", "task": {"version": 1, "request": {"note": "hurry"}}});
    let (status, updated) = hub.post(&path, &note).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["status"], "dispatched");

    // The first call's result is based on version 1 and is dropped; the
    // hub runs the task again on version 2 and that result counts.
    hub.wait_for_log(&[
        "dropping a plugin result",
        slow["instanceId"].as_str().unwrap(),
    ])
    .await;
    let thread = hub
        .wait_thread_end(slow["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["status"], "done", "{thread}");
    let task = &thread["tasks"][0];
    assert_eq!(task["request"], json!({"note": "hurry"}));
    assert_eq!(task["output"], json!({"variant": "a"}));
    assert_eq!(task["version"], 3);
}

#[tokio::test]
async fn more_runtime_faults_fail_clearly() {
    let files = HubFiles::with_plugins(&["faults"]);
    // Room for the 9 MiB output inside the plugin.
    let hub = Hub::start(&files, &["--plugin-memory-mib", "128"]);

    // A Rust guest keeps its stack in linear memory; overflowing it runs
    // off the bottom of that memory.
    let error = failure(&run_fault(&hub, json!({"mode": "stack"})).await);
    assert!(error.contains("plugin `faults` trapped"), "{error}");
    assert!(error.contains("out of bounds memory access"), "{error}");

    let error = failure(&run_fault(&hub, json!({"mode": "huge"})).await);
    assert!(error.contains("the hub keeps a task under"), "{error}");

    let error = failure(&run_fault(&hub, json!({"mode": "bad-utf8"})).await);
    assert!(error.contains("plugin `faults` trapped"), "{error}");
    assert!(error.to_lowercase().contains("utf-8"), "{error}");
    assert_still_serving(&hub).await;
}

#[tokio::test]
async fn faults_while_loading_reject_the_file() {
    let files = HubFiles::new();
    let hub = Hub::start(&files, &[]);
    let faults = [
        ("trap-definitions", "load-faults traps in definitions"),
        ("trap-environments", "load-faults traps in environments"),
        ("loop", "ran past its deadline of 1000 ms"),
        ("alloc", "memory cap of 32 MiB"),
        ("stack", "out of bounds memory access"),
    ];
    for (fault, _) in faults {
        let name = format!("load-{fault}");
        files.install(&name, &name);
    }
    files.install("load-none", "load-none");

    let plugins = hub
        .wait_plugins(|plugins| {
            plugin(plugins, "load-none").is_some_and(|p| p["status"] == "loaded")
                && faults.iter().all(|(fault, _)| {
                    plugin(plugins, &format!("load-{fault}"))
                        .is_some_and(|p| !p["lastError"].is_null())
                })
        })
        .await;
    for (fault, expected) in faults {
        let status = plugin(&plugins, &format!("load-{fault}")).unwrap();
        assert_eq!(status["status"], "failed", "{status}");
        let message = status["lastError"]["message"].as_str().unwrap();
        assert!(
            message.contains("the trial run failed"),
            "{fault}: {message}"
        );
        assert!(message.contains(expected), "{fault}: {message}");
    }
    let (status, _) = hub.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let started = hub.start_task("testing.load.run", json!({})).await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["status"], "done");
}

#[tokio::test]
async fn other_wit_versions_are_rejected_by_name() {
    let files = HubFiles::new();
    let hub = Hub::start(&files, &[]);
    // The same component with its package version rewritten in place: the
    // version strings have the same length, so the binary stays valid.
    let story = component("story");
    for version in ["0.0.9", "0.2.0"] {
        let rewritten = replace_all(&story, b"@0.1.0", format!("@{version}").as_bytes());
        assert_ne!(rewritten, story);
        files.write_plugin(&format!("story-{version}"), &rewritten);
    }
    let plugins = hub
        .wait_plugins(|plugins| {
            ["story-0.0.9", "story-0.2.0"]
                .iter()
                .all(|name| plugin(plugins, name).is_some_and(|p| !p["lastError"].is_null()))
        })
        .await;
    for version in ["0.0.9", "0.2.0"] {
        let message =
            plugin(&plugins, &format!("story-{version}")).unwrap()["lastError"]["message"]
                .as_str()
                .unwrap()
                .to_owned();
        assert!(
            message.contains(&format!("built against taskhub:plugin@{version}")),
            "{message}"
        );
        assert!(
            message.contains("this hub implements taskhub:plugin@0.1.0"),
            "{message}"
        );
    }
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(position) = rest.windows(from.len()).position(|window| window == from) {
        out.extend_from_slice(&rest[..position]);
        out.extend_from_slice(to);
        rest = &rest[position + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}
