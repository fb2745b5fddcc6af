//! The processor protocol: JSON text messages over one WebSocket, each an
//! object with a `command` field. `docs/PROCESSORS.md` describes every
//! message with an example exchange.
//!
//! Nothing here assumes the peer is a particular program: anything that
//! provides environments (a processor, or another hub) speaks it.

use serde::Serialize;
use serde_json::Value;

use crate::engine::merge::json_kind;
use crate::engine::task::{Task, TaskStatus};

/// A message from a processor.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Registers the connection; must be the first message.
    Register {
        /// Stable id of the processor, kept across reconnections.
        processor_id: String,
        /// Environments it serves.
        environments: Vec<String>,
        /// The shared secret, when the hub requires one.
        token: Option<String>,
    },
    /// A partial or final result for a task the processor holds.
    Update {
        /// The task fields to merge, with `instanceId` and `version`.
        task: serde_json::Map<String, Value>,
    },
    /// An application-level heartbeat; the hub answers `pong`.
    Ping,
}

/// A message to a processor.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "command", rename_all = "camelCase")]
pub enum Outbound {
    /// Registration accepted.
    #[serde(rename_all = "camelCase")]
    Registered {
        /// The id the processor registered.
        processor_id: String,
        /// Environments the hub will send tasks for.
        environments: Vec<String>,
        /// Interval of the hub's pings; a processor silent for three
        /// intervals is dropped.
        heartbeat_ms: u64,
        /// Largest message the hub accepts, in bytes.
        max_message_bytes: usize,
    },
    /// A task to run. Updates must name its `version`.
    Dispatch {
        /// The task as stored.
        task: Box<Task>,
    },
    /// An update was accepted.
    #[serde(rename_all = "camelCase")]
    Updated {
        /// The task.
        instance_id: String,
        /// Its version now; the next update must name it.
        version: u64,
        /// Its status now. The processor no longer holds a task that is not
        /// `dispatched`.
        status: TaskStatus,
    },
    /// A message was rejected. Some errors close the connection.
    #[serde(rename_all = "camelCase")]
    Error {
        /// Stable error code.
        code: &'static str,
        /// What was wrong and what to do.
        message: String,
        /// The task the error is about, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        instance_id: Option<String>,
    },
    /// The answer to `ping`.
    Pong,
}

/// A message that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// `invalid_json`, `unknown_command` or `invalid_message`.
    pub code: &'static str,
    /// What was wrong and what to do.
    pub message: String,
}

