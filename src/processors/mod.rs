//! Remote processors: programs (or other hubs) that connect over WebSocket,
//! register the environments they provide, and run the tasks that need
//! them.
//!
//! [`ProcessorRegistry`] holds the connected processors and which task
//! each one holds. [`session`] runs one connection. The task engine picks a
//! processor for a task through [`ProcessorRegistry::choose`] and sends it
//! the task after the dispatch is committed.

pub mod client;
pub mod parent;
pub mod protocol;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::engine::task::{now_millis, rfc3339};
pub use protocol::{Inbound, Outbound};

/// Prefix of the `provider` of a task held by a processor.
pub const PROVIDER_PREFIX: &str = "processor:";

/// Messages that may wait for one processor's connection before a send
/// fails and the task goes back to the queue.
const OUTBOUND_QUEUE: usize = 1024;

/// One connected processor.
#[derive(Debug)]
pub struct Processor {
    /// The id it registered.
    pub id: String,
    /// Environments it serves.
    pub environments: Vec<String>,
    /// Unix milliseconds of the registration.
    pub connected_at: i64,
    /// The peer's address.
    pub address: String,
    /// Distinguishes this connection from an earlier one with the same id.
    pub session: u64,
    /// The user whose processor token it registered with, who is sent only
    /// tasks of threads they started. `None` serves every thread: the
    /// hub's shared token, dev mode, or a member of the admin group.
    pub owner: Option<String>,
    last_heartbeat: AtomicI64,
    in_flight: AtomicUsize,
    outbound: mpsc::Sender<Outbound>,
}

impl Processor {
    /// Returns whether this connection may be sent tasks of threads that
    /// `user_id` started.
    pub fn may_serve(&self, user_id: Option<&str>) -> bool {
        self.owner
            .as_deref()
            .is_none_or(|owner| Some(owner) == user_id)
    }

    /// Returns the `provider` value of the tasks this connection holds.
    /// It names the session too, so a reconnected processor does not hold
    /// the tasks sent to its earlier connection.
    pub fn provider(&self) -> String {
        format!("{PROVIDER_PREFIX}{}#{}", self.id, self.session)
    }

    /// Records that the processor was heard from now.
    pub fn heard(&self) {
        self.last_heartbeat.store(now_millis(), Ordering::Relaxed);
    }

    /// Returns unix milliseconds of the last message or pong.
    pub fn last_heartbeat(&self) -> i64 {
        self.last_heartbeat.load(Ordering::Relaxed)
    }

    /// Returns the number of tasks it holds.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Queues a message for the connection.
    ///
    /// # Errors
    ///
    /// Returns the message back when the connection has closed or its queue
    /// is full.
    pub fn send(&self, message: Outbound) -> Result<(), Outbound> {
        self.outbound.try_send(message).map_err(|err| match err {
            mpsc::error::TrySendError::Full(message)
            | mpsc::error::TrySendError::Closed(message) => message,
        })
    }

    fn is_open(&self) -> bool {
        !self.outbound.is_closed()
    }
}

/// A processor as `/api/processors` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessorStatus {
    /// The id it registered.
    pub processor_id: String,
    /// Environments it serves.
    pub environments: Vec<String>,
    /// RFC 3339 time of the registration.
    pub connected_at: String,
    /// RFC 3339 time it was last heard from.
    pub last_heartbeat: String,
    /// Tasks it holds.
    pub in_flight: usize,
    /// The peer's address.
    pub address: String,
    /// The user whose processor token it registered with, who alone is
    /// sent tasks of theirs; `null` serves every thread.
    pub owner: Option<String>,
}

/// Why a registration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// Another live connection uses the id.
    #[error(
        "processor id `{0}` is already connected; use another id, or wait until the old connection is dropped"
    )]
    Duplicate(String),
}

