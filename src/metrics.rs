//! Prometheus metrics: names, labels and the recorder.
//!
//! Code records through the `metrics` facade with the helpers below; `GET
//! /metrics` renders the text format. Labels stay bounded: task and thread
//! ids never become labels. A taskflow label is a definition id without its
//! last segment, and a plugin version is the first 12 hex digits of its
//! hash, so their number grows only with what operators load.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets for durations, in seconds: 100 µs to a minute.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Buckets for write batch sizes, in transactions.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle. Later
/// calls return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full("taskhub_sqlite_write_batch_size".into()),
                        BATCH_BUCKETS,
                    )
                })
                .expect("bucket lists are not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics stays empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "taskhub_tasks_started_total",
        "Task instances entered, by taskflow and environment."
    );
    describe_counter!(
        "taskhub_tasks_completed_total",
        "Task instances done, by taskflow and environment."
    );
    describe_counter!(
        "taskhub_tasks_failed_total",
        "Task instances failed, by taskflow and environment."
    );
    describe_histogram!(
        "taskhub_task_duration_seconds",
        "Time from a task instance's creation to its end, by taskflow."
    );
    describe_counter!(
        "taskhub_plugin_calls_total",
        "Plugin calls, by plugin and version."
    );
    describe_counter!(
        "taskhub_plugin_traps_total",
        "Plugin calls that trapped, ran past the deadline or hit the memory cap, by plugin, version and kind."
    );
    describe_histogram!(
        "taskhub_plugin_call_duration_seconds",
        "Duration of plugin calls, by plugin."
    );
    describe_counter!(
        "taskhub_plugin_load_failures_total",
        "Plugin files that failed to load, by plugin."
    );
    describe_counter!(
        "taskhub_plugin_reloads_total",
        "Plugin versions loaded (first loads and replacements), by plugin."
    );
    describe_gauge!("taskhub_processors_connected", "Processors registered now.");
    describe_gauge!(
        "taskhub_queue_depth",
        "Tasks pending for a provider, by environment."
    );
    describe_counter!(
        "taskhub_http_requests_total",
        "HTTP requests, by route, method and status."
    );
    describe_histogram!(
        "taskhub_http_request_duration_seconds",
        "HTTP request duration, by route and method."
    );
    describe_histogram!(
        "taskhub_sqlite_write_batch_size",
        "Transactions committed together in one SQLite write batch."
    );
    describe_histogram!(
        "taskhub_sqlite_commit_duration_seconds",
        "Time to commit one SQLite write batch, including the fsync."
    );
}

/// Returns the taskflow label of a task id: the id without its last
/// segment.
pub fn taskflow_of(task_id: &str) -> &str {
    task_id
        .rsplit_once('.')
        .map_or(task_id, |(prefix, _)| prefix)
}

/// Records a task instance entering a thread.
pub fn task_started(task_id: &str, environment: &str) {
    counter!("taskhub_tasks_started_total", "taskflow" => taskflow_of(task_id).to_owned(), "environment" => environment.to_owned()).increment(1);
}

/// Records a task instance ending, done or failed, after `duration`.
pub fn task_ended(task_id: &str, environment: &str, done: bool, duration: Duration) {
    let taskflow = taskflow_of(task_id).to_owned();
    let name = if done {
        "taskhub_tasks_completed_total"
    } else {
        "taskhub_tasks_failed_total"
    };
    counter!(name, "taskflow" => taskflow.clone(), "environment" => environment.to_owned())
        .increment(1);
    histogram!("taskhub_task_duration_seconds", "taskflow" => taskflow)
        .record(duration.as_secs_f64());
}

/// Records one plugin call; `trap` names the kind of failure, if any.
pub fn plugin_call(plugin: &str, version: &str, duration: Duration, trap: Option<&'static str>) {
    counter!("taskhub_plugin_calls_total", "plugin" => plugin.to_owned(), "version" => version.to_owned()).increment(1);
    histogram!("taskhub_plugin_call_duration_seconds", "plugin" => plugin.to_owned())
        .record(duration.as_secs_f64());
    if let Some(kind) = trap {
        counter!("taskhub_plugin_traps_total", "plugin" => plugin.to_owned(), "version" => version.to_owned(), "kind" => kind).increment(1);
    }
}

/// Records a plugin file that failed to load.
pub fn plugin_load_failed(plugin: &str) {
    counter!("taskhub_plugin_load_failures_total", "plugin" => plugin.to_owned()).increment(1);
}

/// Records a plugin version being loaded.
pub fn plugin_loaded(plugin: &str) {
    counter!("taskhub_plugin_reloads_total", "plugin" => plugin.to_owned()).increment(1);
}

/// Sets the number of connected processors.
pub fn processors_connected(count: usize) {
    gauge!("taskhub_processors_connected").set(count as f64);
}

/// Sets the number of pending tasks for `environment`.
pub fn queue_depth(environment: &str, count: u64) {
    gauge!("taskhub_queue_depth", "environment" => environment.to_owned()).set(count as f64);
}

/// Records one HTTP request.
pub fn http_request(route: &str, method: &str, status: u16, duration: Duration) {
    counter!("taskhub_http_requests_total", "route" => route.to_owned(), "method" => method.to_owned(), "status" => status.to_string()).increment(1);
    histogram!("taskhub_http_request_duration_seconds", "route" => route.to_owned(), "method" => method.to_owned()).record(duration.as_secs_f64());
}

/// Records one SQLite write batch.
pub fn write_batch(transactions: usize, commit: Duration) {
    histogram!("taskhub_sqlite_write_batch_size").record(transactions as f64);
    histogram!("taskhub_sqlite_commit_duration_seconds").record(commit.as_secs_f64());
}
