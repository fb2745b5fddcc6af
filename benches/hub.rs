//! Whole-hub figures, against the real binary: hot reload latency, start-up
//! time with 20 plugins, and resident memory (idle, with 10,000 archived
//! threads, and over a million plugin calls in one process).
//!
//! `cargo bench --bench hub`; `-- --quick` runs small sizes only to prove
//! the benchmark works.

#[path = "../tests/all/support.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Hub, HubFiles, component};
use taskhub::plugin::{Grants, Limits, PluginHost, content_hash};

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("machine: {}", machine());
        hot_reload(quick).await;
        start_up(quick).await;
        memory(quick).await;
    });
}

/// Returns `bytes` with a custom section of `size` bytes appended, which
/// changes the content hash and the size but not the code.
fn padded(bytes: &[u8], size: usize, tag: usize) -> Vec<u8> {
    let name = format!("taskhub-bench-padding-{tag}");
    let mut payload = Vec::new();
    leb128(&mut payload, name.len());
    payload.extend_from_slice(name.as_bytes());
    payload.resize(payload.len() + size, 0x5a);
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    leb128(&mut out, payload.len());
    out.extend_from_slice(&payload);
    out
}

fn leb128(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Copies `bytes` in as `plugins/echo.wasm` and returns the time until the
/// first `bench.echo` task has been served.
async fn time_to_first_task(hub: &Hub, files: &HubFiles, bytes: &[u8]) -> Duration {
    let started = Instant::now();
    files.write_plugin("echo", bytes);
    let client = reqwest::Client::new();
    let body = json!({"command": "start", "task": {"id": "bench.echo", "input": {"n": 1}}});
    let thread_id = loop {
        let response = client
            .post(format!("{}/api/tasks", hub.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        if response.status() == 201 {
            let task: serde_json::Value = response.json().await.unwrap();
            break task["threadId"].as_str().unwrap().to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the plugin never loaded"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    hub.wait_thread_end(&thread_id).await;
    started.elapsed()
}

async fn hot_reload(quick: bool) {
    let rounds = if quick { 1 } else { 5 };
    println!("hot reload: file appears -> first task served (median of {rounds})");
    let small = component("echo");
    for (label, size) in [("small", 0usize), ("5 MB", 5 << 20)] {
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        for round in 0..rounds {
            let bytes = if size == 0 {
                padded(&small, 16, round)
            } else {
                padded(&small, size, round)
            };
            let files = HubFiles::new();
            let hub = Hub::start_with_log(&files, &[], "warn,taskhub::server=info");
            cold.push(time_to_first_task(&hub, &files, &bytes).await);
            std::fs::remove_file(files.plugin_path("echo")).unwrap();
            hub.wait_plugins(|plugins| plugins.is_empty()).await;
            warm.push(time_to_first_task(&hub, &files, &bytes).await);
        }
        println!(
            "  {label} ({} bytes): cache cold {:.0} ms, cache warm {:.0} ms",
            if size == 0 {
                small.len() + 40
            } else {
                small.len() + size
            },
            median(&mut cold).as_secs_f64() * 1e3,
            median(&mut warm).as_secs_f64() * 1e3
        );
    }
}

async fn start_up(quick: bool) {
    let count = if quick { 3 } else { 20 };
    let files = HubFiles::new();
    let adapter = component("llm-mock");
    for n in 0..count {
        files.write_plugin(&format!("adapter-{n:02}"), &padded(&adapter, 16, n));
    }
    let mut timings = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let hub = Hub::start_with_log(&files, &[], "warn,taskhub::server=info");
        timings.push(started.elapsed());
        let plugins = hub.wait_plugins(|plugins| plugins.len() == count).await;
        assert!(plugins.iter().all(|plugin| plugin["status"] == "loaded"));
        hub.kill();
    }
    // The first start compiled every plugin; the later ones read the cache.
    let cold = timings[0];
    let mut cached = timings[1..].to_vec();
    println!(
        "start-up with {count} plugins, spawn -> listening: cache cold {:.0} ms, cached {:.0} ms",
        cold.as_secs_f64() * 1e3,
        median(&mut cached).as_secs_f64() * 1e3
    );
}

async fn memory(quick: bool) {
    // Idle, then with many archived threads, in the hub process.
    let files = HubFiles::with_plugins(&["story", "llm-mock", "interview", "flaky", "echo"]);
    let hub = Hub::start_with_log(&files, &[], "warn,taskhub::server=info");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = resident_kib(hub.pid());
    let threads = if quick { 200 } else { 10_000 };
    let client = reqwest::Client::new();
    let body = json!({"command": "start", "task": {"id": "bench.echo", "input": {"n": 1}}});
    let mut last = String::new();
    for _ in 0..threads {
        let task: serde_json::Value = client
            .post(format!("{}/api/tasks", hub.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        last = task["threadId"].as_str().unwrap().to_owned();
    }
    hub.wait_thread_end(&last).await;
    let with_threads = resident_kib(hub.pid());
    println!(
        "hub resident memory: idle {} MiB, with {threads} archived threads {} MiB",
        idle / 1024,
        with_threads / 1024
    );

    // A million plugin calls through the plugin host, in this process.
    let calls = if quick { 20_000 } else { 1_000_000 };
    let bytes = component("echo");
    let host = PluginHost::new(Limits::default(), None, None).unwrap();
    let hash = content_hash(&bytes);
    let plugin = host
        .load(
            "echo",
            Arc::new(bytes),
            hash,
            Grants::defaults(host.limits()),
        )
        .await
        .unwrap();
    let task = serde_json::from_value(json!({
        "id": "bench.echo", "instanceId": "i", "threadId": "t", "parentInstanceId": null,
        "userId": null, "groupId": null, "environments": ["echo"], "environment": "echo",
        "status": "dispatched", "state": null, "input": {"n": 1}, "output": null,
        "config": null, "request": null, "response": null, "error": null, "nextTask": null,
        "command": null, "commandArgs": null, "version": 1, "createdAt": "", "updatedAt": "",
        "completedAt": null
    }))
    .unwrap();
    let own = std::process::id();
    let mut checkpoints = Vec::new();
    let started = Instant::now();
    for call in 1..=calls {
        host.run(&plugin, &task).await.unwrap().unwrap();
        if call == calls / 100 || call == calls / 10 || call == calls {
            checkpoints.push((call, resident_kib(own)));
        }
    }
    let per_call = started.elapsed() / calls as u32;
    let report: Vec<String> = checkpoints
        .iter()
        .map(|(call, kib)| format!("{} MiB after {call}", kib / 1024))
        .collect();
    println!(
        "plugin host resident memory over {calls} calls ({:.1} us each): {}",
        per_call.as_secs_f64() * 1e6,
        report.join(", ")
    );
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .map(|value| value.trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores, {memory} memory")
}
