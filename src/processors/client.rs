//! The processor side of the protocol: connect to a hub, register, receive
//! tasks, send updates, and reconnect with exponential backoff when the
//! connection drops.
//!
//! `taskhub-processor` is built on this; any program in Rust that serves
//! environments can be too. A [`Handler`] runs each dispatched task and
//! reports through its [`TaskHandle`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Where and as what to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The hub's WebSocket address, e.g. `ws://127.0.0.1:8080/ws`.
    pub url: String,
    /// The processor id, kept across reconnections.
    pub processor_id: String,
    /// Environments to serve.
    pub environments: Vec<String>,
    /// The hub's processor token, if it requires one.
    pub token: Option<String>,
    /// First wait before reconnecting; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

/// Why the client stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub rejected the registration in a way retrying cannot fix
    /// (a wrong token, an invalid id or environment).
    #[error("the hub rejected the registration: {code}: {message}")]
    Rejected {
        /// The hub's error code.
        code: String,
        /// The hub's message.
        message: String,
    },
}

/// Why one update was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpdateError {
    /// The hub answered with an error.
    #[error("{code}: {message}")]
    Rejected {
        /// The hub's error code, e.g. `version_conflict` or `not_held`.
        code: String,
        /// The hub's message.
        message: String,
    },
    /// The connection dropped before the hub answered; the hub gives the
    /// task to another provider.
    #[error("the connection to the hub dropped")]
    Disconnected,
}

/// A dispatched task and the means to report on it.
pub struct TaskHandle {
    task: Value,
    instance_id: String,
    version: u64,
    link: Arc<Link>,
}

impl TaskHandle {
    /// Returns the task as the hub sent it.
    pub fn task(&self) -> &Value {
        &self.task
    }

    /// Returns the version the next update is based on.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sends task fields to merge (`output`, `state`, `error`, ...) and
    /// waits for the hub to accept them. Include `"state": {"done": true}`
    /// to finish the task.
    ///
    /// # Errors
    ///
    /// The hub's rejection, or a dropped connection.
    pub async fn update(&mut self, mut fields: Map<String, Value>) -> Result<String, UpdateError> {
        fields.insert("instanceId".into(), json!(self.instance_id));
        fields.insert("version".into(), json!(self.version));
        let (reply, answer) = oneshot::channel();
        self.link
            .replies
            .lock()
            .expect("reply lock poisoned")
            .insert(self.instance_id.clone(), reply);
        let message = json!({"command": "update", "task": fields}).to_string();
        if self
            .link
            .outgoing
            .send(Message::Text(message.into()))
            .is_err()
        {
            return Err(UpdateError::Disconnected);
        }
        let (version, status) = answer.await.map_err(|_| UpdateError::Disconnected)??;
        self.version = version;
        Ok(status)
    }
}

/// Runs dispatched tasks.
pub trait Handler: Send + Sync + 'static {
    /// Runs one task, reporting through `handle`. The task counts as
    /// finished once an update with `state.done` (or an `error`) is
    /// accepted.
    fn run(&self, handle: TaskHandle) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

type Reply = Result<(u64, String), UpdateError>;

/// What the tasks of one connection share.
struct Link {
    outgoing: mpsc::UnboundedSender<Message>,
    replies: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
}

