//! One processor connection: the registration handshake, then a loop that
//! reads updates, forwards dispatched tasks, and checks heartbeats.
//!
//! A connection is dropped when it closes, sends something that makes going
//! on pointless (no registration, a wrong token, a duplicate id, an
//! oversized message, a flood), or stays silent for three heartbeat
//! intervals. Every task it held then goes back to the queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::protocol::{self, Inbound, Outbound};
use super::{Processor, RegisterError};
use crate::auth::{Auth, AuthError};
use crate::engine::{Engine, EngineError};
use crate::events::Event;
use crate::plugin::is_valid_environment;

/// WebSocket close code for a policy violation (RFC 6455, 7.4.1).
const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code for a message too big to process.
const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code for an endpoint going away.
const CLOSE_GOING_AWAY: u16 = 1001;

/// Time a rejected peer has to answer the close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Environments one processor may register.
const MAX_ENVIRONMENTS: usize = 64;

/// Settings shared by every processor connection.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The shared secret processors must send in `register`; `None`
    /// accepts any processor.
    pub token: Option<String>,
    /// Interval of the hub's pings. A processor silent for three intervals
    /// is dropped.
    pub heartbeat: Duration,
    /// Largest message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Messages per second one connection may send on average; twice as
    /// many may come in a burst.
    pub messages_per_second: u32,
    /// Time a new connection has to send `register`.
    pub register_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            token: None,
            heartbeat: Duration::from_secs(10),
            max_message_bytes: 1 << 20,
            messages_per_second: 1000,
            register_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a connection ended.
