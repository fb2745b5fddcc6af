//! In-process costs, measured with criterion: one call of a trivial
//! environment adapter through the hub's plugin host (fresh store,
//! instantiate from the pre-instantiated component, run), beside the same
//! work done by native Rust; merging an update; filling templates; checking
//! a token's secret against its stored argon2id hash.
//!
//! `cargo bench --bench plugin_call`; `-- --quick` for a short run.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use taskhub::engine::merge::merge;
use taskhub::engine::task::Task;
use taskhub::engine::template::{TemplateContext, fill};
use taskhub::plugin::{
    Grants, Limits, PluginHost, WitTask, apply_wit_task, content_hash, to_wit_task,
};

fn task() -> Task {
    serde_json::from_value(json!({
        "id": "bench.echo", "instanceId": "i-1", "threadId": "t-1",
        "parentInstanceId": null, "userId": null, "groupId": null,
        "environments": ["echo"], "environment": "echo", "status": "dispatched",
        "state": null, "input": {"topic": "a lighthouse", "n": 1},
        "output": null, "config": {"prompt": "Tell a story."}, "request": null,
        "response": null, "error": null, "nextTask": null, "command": null,
        "commandArgs": null, "version": 1,
        "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.000Z",
        "completedAt": null
    }))
    .unwrap()
}

/// What the echo component does, in native Rust, with the same conversions
/// to and from the WIT records that a plugin call makes.
fn native_echo(task: &Task) -> Task {
    let mut wit: WitTask = to_wit_task(task);
    wit.output = std::mem::take(&mut wit.input);
    wit.state = r#"{"done":true}"#.into();
    apply_wit_task(task, wit).unwrap()
}

fn plugin_call(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let path = Path::new(env!("TASKHUB_TEST_COMPONENTS")).join("echo.wasm");
    let bytes = std::fs::read(&path).unwrap();
    let host = runtime.block_on(async { PluginHost::new(Limits::default(), None, None).unwrap() });
    let hash = content_hash(&bytes);
    let plugin = runtime
        .block_on(host.load(
            "echo",
            Arc::new(bytes),
            hash,
            Grants::defaults(host.limits()),
        ))
        .unwrap();
    let task = task();

    let mut group = criterion.benchmark_group("adapter call");
    group.bench_function("plugin: fresh store, instantiate, run", |bencher| {
        bencher.to_async(&runtime).iter(|| async {
            let result = host.run(&plugin, black_box(&task)).await.unwrap().unwrap();
            black_box(apply_wit_task(&task, result).unwrap())
        })
    });
    group.bench_function("native Rust, same conversions", |bencher| {
        bencher.iter(|| black_box(native_echo(black_box(&task))))
    });
    group.finish();
}

fn merge_and_templates(criterion: &mut Criterion) {
    let task = task();
    let update = json!({
        "version": 1, "state": {"done": true},
        "output": {"text": "Once there was a lighthouse.", "parts": ["a", "b", "c"]},
        "response": {"answer": "the sea"}
    });
    criterion.bench_function("merge an update", |bencher| {
        bencher.iter(|| black_box(merge(black_box(&task), black_box(&update)).unwrap()))
    });

    let config = json!({
        "prompt": "Give this story a title: {{outputs.examples.story.summarize.text}}",
        "topic": "{{input.topic}}",
        "nested": {"list": ["{{input.n}}", "plain"]}
    });
    let input = json!({"topic": "a lighthouse", "n": 3});
    let outputs: HashMap<String, Value> = HashMap::from([(
        "examples.story.summarize".to_owned(),
        json!({"text": "Once there was a lighthouse. Day after day it kept watch."}),
    )]);
    criterion.bench_function("fill templates", |bencher| {
        bencher.iter(|| {
            let context = TemplateContext {
                input: &input,
                outputs: &outputs,
                user: &Value::Null,
            };
            black_box(fill(black_box(&config), &context).unwrap())
        })
    });
}

/// Measures checking a token that is not in the verification cache:
/// one argon2id verification with the crate's default parameters.
fn token_check(criterion: &mut Criterion) {
    let (_, secret, _) = taskhub::auth::secret::new_token();
    let stored = taskhub::auth::secret::hash(&secret);
    let mut group = criterion.benchmark_group("token check");
    group.sample_size(20);
    group.bench_function("argon2id verify", |bencher| {
        bencher.iter(|| assert!(taskhub::auth::secret::verify(black_box(&secret), &stored)))
    });
    group.finish();
}

criterion_group!(benches, plugin_call, merge_and_templates, token_check);
criterion_main!(benches);
