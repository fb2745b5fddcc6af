//! Processor benchmarks, run against the real hub binary over loopback:
//!
//! - round trip of a trivial task: the hub dispatches it to a processor, the
//!   processor answers with a final update, the hub commits it and replies;
//! - the hub's resident memory with many idle registered processors.
//!
//! `cargo bench --bench processors` runs the full sizes; add `-- --quick`
//! for a short run that only proves the benchmark still works.

#[path = "../tests/all/support.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use support::{Hub, HubFiles, TestProcessor};

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let (tasks, idle) = if quick { (50, 50) } else { (2000, 1000) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("machine: {}", machine());
        round_trip(tasks).await;
        idle_processors(idle).await;
    });
}

async fn round_trip(tasks: usize) {
    let files = HubFiles::with_plugins(&["faults"]);
    let hub = Hub::start_with_log(&files, &[], "warn,taskhub::server=info");
    let mut processor = TestProcessor::register(&hub, "bench", &["remote"]).await;

    let mut update_round_trips = Vec::with_capacity(tasks);
    let mut dispatches = Vec::with_capacity(tasks);
    let mut cycles = Vec::with_capacity(tasks);
    let warmup = tasks / 10;
    for n in 0..tasks + warmup {
        let started = Instant::now();
        hub.start_task("testing.remote.run", json!({"n": n})).await;
        let answered = Instant::now();
        let task = processor.dispatched().await;
        let dispatched = Instant::now();
        processor.finish(&task, json!({"n": n})).await;
        let finished = Instant::now();
        if n >= warmup {
            dispatches.push(dispatched - answered);
            update_round_trips.push(finished - dispatched);
            cycles.push(finished - started);
        }
    }
    println!("processor round trip, {tasks} tasks, one processor:");
    report(
        "  final update -> hub commits -> updated",
        &mut update_round_trips,
    );
    report("  start answered -> dispatch received", &mut dispatches);
    report(
        "  whole task: POST start -> dispatch -> update -> updated",
        &mut cycles,
    );
}

async fn idle_processors(count: usize) {
    let files = HubFiles::new();
    let hub = Hub::start_with_log(&files, &[], "warn,taskhub::server=info");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = resident_kib(hub.pid());

    let mut readers = Vec::with_capacity(count);
    for n in 0..count {
        let processor = TestProcessor::register(&hub, &format!("idle-{n}"), &["remote"]).await;
        // Keep reading, so the WebSocket layer answers the hub's pings.
        readers.push(tokio::spawn(async move {
            let mut socket = processor.into_socket();
            while let Some(Ok(_)) = socket.next().await {}
        }));
    }
    let (_, listed) = hub.get("/api/processors").await;
    let registered = listed.as_array().map(Vec::len).unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = resident_kib(hub.pid());
    println!("idle processors: {registered} registered");
    println!(
        "  hub resident memory: {} MiB before, {} MiB with them",
        before / 1024,
        after / 1024
    );
    println!(
        "  per processor: {:.1} KiB",
        (after.saturating_sub(before)) as f64 / registered.max(1) as f64
    );
    for reader in readers {
        reader.abort();
    }
}

fn report(label: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |fraction: f64| {
        samples[((samples.len() as f64 * fraction) as usize).min(samples.len() - 1)]
    };
    println!(
        "{label}: median {:.0} us, p99 {:.0} us, min {:.0} us",
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        samples[0].as_secs_f64() * 1e6,
    );
}

/// Returns the resident set size of process `pid` in KiB.
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
