//! Merging arbitrary JSON into a task must never panic, and must never
//! change a field the hub owns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use taskhub_fuzz::engine::merge::{check_limits, merge};
use taskhub_fuzz::engine::task::Task;

fuzz_target!(|data: &[u8]| {
    let Ok(update) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let task: Task = serde_json::from_value(json!({
        "id": "examples.story.summarize", "instanceId": "i-1", "threadId": "t-1",
        "parentInstanceId": null, "userId": null, "groupId": null,
        "environments": ["llm"], "environment": "llm", "status": "waiting",
        "state": {"current": "asking"}, "input": {"topic": "a lighthouse"},
        "output": {"text": "old"}, "config": {"prompt": "p"}, "request": null,
        "response": null, "error": null, "nextTask": "examples.story.structure",
        "command": null, "commandArgs": null, "version": 3,
        "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.000Z",
        "completedAt": null
    }))
    .unwrap();
    if let Ok(merged) = merge(&task, &update) {
        assert_eq!(merged.id, task.id);
        assert_eq!(merged.instance_id, task.instance_id);
        assert_eq!(merged.thread_id, task.thread_id);
        assert_eq!(merged.input, task.input);
        assert_eq!(merged.config, task.config);
        assert_eq!(merged.version, task.version);
        let _ = check_limits(&merged);
        serde_json::to_string(&merged).unwrap();
    }
});
