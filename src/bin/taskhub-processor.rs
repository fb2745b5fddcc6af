//! `taskhub-processor`: a small processor that serves environments a hub
//! has no plugin for, over the hub's WebSocket.
//!
//! It serves two environments:
//!
//! - `echo`: reports that it received the task (a partial update), waits
//!   `input.delayMs` milliseconds if given, then finishes with
//!   `{"echo": <input>, "processor": <id>}`;
//! - `wordcount`: finishes with the number of words in `config.text`, or
//!   in `input.text` when the config has none.
//!
//! It reconnects with exponential backoff whenever the connection drops.

use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde_json::{Map, Value, json};
use taskhub::processors::client::{self, ClientConfig, Handler, TaskHandle};
use tracing_subscriber::EnvFilter;

/// Environments this program knows how to serve.
const KNOWN: &[&str] = &["echo", "wordcount"];

/// Serve environments to a taskhub over WebSocket.
#[derive(Parser)]
#[command(name = "taskhub-processor", version)]
struct Args {
    /// The hub's processor endpoint.
    #[arg(long, env = "TASKHUB_URL", default_value = "ws://127.0.0.1:8080/ws")]
    hub: String,
    /// Processor id, kept across reconnections; unique per hub.
    #[arg(
        long,
        env = "TASKHUB_PROCESSOR_ID",
        default_value = "example-processor"
    )]
    id: String,
    /// Environment to serve (`echo` or `wordcount`); repeat for several.
    #[arg(long = "environment", default_values = ["echo", "wordcount"])]
    environments: Vec<String>,
    /// The hub's processor token, if it requires one.
    #[arg(long, env = "TASKHUB_PROCESSOR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Longest wait between reconnection attempts, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    max_backoff_ms: u64,
}

struct Example {
    processor_id: String,
}

impl Handler for Example {
    fn run(&self, handle: TaskHandle) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let processor_id = self.processor_id.clone();
        Box::pin(async move {
            let instance_id = handle.task()["instanceId"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            if let Err(err) = serve(handle, &processor_id).await {
                tracing::warn!(%instance_id, error = %err, "an update was not accepted; the hub decides who runs the task now");
            }
        })
    }
}

async fn serve(mut handle: TaskHandle, processor_id: &str) -> Result<(), client::UpdateError> {
    let task = handle.task().clone();
    let input = &task["input"];
    let environment = task["environment"].as_str().unwrap_or("");
    tracing::info!(instance_id = %task["instanceId"], task_id = %task["id"], environment, "running task");

    let result = match environment {
        "echo" => {
            handle
                .update(fields(json!({"state": {"current": "received"}})))
                .await?;
            if let Some(delay) = input["delayMs"].as_u64() {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            json!({"output": {"echo": input, "processor": processor_id}, "state": {"done": true}})
        }
        "wordcount" => match task["config"]["text"].as_str().or(input["text"].as_str()) {
            Some(text) => json!({
                "output": {"words": text.split_whitespace().count()},
                "state": {"done": true},
            }),
            None => {
                json!({"error": "`input.text` is missing; wordcount counts the words of a string"})
            }
        },
        other => json!({"error": format!("this processor does not serve environment `{other}`")}),
    };
    handle.update(fields(result)).await?;
    Ok(())
}

fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(fields) => fields,
        _ => Map::new(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Some(unknown) = args
        .environments
        .iter()
        .find(|name| !KNOWN.contains(&name.as_str()))
    {
        eprintln!(
            "error: unknown environment `{unknown}`; this processor serves {}",
            KNOWN.join(" and ")
        );
        return ExitCode::FAILURE;
    }

    let config = ClientConfig {
        url: args.hub,
        processor_id: args.id.clone(),
        environments: args.environments,
        token: args.token,
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(args.max_backoff_ms.max(100)),
    };
    let handler = Arc::new(Example {
        processor_id: args.id,
    });
    match client::run(config, handler).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
