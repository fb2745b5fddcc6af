//! Crash safety under load: tasks start at a steady rate while the hub is
//! killed with SIGKILL at random moments and started again on the same
//! database. Every acknowledged thread must be present and reach its end,
//! and no task may complete twice.
//!
//! Runs for `TASKHUB_SOAK_SECS` seconds (15 by default).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Hub, HubFiles};

/// A small xorshift generator: enough to spread the kills, and seeded from
/// the clock so each run kills at other moments. The seed is printed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

#[derive(Default)]
struct Counts {
    started: usize,
    /// Acknowledged threads (a 201 came back), with the flow they run.
    acknowledged: HashMap<String, &'static str>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_lose_and_duplicate_nothing() {
    let seconds: u64 = std::env::var("TASKHUB_SOAK_SECS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(15);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut random = Random(seed);
    eprintln!("soak: {seconds} s, seed {seed}");

    let files = HubFiles::with_plugins(&["story", "llm-mock", "echo"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let arguments = ["--listen", listen.as_str()];
    let mut hub = Some(Hub::start_with_log(
        &files,
        &arguments,
        "warn,taskhub::server=info",
    ));
    let base = hub.as_ref().unwrap().base.clone();

    // Steady load: a start every 5 ms, alternating a one-step flow and the
    // three-step story, while the hub comes and goes.
    let counts = Arc::new(Mutex::new(Counts::default()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let load = {
        let counts = counts.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            let mut ticker = tokio::time::interval(Duration::from_millis(5));
            let mut n = 0u64;
            while Instant::now() < deadline {
                ticker.tick().await;
                n += 1;
                let (flow, id, input) = if n.is_multiple_of(2) {
                    ("echo", "bench.echo", json!({"n": n}))
                } else {
                    (
                        "story",
                        "examples.story.start",
                        json!({"topic": format!("soak {n}")}),
                    )
                };
                counts.lock().unwrap().started += 1;
                let client = client.clone();
                let counts = counts.clone();
                let url = format!("{base}/api/tasks");
                tokio::spawn(async move {
                    let body = json!({"command": "start", "task": {"id": id, "input": input}});
                    let Ok(response) = client.post(&url).json(&body).send().await else {
                        return;
                    };
                    if response.status() != 201 {
                        return;
                    }
                    let Ok(task) = response.json::<Value>().await else {
                        return;
                    };
                    let thread_id = task["threadId"].as_str().unwrap_or_default().to_owned();
                    counts.lock().unwrap().acknowledged.insert(thread_id, flow);
                });
            }
        })
    };

    // Kill and restart at random moments until the time is up.
    let mut kills = 0;
    while Instant::now() < deadline {
        let wait = Duration::from_millis(random.between(200, 1500));
        tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
        if Instant::now() >= deadline {
            break;
        }
        hub.take().unwrap().kill();
        kills += 1;
        hub = Some(Hub::start_with_log(
            &files,
            &arguments,
            "warn,taskhub::server=info",
        ));
    }
    load.await.unwrap();
    // Let answers in flight arrive, then restart once more so the checks
    // read a hub that resumed everything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    hub.take().unwrap().kill();
    let hub = Hub::start_with_log(&files, &arguments, "warn,taskhub::server=info");

    let (started, acknowledged) = {
        let counts = counts.lock().unwrap();
        (counts.started, counts.acknowledged.clone())
    };
    let mut completed = 0;
    let mut lost = Vec::new();
    let mut duplicated = Vec::new();
    for (thread_id, flow) in &acknowledged {
        let path = format!("/api/threads/{thread_id}");
        let (status, _) = hub.get(&path).await;
        if status != 200 {
            lost.push(thread_id.clone());
            continue;
        }
        let thread = hub.wait_thread_end(thread_id).await;
        let expected: &[&str] = match *flow {
            "echo" => &["bench.echo"],
            _ => &[
                "examples.story.start",
                "examples.story.summarize",
                "examples.story.structure",
            ],
        };
        let tasks = thread["tasks"].as_array().unwrap();
        let ids: Vec<&str> = tasks
            .iter()
            .map(|task| task["id"].as_str().unwrap())
            .collect();
        // Each step ran to completion exactly once: one instance each, done,
        // finished by one accepted result.
        let once = ids == expected
            && tasks.iter().all(|task| task["status"] == "done")
            && tasks.iter().all(|task| task["version"].as_u64() <= Some(2));
        if thread["status"] != "done" {
            lost.push(thread_id.clone());
        } else if once {
            completed += 1;
        } else {
            duplicated.push(thread_id.clone());
        }
    }
    println!(
        "soak: {seconds} s, {kills} kills, started {started}, acknowledged {}, completed {completed}, \
         lost {}, duplicated {}",
        acknowledged.len(),
        lost.len(),
        duplicated.len()
    );
    assert!(kills >= 3, "too few kills to mean anything: {kills}");
    assert!(
        acknowledged.len() > 100,
        "too few acknowledged tasks: {}",
        acknowledged.len()
    );
    assert!(lost.is_empty(), "lost threads: {lost:?}");
    assert!(
        duplicated.is_empty(),
        "threads with a step done twice: {duplicated:?}"
    );
    assert_eq!(completed, acknowledged.len());
}
