//! Remote processors over WebSocket: registration, dispatch, updates,
//! failover, waiting and timeouts, bad input, and restarts.

use std::collections::HashSet;
use std::process::{Command, Stdio};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Hub, HubFiles, TestProcessor, task_ids, wait_until};

#[tokio::test]
async fn processor_runs_task_with_partial_updates() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);
    let mut processor = TestProcessor::register(&hub, "p1", &["remote"]).await;

    let (_, listed) = hub.get("/api/processors").await;
    assert_eq!(listed[0]["processorId"], "p1");
    assert_eq!(listed[0]["environments"], json!(["remote"]));
    assert_eq!(listed[0]["inFlight"], 0);
    assert!(listed[0]["connectedAt"].is_string());
    assert!(listed[0]["lastHeartbeat"].is_string());

    let started = hub.start_task("testing.remote.run", json!({"n": 1})).await;
    assert_eq!(started["status"], "dispatched");
    let task = processor.dispatched().await;
    assert_eq!(task["instanceId"], started["instanceId"]);
    assert_eq!(task["version"], 1);
    assert_eq!(task["input"], json!({"n": 1}));
    let (_, listed) = hub.get("/api/processors").await;
    assert_eq!(listed[0]["inFlight"], 1);

    let reply = processor
        .update(json!({
            "instanceId": task["instanceId"], "version": 1,
            "state": {"current": "working"}, "output": {"progress": 0.5}
        }))
        .await;
    assert_eq!(
        reply,
        json!({"command": "updated", "instanceId": task["instanceId"], "version": 2, "status": "dispatched"})
    );
    let path = format!("/api/tasks/{}", task["instanceId"].as_str().unwrap());
    let (_, partial) = hub.get(&path).await;
    assert_eq!(partial["status"], "dispatched");
    assert_eq!(partial["output"], json!({"progress": 0.5}));
    assert_eq!(partial["state"], json!({"current": "working"}));

    let reply = processor
        .update(json!({
            "instanceId": task["instanceId"], "version": 2,
            "state": {"done": true}, "output": {"progress": null, "result": 42}
        }))
        .await;
    assert_eq!(reply["status"], "done");
    assert_eq!(reply["version"], 3);
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["status"], "done");
    assert_eq!(thread["tasks"][0]["output"], json!({"result": 42}));
    let (_, listed) = hub.get("/api/processors").await;
    assert_eq!(listed[0]["inFlight"], 0);
}

#[tokio::test]
async fn two_processors_share_tasks_without_overlap() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);
    let mut first = TestProcessor::register(&hub, "first", &["remote"]).await;
    let mut second = TestProcessor::register(&hub, "second", &["remote"]).await;

    let mut threads = Vec::new();
    for n in 0..6 {
        let started = hub.start_task("testing.remote.run", json!({"n": n})).await;
        threads.push(started["threadId"].as_str().unwrap().to_owned());
    }
    // Each holds its tasks until all six are out, so the hub has to spread
    // them to keep the load even.
    let mut first_tasks = Vec::new();
    let mut second_tasks = Vec::new();
    for _ in 0..3 {
        first_tasks.push(first.dispatched().await);
        second_tasks.push(second.dispatched().await);
    }
    let first_ids: HashSet<_> = first_tasks
        .iter()
        .map(|task| task["instanceId"].clone())
        .collect();
    let second_ids: HashSet<_> = second_tasks
        .iter()
        .map(|task| task["instanceId"].clone())
        .collect();
    assert_eq!(first_ids.len(), 3);
    assert_eq!(second_ids.len(), 3);
    assert!(first_ids.is_disjoint(&second_ids));

    for task in &first_tasks {
        first.finish(task, json!({"by": "first"})).await;
    }
    for task in &second_tasks {
        second.finish(task, json!({"by": "second"})).await;
    }
    for thread_id in threads {
        let thread = hub.wait_thread_end(&thread_id).await;
        assert_eq!(thread["status"], "done");
        assert_eq!(
            thread["tasks"][0]["version"], 2,
            "each task completed exactly once"
        );
    }
}

#[tokio::test]
async fn task_of_crashed_processor_moves_on() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);
    let mut doomed = TestProcessor::register(&hub, "doomed", &["remote"]).await;

    let started = hub.start_task("testing.remote.run", json!({})).await;
    let task = doomed.dispatched().await;
    let mut survivor = TestProcessor::register(&hub, "survivor", &["remote"]).await;
    doomed.crash();

    let again = survivor.dispatched().await;
    assert_eq!(again["instanceId"], task["instanceId"]);
    survivor.finish(&again, json!({"by": "survivor"})).await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["status"], "done");
    assert_eq!(thread["tasks"][0]["output"], json!({"by": "survivor"}));
    hub.wait_for_log(&["processor disconnected", "processor_id=doomed"])
        .await;
}