enum End {
    Closed,
    Dropped(&'static str),
}

/// Runs one processor connection until it ends.
pub async fn run(
    mut socket: WebSocket,
    address: SocketAddr,
    engine: Arc<Engine>,
    config: Arc<SessionConfig>,
    auth: Arc<Auth>,
) {
    let Some((processor, outbound, grant)) =
        register(&mut socket, address, &engine, &config, &auth).await
    else {
        return;
    };
    tracing::info!(
        processor_id = %processor.id,
        environments = %processor.environments.join(","),
        %address,
        "processor registered"
    );
    engine.events().publish(Event::ProcessorJoined {
        processor_id: processor.id.clone(),
        environments: processor.environments.clone(),
    });
    if let Err(err) = engine.dispatch_pending().await {
        tracing::error!(error = %err, "failed to dispatch pending tasks to a new processor");
    }

    let _open = engine.track_session(processor.session, &processor.id);
    let end = serve(
        &mut socket,
        &processor,
        outbound,
        &engine,
        &config,
        (&auth, &grant),
    )
    .await;
    let reason = match end {
        End::Closed => "connection closed",
        End::Dropped(reason) => reason,
    };
    tracing::info!(processor_id = %processor.id, in_flight = processor.in_flight(), reason, "processor disconnected");

    // The outbound receiver is gone, so no new task is sent here; take
    // back the ones it held, then free the id for a reconnection.
    engine.processor_left(&processor).await;
    engine.processors().remove(&processor.id, processor.session);
    engine.events().publish(Event::ProcessorLeft {
        processor_id: processor.id.clone(),
    });
}

/// Waits for a valid `register` and returns the registered processor.
async fn register(
    socket: &mut WebSocket,
    address: SocketAddr,
    engine: &Arc<Engine>,
    config: &SessionConfig,
    auth: &Auth,
) -> Option<(Arc<Processor>, mpsc::Receiver<Outbound>, Grant)> {
    let deadline = tokio::time::Instant::now() + config.register_timeout;
    loop {
        let frame = match tokio::time::timeout_at(deadline, socket.recv()).await {
            Err(_) => {
                let message = format!(
                    "no `register` within {} s of connecting",
                    config.register_timeout.as_secs_f64()
                );
                reject(socket, "not_registered", message, CLOSE_POLICY).await;
                return None;
            }
            Ok(None) => return None,
            Ok(Some(Err(err))) => {
                read_failed(socket, &err, config, None).await;
                return None;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let text = match frame {
            Message::Text(text) => text,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return None,
            Message::Binary(_) => {
                reject(
                    socket,
                    "invalid_message",
                    "binary frames are not supported; send JSON text".into(),
                    CLOSE_POLICY,
                )
                .await;
                return None;
            }
        };

        let (processor_id, environments, token) = match protocol::parse(&text) {
            Ok(Inbound::Register {
                processor_id,
                environments,
                token,
            }) => (processor_id, environments, token),
            Ok(_) => {
                let message =
                    "the first message must be `register` with `processorId` and `environments`";
                reject(socket, "not_registered", message.into(), CLOSE_POLICY).await;
                return None;
            }
            Err(err) => {
                reject(socket, err.code, err.message, CLOSE_POLICY).await;
                return None;
            }
        };
        if let Err(message) = check_registration(&processor_id, &environments) {
            reject(socket, "invalid_message", message, CLOSE_POLICY).await;
            return None;
        }
        let grant = match authorize(config, auth, token.as_deref(), address.ip()).await {
            Ok(grant) => grant,
            Err(message) => {
                tracing::warn!(%processor_id, %address, "processor rejected: missing or wrong token");
                reject(socket, "unauthorized", message, CLOSE_POLICY).await;
                return None;
            }
        };

        let registered = engine.processors().register(
            &processor_id,
            environments.clone(),
            address.to_string(),
            grant.owner.clone(),
        );
        let (processor, outbound) = match registered {
            Ok(registered) => registered,
            Err(err @ RegisterError::Duplicate(_)) => {
                tracing::warn!(%processor_id, %address, "processor rejected: id already connected");
                reject(socket, "duplicate_processor", err.to_string(), CLOSE_POLICY).await;
                return None;
            }
        };
        let reply = Outbound::Registered {
            processor_id,
            environments,
            heartbeat_ms: config.heartbeat.as_millis() as u64,
            max_message_bytes: config.max_message_bytes,
        };
        if send(socket, &reply).await.is_err() {
            engine.processors().remove(&processor.id, processor.session);
            return None;
        }
        return Some((processor, outbound, grant));
    }
}

/// The credential a processor registered with, checked again on every
/// heartbeat.
pub struct Grant {
    /// The user whose threads it may be sent; `None` for all threads.
    owner: Option<String>,
    /// How to check that the registration still holds.
    basis: Basis,
}

/// The credential a registration rests on.
enum Basis {
    /// The hub's shared `--processor-token`, valid while the hub runs.
    SharedToken,
    /// No token, in dev mode: it ends when the first user is added.
    DevMode,
    /// A user's processor token, by id: it ends when revoked or expired.
    UserToken(String),
}

impl Grant {
    /// Returns why the registration no longer holds, if it does not.
    async fn lapsed(&self, auth: &Auth) -> Option<&'static str> {
        match &self.basis {
            Basis::SharedToken => None,
            Basis::DevMode => (!auth.refresh_dev().await.unwrap_or(true)).then_some(
                "the hub now has users, so a processor needs a token; register again with one",
            ),
            Basis::UserToken(token_id) => match auth.is_active(token_id).await {
                Ok(true) | Err(_) => None,
                Ok(false) => Some("the processor token was revoked or has expired"),
            },
        }
    }
}

/// Checks a `register` token. The hub's shared processor token is always
/// accepted and serves every thread. A user's processor token (`taskhub
/// token create USER --processor`) is accepted once users exist, and is
/// sent only tasks of threads that user started, unless the user is in
/// the admin group. In dev mode without a shared token, anyone on the
/// loopback address may register.
async fn authorize(
    config: &SessionConfig,
    auth: &Auth,
    token: Option<&str>,
    client: std::net::IpAddr,
) -> Result<Grant, String> {
    if let (Some(expected), Some(token)) = (&config.token, token)
        && same_secret(token, expected)
    {
        return Ok(Grant {
            owner: None,
            basis: Basis::SharedToken,
        });
    }
    if auth.refresh_dev().await.unwrap_or(false) {
        return match config.token {
            None => Ok(Grant {
                owner: None,
                basis: Basis::DevMode,
            }),
            Some(_) => {
                Err("missing or wrong `token`; send the token the hub was started with".into())
            }
        };
    }
    let Some(token) = token else {
        return Err(
            "missing `token`; send a processor token (`taskhub token create USER --processor`)"
                .into(),
        );
    };
    match auth.authenticate_processor(token, Some(client)).await {
        Ok(principal) => Ok(Grant {
            owner: (!principal.is_admin()).then(|| principal.user_id.clone()),
            basis: Basis::UserToken(principal.credential.clone().unwrap_or_default()),
        }),
        Err(AuthError::Storage(err)) => {
            tracing::error!(error = %err, "failed to check a processor token");
            Err("the hub failed to check the token; try again".into())
        }
        Err(AuthError::TooManyAttempts(wait)) => Err(format!(
            "too many wrong tokens from this address; try again in {} s",
            wait.as_secs().max(1)
        )),
        Err(_) => Err(
            "wrong `token`: it is not a processor token of this hub, or it was revoked or expired"
                .into(),
        ),
    }
}

/// Serves a registered connection until it ends.
async fn serve(
    socket: &mut WebSocket,
    processor: &Arc<Processor>,
    mut outbound: mpsc::Receiver<Outbound>,
    engine: &Arc<Engine>,
    config: &SessionConfig,
    (auth, grant): (&Auth, &Grant),
) -> End {
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut budget = RateLimit::new(config.messages_per_second);
    let silence_limit = config.heartbeat * 3;
    let mut last_heard = Instant::now();
    let mut shutdown = engine.shutdown_signal();

    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = close(socket, CLOSE_GOING_AWAY, "hub shutting down").await;
                return End::Dropped("hub shutting down");
            }
            frame = socket.recv() => {
                let frame = match frame {
                    None => return End::Closed,
                    Some(Err(err)) => {
                        read_failed(socket, &err, config, Some(&processor.id)).await;
                        return End::Dropped("read error");
                    }
                    Some(Ok(frame)) => frame,
                };
                last_heard = Instant::now();
                processor.heard();
                let text = match frame {
                    Message::Text(text) => text,
                    Message::Ping(_) | Message::Pong(_) => continue,
                    Message::Close(_) => return End::Closed,
                    Message::Binary(_) => {
                        let error = error("invalid_message", "binary frames are not supported; send JSON text".into(), None);
                        if send(socket, &error).await.is_err() {
                            return End::Closed;
                        }
                        continue;
                    }
                };
                if !budget.take() {
                    tracing::warn!(processor_id = %processor.id, "processor dropped: message rate limit exceeded");
                    let message = format!(
                        "more than {} messages a second; slow down and reconnect",
                        config.messages_per_second
                    );
                    reject(socket, "rate_limited", message, CLOSE_POLICY).await;
                    return End::Dropped("message rate limit exceeded");
                }
                let reply = handle(&text, processor, engine).await;
                if send(socket, &reply).await.is_err() {
                    return End::Closed;
                }
            }
            message = outbound.recv() => {
                let Some(message) = message else {
                    return End::Closed;
                };
                if send(socket, &message).await.is_err() {
                    return End::Closed;
                }
            }
            _ = heartbeat.tick() => {
                if let Some(reason) = grant.lapsed(auth).await {
                    tracing::warn!(processor_id = %processor.id, reason, "processor dropped: registration no longer valid");
                    reject(socket, "unauthorized", reason.into(), CLOSE_POLICY).await;
                    return End::Dropped("registration no longer valid");
                }
                if last_heard.elapsed() > silence_limit {
                    let reason = format!("no message or pong for {} ms", silence_limit.as_millis());
                    let _ = close(socket, CLOSE_GOING_AWAY, &reason).await;
                    return End::Dropped("heartbeat timeout");
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return End::Closed;
                }
            }
        }
    }
}

