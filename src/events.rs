//! The hub's event stream: one broadcast channel that the task engine and
//! the plugin pipeline publish to after each committed change.
//!
//! Subscribers (logs today; the browser's live view and processors later)
//! get every event from the moment they subscribe. A subscriber that falls
//! more than [`CAPACITY`] events behind loses the oldest ones and is told
//! how many it missed; it never slows the engine down.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::engine::task::Task;

/// Events a slow subscriber may fall behind before it loses some.
pub const CAPACITY: usize = 4096;

/// Something that changed in the hub.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    /// A task instance was created or changed.
    #[serde(rename_all = "camelCase")]
    TaskChanged {
        /// The task as stored.
        task: Box<Task>,
    },
    /// A thread ended.
    #[serde(rename_all = "camelCase")]
    ThreadEnded {
        /// The thread.
        thread_id: String,
        /// `done` or `failed`.
        status: String,
    },
    /// A plugin version was loaded (and replaced the previous one, if any).
    #[serde(rename_all = "camelCase")]
    PluginLoaded {
        /// Plugin name.
        name: String,
        /// Content hash of the new version.
        version: String,
    },
    /// A plugin file was rejected; the previous version, if any, serves.
    #[serde(rename_all = "camelCase")]
    PluginRejected {
        /// Plugin name.
        name: String,
        /// What was wrong.
        error: String,
    },
    /// A processor registered.
    #[serde(rename_all = "camelCase")]
    ProcessorJoined {
        /// Its id.
        processor_id: String,
        /// Environments it serves.
        environments: Vec<String>,
    },
    /// A processor's connection ended.
    #[serde(rename_all = "camelCase")]
    ProcessorLeft {
        /// Its id.
        processor_id: String,
    },
    /// A plugin was unloaded because its file was removed.
    #[serde(rename_all = "camelCase")]
    PluginUnloaded {
        /// Plugin name.
        name: String,
    },
}

/// The sending side, cloned by every publisher.
#[derive(Clone)]
pub struct Events {
    sender: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// Creates the channel.
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
        }
    }

    /// Publishes `event` to the current subscribers; with none it is
    /// dropped.
    pub fn publish(&self, event: Event) {
        let _ = self.sender.send(event);
    }

    /// Returns a receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}