#[tokio::test]
async fn stale_and_foreign_updates_are_rejected() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);
    let mut holder = TestProcessor::register(&hub, "holder", &["remote"]).await;
    let mut other = TestProcessor::register(&hub, "other", &["elsewhere"]).await;

    hub.start_task("testing.remote.run", json!({})).await;
    let task = holder.dispatched().await;
    let id = task["instanceId"].clone();

    let reply = holder
        .update(json!({"instanceId": id, "version": 7, "state": {"done": true}}))
        .await;
    assert_eq!(reply["command"], "error");
    assert_eq!(reply["code"], "version_conflict");
    assert_eq!(reply["instanceId"], id);

    let reply = other
        .update(json!({"instanceId": id, "version": 1, "state": {"done": true}}))
        .await;
    assert_eq!(reply["code"], "not_held");

    let reply = holder
        .update(json!({"instanceId": "nope", "version": 1}))
        .await;
    assert_eq!(reply["code"], "not_found");
    let reply = holder.update(json!({"version": 1})).await;
    assert_eq!(reply["code"], "invalid_task");
    let reply = holder
        .update(json!({"instanceId": id, "version": 1, "threadId": "x"}))
        .await;
    assert_eq!(reply["code"], "invalid_task");

    // Nothing of that changed the task, and the holder can still finish it.
    let (_, stored) = hub
        .get(&format!("/api/tasks/{}", id.as_str().unwrap()))
        .await;
    assert_eq!(stored["version"], 1);
    holder.finish(&task, json!({"ok": true})).await;

    // A second completion of the same version is rejected.
    let reply = holder
        .update(json!({"instanceId": id, "version": 1, "state": {"done": true}}))
        .await;
    assert_eq!(reply["code"], "task_finished");
    hub.wait_for_log(&["rejected an update from a processor", "version_conflict"])
        .await;
}

#[tokio::test]
async fn waiting_task_dispatches_on_register() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);

    let started = hub.start_task("testing.remote.run", json!({})).await;
    assert_eq!(started["status"], "pending");
    assert_eq!(started["environment"], "remote");

    let mut late = TestProcessor::register(&hub, "late", &["remote"]).await;
    let task = late.dispatched().await;
    assert_eq!(task["instanceId"], started["instanceId"]);
    late.finish(&task, json!({})).await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["status"], "done");
}

#[tokio::test]
async fn waiting_task_times_out_into_error_task() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &["--pending-timeout-secs", "0.3"]);

    let started = hub.start_task("testing.remote.run", json!({})).await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(
        task_ids(&thread),
        ["testing.remote.run", "testing.remote.error"]
    );
    assert_eq!(thread["status"], "failed");
    let error = thread["tasks"][0]["error"].as_str().unwrap();
    assert!(error.contains("environment `remote`"), "{error}");
    assert!(error.contains("timed out"), "{error}");
}