/// Handles one text message from a registered processor and returns the
/// reply.
async fn handle(text: &str, processor: &Arc<Processor>, engine: &Arc<Engine>) -> Outbound {
    let task = match protocol::parse(text) {
        Ok(Inbound::Update { task }) => task,
        Ok(Inbound::Ping) => return Outbound::Pong,
        Ok(Inbound::Register { .. }) => {
            return error(
                "already_registered",
                "this connection is already registered".into(),
                None,
            );
        }
        Err(err) => return error(err.code, err.message, None),
    };
    let instance_id = task
        .get("instanceId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match engine
        .processor_update(processor, &Value::Object(task))
        .await
    {
        Ok(task) => Outbound::Updated {
            instance_id: task.instance_id,
            version: task.version,
            status: task.status,
        },
        Err(err) => {
            let code = match &err {
                EngineError::NotHeld { .. } => "not_held",
                EngineError::VersionConflict { .. } => "version_conflict",
                EngineError::Finished(_) => "task_finished",
                EngineError::InstanceNotFound(_) => "not_found",
                EngineError::Invalid(_) => "invalid_task",
                _ => "internal",
            };
            let message = if code == "internal" {
                tracing::error!(processor_id = %processor.id, error = %err, "failed to apply a processor update");
                "the hub failed to apply the update; its log has the details".to_owned()
            } else {
                tracing::warn!(
                    processor_id = %processor.id,
                    instance_id = instance_id.as_deref().unwrap_or(""),
                    code,
                    error = %err,
                    "rejected an update from a processor"
                );
                err.to_string()
            };
            error(code, message, instance_id)
        }
    }
}

fn check_registration(processor_id: &str, environments: &[String]) -> Result<(), String> {
    let id_ok = !processor_id.is_empty()
        && processor_id.len() <= 128
        && processor_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if !id_ok {
        return Err(format!(
            "`processorId` {processor_id:?} is invalid; use 1 to 128 letters, digits, `.`, `_`, `-` or `:`"
        ));
    }
    if environments.is_empty() || environments.len() > MAX_ENVIRONMENTS {
        return Err(format!(
            "`environments` must list 1 to {MAX_ENVIRONMENTS} environment names"
        ));
    }
    if let Some(bad) = environments.iter().find(|name| !is_valid_environment(name)) {
        return Err(format!(
            "environment name {bad:?} is invalid; use letters, digits, `.`, `_` and `-`"
        ));
    }
    if environments.iter().any(|name| name == "user") {
        return Err(
            "the `user` environment is served by the hub itself; a processor cannot provide it"
                .into(),
        );
    }
    Ok(())
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(given: &str, expected: &str) -> bool {
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// A token bucket that allows `rate` messages a second, `2 * rate` at once.
struct RateLimit {
    rate: f64,
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateLimit {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            capacity: rate * 2.0,
            tokens: rate * 2.0,
            refilled: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn error(code: &'static str, message: String, instance_id: Option<String>) -> Outbound {
    Outbound::Error {
        code,
        message,
        instance_id,
    }
}

async fn send(socket: &mut WebSocket, message: &Outbound) -> Result<(), axum::Error> {
    let text = serde_json::to_string(message).expect("protocol messages always serialize");
    socket.send(Message::Text(text.into())).await
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) -> Result<(), axum::Error> {
    // A close reason must fit in a control frame (123 bytes).
    let reason: String = reason.chars().take(120).collect();
    socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await
}

/// Sends an error and closes the connection.
async fn reject(socket: &mut WebSocket, code: &'static str, message: String, close_code: u16) {
    let _ = send(socket, &error(code, message, None)).await;
    if close(socket, close_code, code).await.is_err() {
        return;
    }
    // Read until the peer's close (or a short timeout) so that the error
    // and the close frame reach it: closing with unread input would make
    // the kernel reset the connection and drop them.
    let drain = async {
        while let Some(Ok(frame)) = socket.recv().await {
            if matches!(frame, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
}

/// Reports a failed read: an oversized message gets an error and a close
/// with code 1009; other errors mean the connection is gone.
async fn read_failed(
    socket: &mut WebSocket,
    err: &axum::Error,
    config: &SessionConfig,
    processor_id: Option<&str>,
) {
    let too_big = std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<tokio_tungstenite::tungstenite::Error>())
        .is_some_and(|err| matches!(err, tokio_tungstenite::tungstenite::Error::Capacity(_)));
    if too_big {
        tracing::warn!(
            processor_id = processor_id.unwrap_or(""),
            "processor dropped: message too big"
        );
        let message = format!("a message exceeded {} bytes", config.max_message_bytes);
        reject(socket, "message_too_big", message, CLOSE_TOO_BIG).await;
    } else {
        tracing::debug!(processor_id = processor_id.unwrap_or(""), error = %err, "processor connection read failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_value() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("", "abc"));
    }

    #[test]
    fn rate_limit_allows_burst_then_refuses() {
        let mut limit = RateLimit::new(5);
        let allowed = (0..20).filter(|_| limit.take()).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn registration_is_checked() {
        assert!(check_registration("p-1", &["echo".into()]).is_ok());
        assert!(check_registration("", &["echo".into()]).is_err());
        assert!(check_registration("p 1", &["echo".into()]).is_err());
        assert!(check_registration("p1", &[]).is_err());
        assert!(check_registration("p1", &["user".into()]).is_err());
        assert!(check_registration("p1", &["bad name".into()]).is_err());
    }
}
