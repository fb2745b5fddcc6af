//! Load generator: starts one-step tasks on a hub over loopback with a
//! bounded number of clients and requests, and reports throughput and
//! latency. In the same run it measures two ceilings on the same machine:
//!
//! - HTTP: a bare axum handler that answers the same JSON and does nothing;
//! - storage: the same rows written durably through the hub's storage
//!   (sqlx, SQLite in WAL mode with `synchronous=FULL`, group commit), with
//!   no HTTP, engine or plugin in the way.
//!
//! ```sh
//! cargo run --release --example load                 # starts its own hub
//! cargo run --release --example load -- --url http://127.0.0.1:8080 --task examples.story.start
//! ```
//!
//! Without `--url` it runs a hub in this process with the `echo` fixture,
//! whose `bench.echo` task one plugin call completes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use serde_json::{Value, json};
use taskhub::plugin::Limits;
use taskhub::processors::session::SessionConfig;
use taskhub::storage::{Storage, TaskRecord, ThreadRecord, Transaction, Write};
use taskhub::{HubConfig, RunningHub};
use tokio::sync::oneshot;

/// Drive a hub with one-step tasks and compare it with its ceilings.
#[derive(Parser, Clone)]
struct Args {
    /// A running hub; without it, one is started in this process.
    #[arg(long)]
    url: Option<String>,
    /// The start task to run; it should end its thread in one step.
    #[arg(long, default_value = "bench.echo")]
    task: String,
    /// Input of every task, as JSON.
    #[arg(long, default_value = r#"{"n": 1}"#)]
    input: String,
    /// Clients sending at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Tasks to start in all.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Skip the HTTP and storage ceilings.
    #[arg(long)]
    no_ceilings: bool,
}

/// Latencies and the wall time of one run.
struct Run {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&mut self, fraction: f64) -> Duration {
        self.latencies.sort();
        let index =
            ((self.latencies.len() as f64 * fraction) as usize).min(self.latencies.len() - 1);
        self.latencies[index]
    }

    fn report(&mut self, label: &str) {
        println!(
            "{label}: {} in {:.2} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
            self.latencies.len(),
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.percentile(0.5).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let input: Value = serde_json::from_str(&args.input)?;
    println!(
        "machine: {} cores; {} clients, {} tasks",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.concurrency,
        args.requests
    );

    let folder = tempfile::tempdir()?;
    let (base, hub) = match &args.url {
        Some(url) => (url.trim_end_matches('/').to_owned(), None),
        None => {
            let hub = start_hub(folder.path()).await?;
            (format!("http://{}", hub.address), Some(hub))
        }
    };

    let mut hub_run = drive_hub(&base, &args, &input).await?;
    hub_run.report("hub, start → thread ended");
    if let Some(hub) = hub {
        hub.stop(Duration::from_secs(5)).await?;
    }
    if args.no_ceilings {
        return Ok(());
    }

    let mut http = http_ceiling(&args).await?;
    http.report("HTTP ceiling, bare handler");
    let mut storage = storage_ceiling(folder.path(), &args).await?;
    storage.report("storage ceiling, same rows");
    println!(
        "hub throughput: {:.0}% of the storage ceiling, {:.0}% of the HTTP ceiling",
        100.0 * hub_run.rate() / storage.rate(),
        100.0 * hub_run.rate() / http.rate()
    );
    Ok(())
}

async fn start_hub(folder: &std::path::Path) -> anyhow::Result<RunningHub> {
    let plugins = folder.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    let echo = std::path::Path::new(env!("TASKHUB_TEST_COMPONENTS")).join("echo.wasm");
    std::fs::copy(echo, plugins.join("echo.wasm"))?;
    RunningHub::start(HubConfig {
        listen: "127.0.0.1:0".parse()?,
        plugins,
        db: folder.join("hub.db"),
        cache_dir: folder.join("cache"),
        limits: Limits::default(),
        max_body_bytes: 1 << 20,
        sessions: SessionConfig::default(),
        sweeps: taskhub::engine::Sweeps {
            pending_timeout: None,
        },
        parent: None,
        rate_limits: taskhub::auth::RateLimits::default(),
    })
    .await
}

fn client(concurrency: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()
        .expect("the HTTP client builds")
}

/// Threads waiting to end, and threads that ended before anyone waited.
#[derive(Default)]
struct Endings {
    waiting: HashMap<String, oneshot::Sender<Instant>>,
    ended: HashMap<String, Instant>,
}

async fn drive_hub(base: &str, args: &Args, input: &Value) -> anyhow::Result<Run> {
    let client = client(args.concurrency);
    let endings = Arc::new(Mutex::new(Endings::default()));

    // One event stream reports every thread's end.
    let events = client
        .get(format!("{base}/api/events"))
        .send()
        .await?
        .error_for_status()?;
    let listener = tokio::spawn(follow_endings(events, endings.clone()));

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, endings, next) = (client.clone(), endings.clone(), next.clone());
        let (url, total) = (format!("{base}/api/tasks"), args.requests);
        let body = json!({"command": "start", "task": {"id": args.task, "input": input}});
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let sent = Instant::now();
                let response = client.post(&url).json(&body).send().await?;
                let status = response.status();
                let task: Value = response.json().await?;
                anyhow::ensure!(status == 201, "start answered {status}: {task}");
                let thread_id = task["threadId"].as_str().unwrap_or_default().to_owned();
                let ended = {
                    let mut endings = endings.lock().unwrap();
                    match endings.ended.remove(&thread_id) {
                        Some(at) => Ok(at),
                        None => {
                            let (tell, told) = oneshot::channel();
                            endings.waiting.insert(thread_id, tell);
                            Err(told)
                        }
                    }
                };
                let at = match ended {
                    Ok(at) => at,
                    Err(told) => tokio::time::timeout(Duration::from_secs(60), told).await??,
                };
                latencies.push(at - sent);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    listener.abort();
    Ok(Run { latencies, elapsed })
}