#[tokio::test]
async fn plugin_wins_unless_task_asks_for_processor() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);
    let mut processor = TestProcessor::register(&hub, "rival", &["faults"]).await;

    let by_plugin = hub
        .start_task("testing.faults.run", json!({"mode": "ok"}))
        .await;
    let thread = hub
        .wait_thread_end(by_plugin["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["tasks"][0]["output"], json!({"variant": "a"}));

    let by_processor = hub
        .start_task("testing.faults.remote", json!({"mode": "ok"}))
        .await;
    let task = processor.dispatched().await;
    assert_eq!(task["instanceId"], by_processor["instanceId"]);
    processor
        .finish(&task, json!({"variant": "processor"}))
        .await;
    let thread = hub
        .wait_thread_end(by_processor["threadId"].as_str().unwrap())
        .await;
    assert_eq!(
        thread["tasks"][0]["output"],
        json!({"variant": "processor"})
    );
}

#[tokio::test]
async fn bad_handshakes_are_rejected_and_closed() {
    let files = HubFiles::new();
    let hub = Hub::start(&files, &["--processor-token", "s3cret"]);

    let cases = [
        (json!({"command": "update", "task": {}}).to_string(), "not_registered"),
        ("{not json".to_owned(), "invalid_json"),
        (json!({"command": "dance"}).to_string(), "unknown_command"),
        (json!({"command": "register", "processorId": "p", "environments": ["x"]}).to_string(), "unauthorized"),
        (json!({"command": "register", "processorId": "p", "environments": ["x"], "token": "guess"}).to_string(), "unauthorized"),
        (json!({"command": "register", "processorId": "bad id", "environments": ["x"], "token": "s3cret"}).to_string(), "invalid_message"),
        (json!({"command": "register", "processorId": "p", "environments": ["user"], "token": "s3cret"}).to_string(), "invalid_message"),
    ];
    for (message, code) in cases {
        let mut processor = TestProcessor::connect(&hub).await;
        processor.send_text(message.clone()).await;
        let reply = processor.recv().await;
        assert_eq!(reply["command"], "error", "{message} -> {reply}");
        assert_eq!(reply["code"], code, "{message} -> {reply}");
        let close = processor.next_text().await.unwrap_err();
        assert_eq!(close.map(|(code, _)| code), Some(1008), "{message}");
    }

    let mut good = TestProcessor::connect(&hub).await;
    good.send(json!({"command": "register", "processorId": "p", "environments": ["x"], "token": "s3cret"}))
        .await;
    assert_eq!(good.recv().await["command"], "registered");
    hub.wait_for_log(&["processor rejected: missing or wrong token"])
        .await;
    assert!(!hub.logs_contain("s3cret"), "the token leaked into the log");
}

#[tokio::test]
async fn bad_messages_after_register() {
    let files = HubFiles::new();
    let hub = Hub::start(
        &files,
        &[
            "--max-body-bytes",
            "4096",
            "--processor-messages-per-sec",
            "20",
        ],
    );
    let mut processor = TestProcessor::register(&hub, "p1", &["x"]).await;
    let mut bystander = TestProcessor::register(&hub, "bystander", &["x"]).await;

    processor.send_text("{oops".into()).await;
    assert_eq!(processor.recv().await["code"], "invalid_json");
    processor.send(json!({"command": "dance"})).await;
    assert_eq!(processor.recv().await["code"], "unknown_command");
    processor
        .send(json!({"command": "register", "processorId": "p1", "environments": ["x"]}))
        .await;
    assert_eq!(processor.recv().await["code"], "already_registered");
    processor.send(json!({"command": "ping"})).await;
    assert_eq!(processor.recv().await, json!({"command": "pong"}));

    // A second connection with a live id is refused.
    let mut twin = TestProcessor::connect(&hub).await;
    twin.send(json!({"command": "register", "processorId": "p1", "environments": ["x"]}))
        .await;
    assert_eq!(twin.recv().await["code"], "duplicate_processor");

    // An oversized message ends the connection. The hub sends an error and
    // a close with 1009, but it closes with the rest of the message unread,
    // so the peer's kernel may reset the connection before they arrive.
    processor
        .send_text(format!(
            "{{\"command\":\"ping\",\"pad\":\"{}\"}}",
            "x".repeat(10_000)
        ))
        .await;
    let mut closed = None;
    for _ in 0..3 {
        match processor.next_text().await {
            Ok(message) => assert_eq!(message["code"], "message_too_big", "{message}"),
            Err(close) => {
                closed = Some(close);
                break;
            }
        }
    }
    let code = closed
        .expect("the connection stayed open")
        .map(|(code, _)| code);
    assert!(code.is_none() || code == Some(1009), "closed with {code:?}");
    hub.wait_for_log(&["processor dropped: message too big", "processor_id=\"p1\""])
        .await;

    // A flood is cut off; the other processor is not affected.
    let mut flood = TestProcessor::register(&hub, "flood", &["x"]).await;
    for _ in 0..100 {
        flood.send(json!({"command": "ping"})).await;
    }
    let mut codes = Vec::new();
    let close = loop {
        match flood.next_text().await {
            Ok(message) => codes.push(message["command"].as_str().unwrap_or("").to_owned()),
            Err(close) => break close,
        }
    };
    // Twice the rate may come at once: 40 pongs, then the error.
    assert!(
        codes.len() <= 41,
        "more pongs than the burst allows: {}",
        codes.len()
    );
    assert_eq!(codes.last().map(String::as_str), Some("error"), "{codes:?}");
    assert_eq!(close.map(|(code, _)| code), Some(1008));
    hub.wait_for_log(&["processor dropped: message rate limit exceeded"])
        .await;
    bystander.send(json!({"command": "ping"})).await;
    assert_eq!(bystander.recv().await, json!({"command": "pong"}));
    let (status, _) = hub.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn silent_processor_is_dropped() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &["--heartbeat-ms", "100"]);
    let mut silent = TestProcessor::register(&hub, "silent", &["remote"]).await;
    hub.start_task("testing.remote.run", json!({})).await;
    let task = silent.dispatched().await;

    // From now on it reads nothing, so it never answers the hub's pings.
    let mut backup = TestProcessor::register(&hub, "backup", &["remote"]).await;
    let again = backup.dispatched().await;
    assert_eq!(again["instanceId"], task["instanceId"]);
    hub.wait_for_log(&[
        "processor disconnected",
        "processor_id=silent",
        "heartbeat timeout",
    ])
    .await;
    wait_until("the silent processor to leave the list", || async {
        let (_, listed) = hub.get("/api/processors").await;
        (listed.as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    drop(silent);
}

#[tokio::test]
async fn restart_redispatches_held_tasks() {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start(&files, &[]);
    let mut processor = TestProcessor::register(&hub, "p1", &["remote"]).await;
    let started = hub.start_task("testing.remote.run", json!({"n": 7})).await;
    let task = processor.dispatched().await;
    hub.kill();

    let hub = Hub::start(&files, &[]);
    let (_, stored) = hub
        .get(&format!(
            "/api/tasks/{}",
            task["instanceId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(stored["status"], "pending");

    let mut processor = TestProcessor::register(&hub, "p1", &["remote"]).await;
    let again = processor.dispatched().await;
    assert_eq!(again["instanceId"], task["instanceId"]);
    assert_eq!(again["input"], json!({"n": 7}));
    processor.finish(&again, json!({"after": "restart"})).await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["status"], "done");
}

#[tokio::test]
async fn example_processor_serves_and_reconnects() {
    let files = HubFiles::with_plugins(&["remote"]);
    let hub = Hub::start(&files, &[]);
    let url = format!("{}/ws", hub.base.replace("http://", "ws://"));
    let processor = Command::new(env!("CARGO_BIN_EXE_taskhub-processor"))
        .args([
            "--hub",
            &url,
            "--id",
            "example-1",
            "--max-backoff-ms",
            "200",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _processor = KillOnDrop(processor);

    let started = hub
        .start_task(
            "examples.remote.start",
            json!({"text": "three small words"}),
        )
        .await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(
        task_ids(&thread),
        [
            "examples.remote.start",
            "examples.remote.echo",
            "examples.remote.count"
        ]
    );
    assert_eq!(
        thread["tasks"][1]["output"],
        json!({"echo": {"text": "three small words"}, "processor": "example-1"})
    );
    // The echo step sent one partial update before its final one.
    assert_eq!(thread["tasks"][1]["version"], 3);
    assert_eq!(thread["tasks"][2]["output"], json!({"words": 3}));

    // A new hub on the same address: the processor finds it again.
    let address = hub.base.clone();
    hub.kill();
    let listen = address.trim_start_matches("http://").to_owned();
    let hub = Hub::start(&files, &["--listen", &listen]);
    wait_until("the processor to reconnect", || async {
        let (_, listed) = hub.get("/api/processors").await;
        (listed[0]["processorId"] == "example-1").then_some(())
    })
    .await;
    let started = hub
        .start_task("examples.remote.start", json!({"text": "again"}))
        .await;
    let thread = hub
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["status"], "done");
}

/// Kills a child process when the test ends, even when it panics.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn child_hub_serves_parent_as_processor() {
    let parent_files = HubFiles::with_plugins(&["story"]);
    let parent = Hub::start(&parent_files, &[]);
    let url = format!("{}/ws", parent.base.replace("http://", "ws://"));
    let child_files = HubFiles::with_plugins(&["llm-mock"]);
    let _child = Hub::start(&child_files, &["--parent", &url, "--parent-id", "child-1"]);

    let listed = wait_until("the child hub to register", || async {
        let (_, listed) = parent.get("/api/processors").await;
        (listed[0]["processorId"] == "child-1").then_some(listed)
    })
    .await;
    assert_eq!(listed[0]["environments"], json!(["llm"]));

    let started = parent
        .start_task("examples.story.start", json!({"topic": "two hubs"}))
        .await;
    let thread = parent
        .wait_thread_end(started["threadId"].as_str().unwrap())
        .await;
    assert_eq!(thread["status"], "done", "{thread}");
    let story = thread["tasks"][1]["output"]["text"].as_str().unwrap();
    assert!(story.starts_with("Once there was two hubs."), "{story}");
    assert_eq!(
        thread["tasks"][2]["output"]["title"],
        "Once there was two hubs"
    );
}