impl ProtocolError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Parses one text message from a processor.
///
/// # Errors
///
/// A [`ProtocolError`] for text that is not JSON, an unknown `command`, or
/// fields of the wrong type.
pub fn parse(text: &str) -> Result<Inbound, ProtocolError> {
    let value: Value = serde_json::from_str(text).map_err(|err| {
        ProtocolError::new(
            "invalid_json",
            format!("the message is not valid JSON: {err}"),
        )
    })?;
    let Value::Object(mut fields) = value else {
        return Err(ProtocolError::new(
            "invalid_message",
            format!(
                "a message must be a JSON object with a `command`, not {}",
                json_kind(&value)
            ),
        ));
    };
    let command = match fields.remove("command") {
        Some(Value::String(command)) => command,
        Some(other) => {
            return Err(ProtocolError::new(
                "invalid_message",
                format!("`command` must be a string, not {}", json_kind(&other)),
            ));
        }
        None => return Err(ProtocolError::new("invalid_message", "missing `command`")),
    };

    match command.as_str() {
        "register" => {
            only_fields(&fields, &["processorId", "environments", "token"])?;
            let processor_id = match fields.remove("processorId") {
                Some(Value::String(id)) => id,
                _ => {
                    return Err(ProtocolError::new(
                        "invalid_message",
                        "`register` needs `processorId`, a string",
                    ));
                }
            };
            let environments = match fields.remove("environments") {
                Some(Value::Array(items)) => items
                    .into_iter()
                    .map(|item| match item {
                        Value::String(name) => Ok(name),
                        other => Err(ProtocolError::new(
                            "invalid_message",
                            format!(
                                "`environments` must hold strings, not {}",
                                json_kind(&other)
                            ),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => {
                    return Err(ProtocolError::new(
                        "invalid_message",
                        "`register` needs `environments`, a list of environment names",
                    ));
                }
            };
            let token = match fields.remove("token") {
                None | Some(Value::Null) => None,
                Some(Value::String(token)) => Some(token),
                Some(other) => {
                    return Err(ProtocolError::new(
                        "invalid_message",
                        format!("`token` must be a string, not {}", json_kind(&other)),
                    ));
                }
            };
            Ok(Inbound::Register {
                processor_id,
                environments,
                token,
            })
        }
        "update" => {
            only_fields(&fields, &["task"])?;
            match fields.remove("task") {
                Some(Value::Object(task)) => Ok(Inbound::Update { task }),
                _ => Err(ProtocolError::new(
                    "invalid_message",
                    "`update` needs `task`, an object with `instanceId`, `version` and the changed fields",
                )),
            }
        }
        "ping" => Ok(Inbound::Ping),
        other => Err(ProtocolError::new(
            "unknown_command",
            format!("unknown command `{other}`; a processor may send register, update or ping"),
        )),
    }
}

fn only_fields(
    fields: &serde_json::Map<String, Value>,
    allowed: &[&str],
) -> Result<(), ProtocolError> {
    match fields.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(key) => Err(ProtocolError::new(
            "invalid_message",
            format!(
                "unknown field `{key}`; this command takes {}",
                allowed.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn register_parses() {
        let message =
            r#"{"command":"register","processorId":"p1","environments":["echo"],"token":"s"}"#;
        assert_eq!(
            parse(message).unwrap(),
            Inbound::Register {
                processor_id: "p1".into(),
                environments: vec!["echo".into()],
                token: Some("s".into()),
            }
        );
    }

    #[test]
    fn update_keeps_task_fields() {
        let message =
            r#"{"command":"update","task":{"instanceId":"i","version":2,"output":{"a":1}}}"#;
        let Inbound::Update { task } = parse(message).unwrap() else {
            panic!("not an update")
        };
        assert_eq!(task["output"], json!({"a": 1}));
    }

    #[test]
    fn bad_messages_get_codes() {
        assert_eq!(parse("{oops").unwrap_err().code, "invalid_json");
        assert_eq!(parse("[1]").unwrap_err().code, "invalid_message");
        assert_eq!(
            parse(r#"{"command":"fly"}"#).unwrap_err().code,
            "unknown_command"
        );
        assert_eq!(
            parse(r#"{"command":7}"#).unwrap_err().code,
            "invalid_message"
        );
        assert_eq!(
            parse(r#"{"command":"update","task":[]}"#).unwrap_err().code,
            "invalid_message"
        );
        let error =
            parse(r#"{"command":"register","processorId":"p","environments":[1]}"#).unwrap_err();
        assert!(error.message.contains("not a number"), "{}", error.message);
        let error = parse(r#"{"command":"ping","extra":1}"#);
        assert_eq!(error, Ok(Inbound::Ping));
        let error = parse(r#"{"command":"update","task":{},"x":1}"#).unwrap_err();
        assert!(
            error.message.contains("unknown field `x`"),
            "{}",
            error.message
        );
    }

    #[test]
    fn outbound_uses_command_tag() {
        let text = serde_json::to_string(&Outbound::Pong).unwrap();
        assert_eq!(text, r#"{"command":"pong"}"#);
        let error = Outbound::Error {
            code: "unauthorized",
            message: "wrong token".into(),
            instance_id: None,
        };
        assert_eq!(
            serde_json::to_value(error).unwrap(),
            json!({"command": "error", "code": "unauthorized", "message": "wrong token"})
        );
    }
}