/// The connected processors and the tasks they hold.
#[derive(Default)]
pub struct ProcessorRegistry {
    processors: RwLock<HashMap<String, Arc<Processor>>>,
    /// Which processor holds each dispatched task, by instance id.
    assignments: Mutex<HashMap<String, Arc<Processor>>>,
    sessions: AtomicU64,
    turn: AtomicUsize,
}

impl ProcessorRegistry {
    /// Returns an empty registry. Session numbers start from the clock, so
    /// they do not repeat those of an earlier run of the hub.
    pub fn new() -> Self {
        Self {
            sessions: AtomicU64::new(now_millis().unsigned_abs() * 1000),
            ..Self::default()
        }
    }

    /// Adds a connection and returns it with the receiver of its outgoing
    /// messages.
    ///
    /// # Errors
    ///
    /// Fails when a live connection already uses `id`.
    pub fn register(
        &self,
        id: &str,
        environments: Vec<String>,
        address: String,
        owner: Option<String>,
    ) -> Result<(Arc<Processor>, mpsc::Receiver<Outbound>), RegisterError> {
        let mut processors = self.processors.write().expect("processor lock poisoned");
        if processors
            .get(id)
            .is_some_and(|existing| existing.is_open())
        {
            return Err(RegisterError::Duplicate(id.to_owned()));
        }
        let (outbound, receiver) = mpsc::channel(OUTBOUND_QUEUE);
        let now = now_millis();
        let processor = Arc::new(Processor {
            id: id.to_owned(),
            environments,
            connected_at: now,
            address,
            session: self.sessions.fetch_add(1, Ordering::Relaxed),
            owner,
            last_heartbeat: AtomicI64::new(now),
            in_flight: AtomicUsize::new(0),
            outbound,
        });
        processors.insert(id.to_owned(), processor.clone());
        crate::metrics::processors_connected(processors.len());
        Ok((processor, receiver))
    }

    /// Removes the connection `session` of processor `id`, if it is still
    /// the registered one, and forgets the tasks it held.
    pub fn remove(&self, id: &str, session: u64) {
        let mut processors = self.processors.write().expect("processor lock poisoned");
        if processors
            .get(id)
            .is_some_and(|current| current.session == session)
        {
            processors.remove(id);
        }
        crate::metrics::processors_connected(processors.len());
        drop(processors);
        self.assignments
            .lock()
            .expect("assignment lock poisoned")
            .retain(|_, holder| !(holder.id == id && holder.session == session));
    }

    /// Picks the processor for a task of `user_id` in `environment`: among
    /// the open connections that serve it and may serve the user, the one
    /// holding the fewest tasks, taking turns between equals.
    pub fn choose(&self, environment: &str, user_id: Option<&str>) -> Option<Arc<Processor>> {
        let processors = self.processors.read().expect("processor lock poisoned");
        let candidates: Vec<&Arc<Processor>> = processors
            .values()
            .filter(|processor| processor.is_open() && processor.may_serve(user_id))
            .filter(|processor| {
                processor
                    .environments
                    .iter()
                    .any(|name| name == environment)
            })
            .collect();
        let least = candidates
            .iter()
            .map(|processor| processor.in_flight())
            .min()?;
        let tied: Vec<&&Arc<Processor>> = candidates
            .iter()
            .filter(|processor| processor.in_flight() == least)
            .collect();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        Some((*tied[turn % tied.len()]).clone())
    }

    /// Returns whether any open connection serves `environment` to
    /// `user_id`.
    pub fn serves(&self, environment: &str, user_id: Option<&str>) -> bool {
        self.processors
            .read()
            .expect("processor lock poisoned")
            .values()
            .any(|processor| {
                processor.is_open()
                    && processor.may_serve(user_id)
                    && processor
                        .environments
                        .iter()
                        .any(|name| name == environment)
            })
    }