/// Connects, serves until the connection drops, and reconnects with
/// exponential backoff, forever.
///
/// # Errors
///
/// Returns only when the hub rejects the registration for good.
pub async fn run(config: ClientConfig, handler: Arc<dyn Handler>) -> Result<(), ClientError> {
    let mut backoff = config.min_backoff;
    loop {
        match serve_once(&config, handler.clone()).await {
            Ok(Session::Served) => backoff = config.min_backoff,
            Ok(Session::NotRegistered(reason)) => {
                tracing::warn!(reason, "registration refused for now; retrying");
            }
            Err(Failure::Fatal(err)) => return Err(err),
            Err(Failure::Connect(reason)) => {
                tracing::warn!(url = %config.url, reason, "failed to connect to the hub");
            }
        }
        // Jitter spreads reconnections when a hub restarts under many
        // processors.
        let jitter = rand_fraction() * 0.25;
        let wait = backoff.mul_f64(1.0 + jitter);
        tracing::info!(wait_ms = wait.as_millis() as u64, "reconnecting");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

enum Session {
    /// Registered and served until the connection dropped.
    Served,
    /// The hub refused for a reason that may pass (a duplicate id).
    NotRegistered(String),
}

enum Failure {
    Fatal(ClientError),
    Connect(String),
}

async fn serve_once(config: &ClientConfig, handler: Arc<dyn Handler>) -> Result<Session, Failure> {
    let (socket, _) = tokio_tungstenite::connect_async_with_config(config.url.as_str(), None, true)
        .await
        .map_err(|err| Failure::Connect(err.to_string()))?;
    let (mut sink, mut stream) = socket.split();

    let register = json!({
        "command": "register",
        "processorId": config.processor_id,
        "environments": config.environments,
        "token": config.token,
    });
    sink.send(Message::Text(register.to_string().into()))
        .await
        .map_err(|err| Failure::Connect(err.to_string()))?;

    // The first text message answers the registration.
    let first = loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => break text,
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(Failure::Connect(err.to_string())),
            None => return Err(Failure::Connect("the hub closed the connection".into())),
        }
    };
    let first: Value = serde_json::from_str(&first).unwrap_or(Value::Null);
    if first["command"] != "registered" {
        let code = first["code"].as_str().unwrap_or("unknown").to_owned();
        let message = first["message"].as_str().unwrap_or("").to_owned();
        return match code.as_str() {
            "duplicate_processor" => Ok(Session::NotRegistered(message)),
            _ => Err(Failure::Fatal(ClientError::Rejected { code, message })),
        };
    }
    tracing::info!(processor_id = %config.processor_id, url = %config.url, "registered with the hub");

    let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();
    let link = Arc::new(Link {
        outgoing,
        replies: Mutex::new(HashMap::new()),
    });
    let writer = tokio::spawn(async move {
        while let Some(message) = queue.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
    });

    while let Some(frame) = stream.next().await {
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let message: Value = match serde_json::from_str(&text) {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(error = %err, "ignoring a message from the hub that is not JSON");
                continue;
            }
        };
        dispatch_message(message, &link, &handler);
    }

    writer.abort();
    // Every update still waiting learns that the connection is gone.
    link.replies.lock().expect("reply lock poisoned").clear();
    Ok(Session::Served)
}

fn dispatch_message(message: Value, link: &Arc<Link>, handler: &Arc<dyn Handler>) {
    let reply_for = |instance_id: &Value| {
        instance_id
            .as_str()
            .and_then(|id| link.replies.lock().expect("reply lock poisoned").remove(id))
    };
    match message["command"].as_str() {
        Some("dispatch") => {
            let task = message["task"].clone();
            let (Some(instance_id), Some(version)) =
                (task["instanceId"].as_str(), task["version"].as_u64())
            else {
                tracing::warn!("ignoring a dispatch without instanceId and version");
                return;
            };
            let handle = TaskHandle {
                instance_id: instance_id.to_owned(),
                version,
                task,
                link: link.clone(),
            };
            tokio::spawn(handler.run(handle));
        }
        Some("updated") => {
            if let Some(reply) = reply_for(&message["instanceId"]) {
                let version = message["version"].as_u64().unwrap_or(0);
                let status = message["status"].as_str().unwrap_or("").to_owned();
                let _ = reply.send(Ok((version, status)));
            }
        }
        Some("error") => {
            let code = message["code"].as_str().unwrap_or("unknown").to_owned();
            let text = message["message"].as_str().unwrap_or("").to_owned();
            match reply_for(&message["instanceId"]) {
                Some(reply) => {
                    let _ = reply.send(Err(UpdateError::Rejected {
                        code,
                        message: text,
                    }));
                }
                None => tracing::warn!(code, message = text, "the hub reported an error"),
            }
        }
        _ => {}
    }
}

/// Returns a number in [0, 1) that differs between calls and processes.
fn rand_fraction() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}
