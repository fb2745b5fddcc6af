//! Graceful shutdown: what is still running, and waiting for it.
//!
//! Once shutdown begins the engine starts no new plugin call and sends no
//! new task to a processor; those tasks stay `dispatched` in the database
//! and run again after the restart. Calls and processor sessions already
//! running get until the grace period ends.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Work that must end before the database closes.
#[derive(Default)]
pub(super) struct InFlight {
    /// Running plugin calls: instance id → plugin name.
    calls: Mutex<HashMap<String, String>>,
    /// Open processor sessions, by processor id.
    sessions: Mutex<HashMap<u64, String>>,
    changed: Notify,
}

/// Removes its entry from [`InFlight`] when dropped.
pub struct InFlightGuard<'a> {
    in_flight: &'a InFlight,
    entry: Entry,
}

enum Entry {
    Call(String),
    Session(u64),
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        match &self.entry {
            Entry::Call(instance_id) => {
                self.in_flight
                    .calls
                    .lock()
                    .expect("in-flight lock poisoned")
                    .remove(instance_id);
            }
            Entry::Session(session) => {
                self.in_flight
                    .sessions
                    .lock()
                    .expect("in-flight lock poisoned")
                    .remove(session);
            }
        }
        self.in_flight.changed.notify_waiters();
    }
}

impl InFlight {
    pub(super) fn call(&self, instance_id: &str, plugin: &str) -> InFlightGuard<'_> {
        self.calls
            .lock()
            .expect("in-flight lock poisoned")
            .insert(instance_id.to_owned(), plugin.to_owned());
        InFlightGuard {
            in_flight: self,
            entry: Entry::Call(instance_id.to_owned()),
        }
    }

    pub(super) fn session(&self, session: u64, processor_id: &str) -> InFlightGuard<'_> {
        self.sessions
            .lock()
            .expect("in-flight lock poisoned")
            .insert(session, processor_id.to_owned());
        InFlightGuard {
            in_flight: self,
            entry: Entry::Session(session),
        }
    }

    /// Waits until nothing runs or `deadline` passes, and returns what was
    /// still running then, as descriptions for the log.
    pub(super) async fn wait_idle(&self, deadline: Instant) -> Vec<String> {
        loop {
            let notified = self.changed.notified();
            let running = self.running();
            if running.is_empty() {
                return running;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => return self.running(),
            }
        }
    }

    fn running(&self) -> Vec<String> {
        let calls = self.calls.lock().expect("in-flight lock poisoned");
        let sessions = self.sessions.lock().expect("in-flight lock poisoned");
        calls
            .iter()
            .map(|(instance_id, plugin)| format!("plugin `{plugin}` running task {instance_id}"))
            .chain(
                sessions
                    .values()
                    .map(|id| format!("processor `{id}` session")),
            )
            .collect()
    }
}

/// The shutdown flag, as a channel that sessions can wait on.
pub(super) fn shutdown_channel() -> watch::Sender<bool> {
    watch::channel(false).0
}