async fn follow_endings(events: reqwest::Response, endings: Arc<Mutex<Endings>>) {
    let mut stream = events.bytes_stream();
    let mut buffer = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if !event.contains("event: threadEnded") {
                continue;
            }
            let Some(data) = event.lines().find_map(|line| line.strip_prefix("data: ")) else {
                continue;
            };
            let Ok(data) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            let thread_id = data["threadId"].as_str().unwrap_or_default().to_owned();
            let now = Instant::now();
            let mut endings = endings.lock().unwrap();
            match endings.waiting.remove(&thread_id) {
                Some(tell) => {
                    let _ = tell.send(now);
                }
                None => {
                    endings.ended.insert(thread_id, now);
                }
            }
        }
    }
}

async fn http_ceiling(args: &Args) -> anyhow::Result<Run> {
    let answer = json!({
        "id": "bench.echo", "instanceId": "01a24250-0000-7000-8000-000000000000",
        "threadId": "01a24250-0000-7000-8000-000000000001", "status": "dispatched",
        "environments": ["echo"], "environment": "echo", "input": {"n": 1}, "version": 1
    });
    let app = axum::Router::new().route(
        "/api/tasks",
        axum::routing::post(move |axum::Json(_body): axum::Json<Value>| {
            let answer = answer.clone();
            async move { (axum::http::StatusCode::CREATED, axum::Json(answer)) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address: SocketAddr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        axum::serve(listener, app).await
    });

    let client = client(args.concurrency);
    let url = format!("http://{address}/api/tasks");
    let body = json!({"command": "start", "task": {"id": args.task, "input": {"n": 1}}});
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, url, body, total) = (
            client.clone(),
            next.clone(),
            url.clone(),
            body.clone(),
            args.requests,
        );
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let sent = Instant::now();
                let response = client.post(&url).json(&body).send().await?;
                let _: Value = response.json().await?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    server.abort();
    Ok(Run { latencies, elapsed })
}

/// Writes, for each task, the two transactions the hub commits for a
/// one-step task: the start (thread and live task) and the end (archive,
/// output, thread update).
async fn storage_ceiling(folder: &std::path::Path, args: &Args) -> anyhow::Result<Run> {
    let storage = Storage::open(&folder.join("ceiling.db")).await?;
    let body = json!({"id": "bench.echo", "input": {"n": 1}, "output": {"n": 1}, "version": 1})
        .to_string();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (storage, next, body, total) =
            (storage.clone(), next.clone(), body.clone(), args.requests);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let sent = Instant::now();
                let (thread_id, instance_id) = (format!("t-{n}"), format!("i-{n}"));
                let now = taskhub::engine::task::now_millis();
                let task = TaskRecord {
                    instance_id: instance_id.clone(),
                    thread_id: thread_id.clone(),
                    seq: 1,
                    task_id: "bench.echo".into(),
                    status: "dispatched".into(),
                    environment: Some("echo".into()),
                    provider: Some("plugin:echo".into()),
                    version: 1,
                    after_failure: false,
                    body: body.clone(),
                    created_at: now,
                    updated_at: now,
                };
                let mut start = Transaction::new();
                start.push(Write::InsertThread(ThreadRecord {
                    thread_id: thread_id.clone(),
                    start_task_id: "bench.echo".into(),
                    status: "running".into(),
                    error: None,
                    user_id: None,
                    group_id: None,
                    mode: "new".into(),
                    mode_key: None,
                    task_count: 1,
                    created_at: now,
                    updated_at: now,
                }));
                start.push(Write::InsertTask(task.clone()));
                storage.commit(start).await?;

                let mut end = Transaction::new();
                end.push(Write::ArchiveTask {
                    record: TaskRecord {
                        status: "done".into(),
                        version: 2,
                        ..task
                    },
                    expected_version: Some(1),
                });
                end.push(Write::PutOutput {
                    thread_id: thread_id.clone(),
                    task_id: "bench.echo".into(),
                    instance_id,
                    output: r#"{"n":1}"#.into(),
                    at: now,
                });
                end.push(Write::UpdateThread {
                    thread_id,
                    status: "done".into(),
                    error: None,
                    task_count: 1,
                    at: now,
                });
                storage.commit(end).await?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    storage.close().await;
    Ok(Run { latencies, elapsed })
}