    /// Records that `processor` holds task `instance_id`.
    pub fn assign(&self, instance_id: &str, processor: &Arc<Processor>) {
        let mut assignments = self.assignments.lock().expect("assignment lock poisoned");
        processor.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(previous) = assignments.insert(instance_id.to_owned(), processor.clone()) {
            previous.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets who held task `instance_id`; called when it stops being
    /// dispatched to a processor.
    pub fn release(&self, instance_id: &str) {
        let removed = self
            .assignments
            .lock()
            .expect("assignment lock poisoned")
            .remove(instance_id);
        if let Some(holder) = removed {
            holder.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Returns the processor that holds task `instance_id`.
    pub fn holder(&self, instance_id: &str) -> Option<Arc<Processor>> {
        self.assignments
            .lock()
            .expect("assignment lock poisoned")
            .get(instance_id)
            .cloned()
    }

    /// Returns the number of connected processors.
    pub fn len(&self) -> usize {
        self.processors
            .read()
            .expect("processor lock poisoned")
            .len()
    }

    /// Whether no processor is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the connected processors by id: those registered by
    /// `owner`, or every one when `owner` is `None`.
    pub fn statuses(&self, owner: Option<&str>) -> Vec<ProcessorStatus> {
        let processors = self.processors.read().expect("processor lock poisoned");
        let mut statuses: Vec<ProcessorStatus> = processors
            .values()
            .filter(|processor| owner.is_none() || processor.owner.as_deref() == owner)
            .map(|processor| ProcessorStatus {
                processor_id: processor.id.clone(),
                environments: processor.environments.clone(),
                connected_at: rfc3339(processor.connected_at),
                last_heartbeat: rfc3339(processor.last_heartbeat()),
                in_flight: processor.in_flight(),
                address: processor.address.clone(),
                owner: processor.owner.clone(),
            })
            .collect();
        statuses.sort_by(|a, b| a.processor_id.cmp(&b.processor_id));
        statuses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_live_id_is_rejected() {
        let registry = ProcessorRegistry::new();
        let (_first, _receiver) = registry
            .register("p1", vec!["echo".into()], "a".into(), None)
            .unwrap();
        let error = registry
            .register("p1", vec!["echo".into()], "b".into(), None)
            .unwrap_err();
        assert_eq!(error, RegisterError::Duplicate("p1".into()));
    }

    #[test]
    fn closed_connection_id_can_register_again() {
        let registry = ProcessorRegistry::new();
        let (_first, receiver) = registry
            .register("p1", vec!["echo".into()], "a".into(), None)
            .unwrap();
        drop(receiver);
        assert!(
            registry
                .register("p1", vec!["echo".into()], "b".into(), None)
                .is_ok()
        );
    }

    #[test]
    fn choose_prefers_least_loaded() {
        let registry = ProcessorRegistry::new();
        let (busy, _busy_receiver) = registry
            .register("busy", vec!["echo".into()], "a".into(), None)
            .unwrap();
        let (_idle, _idle_receiver) = registry
            .register("idle", vec!["echo".into()], "b".into(), None)
            .unwrap();
        registry.assign("task-1", &busy);
        assert_eq!(registry.choose("echo", None).unwrap().id, "idle");
        assert!(registry.choose("other", None).is_none());
        registry.release("task-1");
        assert_eq!(busy.in_flight(), 0);
    }

    #[test]
    fn choose_takes_turns_between_equals() {
        let registry = ProcessorRegistry::new();
        let (_a, _ra) = registry
            .register("a", vec!["echo".into()], "a".into(), None)
            .unwrap();
        let (_b, _rb) = registry
            .register("b", vec!["echo".into()], "b".into(), None)
            .unwrap();
        let first = registry.choose("echo", None).unwrap().id.clone();
        let second = registry.choose("echo", None).unwrap().id.clone();
        assert_ne!(first, second);
    }

    #[test]
    fn remove_forgets_assignments_of_that_session() {
        let registry = ProcessorRegistry::new();
        let (processor, _receiver) = registry
            .register("p1", vec!["echo".into()], "a".into(), None)
            .unwrap();
        registry.assign("task-1", &processor);
        registry.remove("p1", processor.session);
        assert!(registry.holder("task-1").is_none());
        assert!(registry.is_empty());
    }
}
