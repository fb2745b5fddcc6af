//! The task engine: the one owner of task state.
//!
//! Every change to a task goes through [`Engine`]: a start or an update
//! over HTTP, an update from a processor, a result from a plugin, a resume
//! after a restart, a timeout. It checks the change, plans what follows
//! (see [`plan`]), commits the plan as one transaction, and only then
//! starts plugin calls, sends tasks to processors, writes log lines and
//! publishes events. HTTP handlers and WebSocket sessions translate and
//! hand over; they never write rows themselves.
//!
//! Concurrent changes to one task are settled by its `version`: every write
//! replaces the row only if it still has the version the change was based
//! on (compare-and-swap in the storage writer). A late or duplicate result
//! therefore finds a newer version and is dropped.

pub mod catalog;
mod dispatch;
pub mod merge;
pub mod plan;
mod shutdown;
pub mod task;
pub mod template;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::events::Events;
use crate::plugin::{PluginHost, PluginRegistry, Snapshot};
use crate::processors::{Processor, ProcessorRegistry};
use crate::storage::{Shelf, Storage, StorageError, WriteError};
use plan::{Instance, Plan, Providers, ThreadContext};
use task::{Task, TaskStatus, now_millis};

/// Why the engine refused a change. Each variant maps to one HTTP status
/// and one processor protocol error code.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No loaded plugin defines the task id.
    #[error(
        "no loaded taskflow defines task {0}; GET /api/taskflows lists the tasks you can start"
    )]
    UnknownTask(String),
    /// The id names a task that cannot begin a thread.
    #[error("task {0} is not a start task; GET /api/taskflows lists the tasks you can start")]
    NotStartable(String),
    /// No task instance has the id.
    #[error("no task instance {0}")]
    InstanceNotFound(String),
    /// The update was based on another version.
    #[error(
        "task {instance_id} is at version {current}, but the update was based on version {sent}; read the task again and resend"
    )]
    VersionConflict {
        /// The task.
        instance_id: String,
        /// Its version now.
        current: u64,
        /// The version the update named.
        sent: u64,
    },
    /// The task is finished and archived.
    #[error("task {0} is finished and can no longer be updated")]
    Finished(String),
    /// A processor sent an update for a task it does not hold.
    #[error(
        "processor `{processor_id}` does not hold task {instance_id}; it was never sent to it, or was taken back"
    )]
    NotHeld {
        /// The task.
        instance_id: String,
        /// The processor.
        processor_id: String,
    },
    /// The request is well-formed JSON but not a valid change.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A write failed.
    #[error(transparent)]
    Write(WriteError),
}

/// A request to start a thread.
#[derive(Debug, Clone)]
pub struct StartRequest {
    /// The start task's id.
    pub id: String,
    /// Its input.
    pub input: Value,
    /// Who starts it.
    pub user_id: String,
    /// The groups that user belongs to.
    pub groups: Vec<String>,
    /// Whether the user may start any task, whatever its `config.groups`
    /// (dev mode).
    pub unrestricted: bool,
    /// The group to run it for; by default the first of the user's groups
    /// that the task allows.
    pub group_id: Option<String>,
    /// The login session or token it came with, for the `session` thread
    /// mode.
    pub session: Option<String>,
    /// The user's profile, for `{{user.FIELD}}` templates.
    pub profile: Value,
}

/// The outcome of a start request.
#[derive(Debug, Clone)]
pub struct Started {
    /// The new thread's first task, or the rejoined thread's latest task.
    pub task: Task,
    /// Whether the request joined a running thread instead of starting one
    /// (the `user`, `group` and `session` thread modes).
    pub rejoined: bool,
}

/// Who sent an update; decides what an unfinished result means.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// A client over HTTP: an unfinished task stays where it is.
    Client,
    /// A plugin call returned: an unfinished task moves to its next
    /// environment.
    Plugin(&'a str),
    /// A processor's partial result: the task stays with the processor.
    Processor,
}

/// The task engine.
pub struct Engine {
    storage: Storage,
    plugins: Arc<PluginRegistry>,
    processors: Arc<ProcessorRegistry>,
    host: Arc<PluginHost>,
    events: Events,
    /// Serializes the sweeps that hand pending tasks to new providers, so
    /// two sweeps never dispatch one task twice.
    sweep: tokio::sync::Mutex<()>,
    /// Set once shutdown begins.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Plugin calls and processor sessions still running.
    in_flight: shutdown::InFlight,
}

impl Engine {
    /// Creates the engine.
    pub fn new(
        storage: Storage,
        plugins: Arc<PluginRegistry>,
        processors: Arc<ProcessorRegistry>,
        host: Arc<PluginHost>,
        events: Events,
    ) -> Arc<Self> {
        Arc::new(Self {
            storage,
            plugins,
            processors,
            host,
            events,
            sweep: tokio::sync::Mutex::new(()),
            shutdown: shutdown::shutdown_channel(),
            in_flight: shutdown::InFlight::default(),
        })
    }

    /// Begins shutdown: no new plugin calls or processor sends, and open
    /// processor sessions are told to close.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Returns a receiver that changes to `true` when shutdown begins.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Registers an open processor session until the guard drops, so
    /// shutdown waits for it to hand its tasks back.
    pub fn track_session(&self, session: u64, processor_id: &str) -> shutdown::InFlightGuard<'_> {
        self.in_flight.session(session, processor_id)
    }

    /// Waits until no plugin call or processor session runs, or until
    /// `deadline`; returns what still ran then.
    pub async fn wait_idle(&self, deadline: tokio::time::Instant) -> Vec<String> {
        self.in_flight.wait_idle(deadline).await
    }

    /// Returns the storage, for reads.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Returns the event stream.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Returns the connected processors.
    pub fn processors(&self) -> &Arc<ProcessorRegistry> {
        &self.processors
    }

    /// Starts a thread with the start task `request.id` and returns its
    /// first task as stored.
    ///
    /// # Errors
    ///
    /// [`EngineError::UnknownTask`] or [`EngineError::NotStartable`] for a
    /// bad id; storage errors otherwise.
    pub async fn start(self: &Arc<Self>, request: StartRequest) -> Result<Started, EngineError> {
        let snapshot = self.plugins.snapshot();
        let definition = snapshot
            .catalog
            .get(&request.id)
            .ok_or_else(|| EngineError::UnknownTask(request.id.clone()))?
            .clone();
        if !definition.start {
            return Err(EngineError::NotStartable(request.id));
        }
        let allowed = catalog::start_groups(&definition);
        if !request.unrestricted
            && let Some(allowed) = &allowed
            && !allowed.iter().any(|group| request.groups.contains(group))
        {
            // Rejected like an unknown id, so ids do not leak.
            tracing::warn!(user_id = %request.user_id, task_id = %request.id, "start rejected: not in an allowed group");
            return Err(EngineError::UnknownTask(request.id));
        }
        let depth = merge::nesting_depth(&request.input);
        if depth > merge::MAX_DEPTH {
            return Err(EngineError::Invalid(format!(
                "`input` nests {depth} levels deep; the hub accepts at most {}",
                merge::MAX_DEPTH
            )));
        }

        let group_id = match &request.group_id {
            Some(group) if !request.unrestricted && !request.groups.contains(group) => {
                return Err(EngineError::Invalid(format!(
                    "you are not a member of group `{group}`; leave `groupId` out or name one of yours"
                )));
            }
            Some(group)
                if allowed
                    .as_ref()
                    .is_some_and(|allowed| !allowed.contains(group)) =>
            {
                let allowed = allowed.as_deref().unwrap_or_default().join(", ");
                return Err(EngineError::Invalid(format!(
                    "task {} may run only for the groups {allowed}, not `{group}`; leave `groupId` \
                     out or name one of those",
                    request.id
                )));
            }
            Some(group) => Some(group.clone()),
            None => match &allowed {
                // Dev mode belongs to no group; it acts for the first one
                // the task allows.
                Some(allowed) if request.unrestricted && request.groups.is_empty() => {
                    allowed.first().cloned()
                }
                Some(allowed) => request
                    .groups
                    .iter()
                    .find(|group| allowed.contains(group))
                    .cloned(),
                None => request.groups.first().cloned(),
            },
        };
        let mode = catalog::thread_mode(&definition).map_err(EngineError::Invalid)?;
        let mode_key = match mode {
            "new" => None,
            "user" => Some(format!("user:{}", request.user_id)),
            "group" => Some(format!(
                "group:{}",
                group_id.as_deref().ok_or_else(|| EngineError::Invalid(format!(
                    "task {} runs one thread per group, and you belong to no group; an operator \
                     adds you to one with `taskhub group add-member GROUP USER`",
                    request.id
                )))?
            )),
            _ => Some(format!(
                "session:{}",
                request.session.as_deref().unwrap_or(&request.user_id)
            )),
        };
        if let Some(key) = &mode_key
            && let Some(task) = self.running_task(&definition.id, key).await?
        {
            return Ok(Started {
                task,
                rejoined: true,
            });
        }

        let thread = ThreadContext {
            thread_id: uuid::Uuid::now_v7().to_string(),
            user_id: Some(request.user_id.clone()),
            group_id,
            mode: mode.to_owned(),
            mode_key: mode_key.clone(),
            profile: request.profile,
        };
        let mut plan = Plan::new(
            self.providers(&snapshot),
            thread,
            HashMap::new(),
            now_millis(),
        );
        plan.insert_thread(&definition.id);
        let first = plan.enter(&definition, request.input, None, 1, false);
        plan.finish_thread();
        match self.execute(plan).await {
            Ok(()) => Ok(Started {
                task: first.task,
                rejoined: false,
            }),
            // Another start for the same key won the race: join its thread.
            Err(EngineError::Write(WriteError::Database(message)))
                if message.contains("UNIQUE") && mode_key.is_some() =>
            {
                let key = mode_key.expect("checked above");
                match self.running_task(&definition.id, &key).await? {
                    Some(task) => Ok(Started {
                        task,
                        rejoined: true,
                    }),
                    None => Err(EngineError::Write(WriteError::Database(message))),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// Returns the latest task of the running thread of `start_task_id`
    /// that belongs to `mode_key`.
    async fn running_task(
        &self,
        start_task_id: &str,
        mode_key: &str,
    ) -> Result<Option<Task>, EngineError> {
        let Some(thread_id) = self
            .storage
            .running_thread_for(start_task_id, mode_key)
            .await?
        else {
            return Ok(None);
        };
        let records = self.storage.thread_tasks(&thread_id).await?;
        let Some(record) = records.last() else {
            return Ok(None);
        };
        let instance = Instance::from_record(record).map_err(|err| {
            EngineError::Invalid(format!(
                "stored task {} is unreadable: {err}",
                record.instance_id
            ))
        })?;
        Ok(Some(instance.task))
    }

    /// Merges `update` (a partial task carrying `version`) into task
    /// `instance_id` and moves the thread on if the task is now done or
    /// failed. Returns the task as stored.
    ///
    /// # Errors
    ///
    /// Not found, finished, version conflict, invalid update, or storage.
    pub async fn update(
        self: &Arc<Self>,
        instance_id: &str,
        update: &Value,
    ) -> Result<Task, EngineError> {
        if let Some(Value::String(named)) = update.get("instanceId")
            && named != instance_id
        {
            return Err(EngineError::Invalid(format!(
                "the update names instance {named} but was sent to {instance_id}"
            )));
        }
        self.apply_update(instance_id, update, Source::Client, |_| Ok(()))
            .await
    }

    /// Merges an update from `processor` into a task it holds. A partial
    /// update keeps the task with the processor; `state.done` or `error`
    /// finishes it.
    ///
    /// # Errors
    ///
    /// [`EngineError::NotHeld`] when the processor does not hold the task
    /// (any more), besides the errors of [`Engine::update`].
    pub async fn processor_update(
        self: &Arc<Self>,
        processor: &Processor,
        update: &Value,
    ) -> Result<Task, EngineError> {
        let Some(Value::String(instance_id)) = update.get("instanceId") else {
            return Err(EngineError::Invalid(
                "missing `instanceId`: name the task the update is for".into(),
            ));
        };
        let provider = processor.provider();
        let not_held = || EngineError::NotHeld {
            instance_id: instance_id.clone(),
            processor_id: processor.id.clone(),
        };
        self.apply_update(instance_id, update, Source::Processor, |instance| {
            if instance.task.status == TaskStatus::Dispatched
                && instance.provider.as_deref() == Some(provider.as_str())
            {
                Ok(())
            } else {
                Err(not_held())
            }
        })
        .await
    }

    /// Reads task `instance_id`, checks the holder and the version, merges
    /// `update` and moves the task on.
    async fn apply_update(
        self: &Arc<Self>,
        instance_id: &str,
        update: &Value,
        source: Source<'_>,
        check_holder: impl FnOnce(&Instance) -> Result<(), EngineError>,
    ) -> Result<Task, EngineError> {
        let sent = match update.get("version").map(whole_number) {
            Some(Some(version)) => version,
            Some(_) => {
                return Err(EngineError::Invalid(
                    "`version` must be a non-negative integer: the version of the task you last read".into(),
                ));
            }
            None => {
                return Err(EngineError::Invalid(
                    "missing `version`: send the version of the task you last read, so a concurrent change is not overwritten".into(),
                ));
            }
        };

        let (shelf, record) = self
            .storage
            .task(instance_id)
            .await?
            .ok_or_else(|| EngineError::InstanceNotFound(instance_id.to_owned()))?;
        if shelf == Shelf::Archive {
            return Err(EngineError::Finished(instance_id.to_owned()));
        }
        let instance = Instance::from_record(&record).map_err(|err| {
            EngineError::Invalid(format!("stored task {instance_id} is unreadable: {err}"))
        })?;
        check_holder(&instance)?;
        if sent != instance.task.version {
            return Err(EngineError::VersionConflict {
                instance_id: instance_id.to_owned(),
                current: instance.task.version,
                sent,
            });
        }

        let mut merged = merge::merge(&instance.task, update)
            .map_err(|err| EngineError::Invalid(err.to_string()))?;
        merge::check_limits(&merged).map_err(EngineError::Invalid)?;
        if merged.next_task != instance.task.next_task
            && let Some(next) = &merged.next_task
            && self.plugins.snapshot().catalog.get(next).is_none()
        {
            return Err(EngineError::Invalid(format!(
                "`nextTask` {next} is not defined by any loaded plugin; \
                 GET /api/plugins lists what each plugin declares"
            )));
        }
        merged.version += 1;
        let updated = Instance {
            task: merged,
            ..instance.clone()
        };
        let expected = instance.task.version as i64;
        match self.advance(updated, expected, source).await {
            Err(EngineError::Write(WriteError::Conflict { .. })) => {
                match self.current_version(instance_id).await {
                    Some(current) => Err(EngineError::VersionConflict {
                        instance_id: instance_id.to_owned(),
                        current,
                        sent,
                    }),
                    None => Err(EngineError::Finished(instance_id.to_owned())),
                }
            }
            result => result,
        }
    }

    /// Moves an updated instance on: fails it if it carries an error,
    /// completes it if done, and otherwise keeps it where it is, except
    /// that a plugin's unfinished result goes to the next environment.
    async fn advance(
        self: &Arc<Self>,
        updated: Instance,
        expected: i64,
        source: Source<'_>,
    ) -> Result<Task, EngineError> {
        if let Some(error) = updated.task.error.clone() {
            return self.fail(updated, expected, error).await;
        }
        let snapshot = self.plugins.snapshot();
        let mut thread = thread_of(&updated.task);
        let outputs = if updated.task.is_done() && next_needs_outputs(&snapshot, &updated.task) {
            thread.profile = self.profile(updated.task.user_id.as_deref()).await?;
            self.thread_outputs(&updated.task.thread_id).await?
        } else {
            HashMap::new()
        };
        let mut plan = Plan::new(self.providers(&snapshot), thread, outputs, now_millis());

        let task = if updated.task.is_done() {
            plan.complete(updated, Some(expected)).task
        } else if let Source::Plugin(plugin) = source {
            let next = environment_index(&updated.task) + 1;
            if next < updated.task.environments.len() {
                plan.route(updated, next, Some(expected)).task
            } else {
                let message = format!(
                    "plugin `{plugin}` returned the task unfinished and it lists no further \
                     environment; set `state.done` to true or add an environment"
                );
                plan.fail(updated, Some(expected), message).task
            }
        } else {
            plan.keep(updated, expected).task
        };
        plan.finish_thread();
        self.execute(plan).await?;
        Ok(task)
    }

    /// Fails `instance` with `message` and enters its error task.
    async fn fail(
        self: &Arc<Self>,
        instance: Instance,
        expected: i64,
        message: String,
    ) -> Result<Task, EngineError> {
        let snapshot = self.plugins.snapshot();
        let mut thread = thread_of(&instance.task);
        thread.profile = self.profile(instance.task.user_id.as_deref()).await?;
        let outputs = self.thread_outputs(&instance.task.thread_id).await?;
        let mut plan = Plan::new(self.providers(&snapshot), thread, outputs, now_millis());
        let task = plan.fail(instance, Some(expected), message).task;
        plan.finish_thread();
        self.execute(plan).await?;
        Ok(task)
    }

    fn providers<'a>(&'a self, snapshot: &'a Snapshot) -> Providers<'a> {
        Providers {
            plugins: snapshot,
            processors: &self.processors,
        }
    }

    /// Returns the profile of the user who started a thread, for
    /// `{{user.FIELD}}` templates in its later steps.
    async fn profile(&self, user_id: Option<&str>) -> Result<Value, EngineError> {
        let Some(user_id) = user_id else {
            return Ok(Value::Null);
        };
        match self.storage.user(user_id).await? {
            Some(user) => Ok(crate::auth::profile(&user)),
            None if user_id == crate::auth::LOCAL_USER => {
                Ok(crate::auth::Auth::dev_principal().profile)
            }
            None => Ok(Value::Null),
        }
    }

    async fn thread_outputs(&self, thread_id: &str) -> Result<HashMap<String, Value>, EngineError> {
        let mut outputs = HashMap::new();
        for (task_id, text) in self.storage.outputs(thread_id).await? {
            let value = serde_json::from_str(&text).unwrap_or(Value::Null);
            outputs.insert(task_id, value);
        }
        Ok(outputs)
    }

    async fn current_version(&self, instance_id: &str) -> Option<u64> {
        match self.storage.task(instance_id).await {
            Ok(Some((Shelf::Live, record))) => Some(record.version as u64),
            _ => None,
        }
    }
}

/// Settings of the background sweeps.
#[derive(Debug, Clone, Copy)]
pub struct Sweeps {
    /// How long a task may wait for a provider before it fails; `None`
    /// waits forever.
    pub pending_timeout: Option<Duration>,
}

/// Returns a JSON number that is a non-negative whole number (`3` or
/// `3.0`, as JSON Schema's `integer` allows) as a `u64`.
fn whole_number(value: &Value) -> Option<u64> {
    let number = value.as_number()?;
    if let Some(whole) = number.as_u64() {
        return Some(whole);
    }
    let float = number.as_f64()?;
    (float >= 0.0 && float.fract() == 0.0 && float <= u64::MAX as f64).then_some(float as u64)
}

/// Returns the thread a task belongs to, as plans need it.
fn thread_of(task: &Task) -> ThreadContext {
    ThreadContext {
        thread_id: task.thread_id.clone(),
        user_id: task.user_id.clone(),
        group_id: task.group_id.clone(),
        mode: "new".into(),
        mode_key: None,
        profile: Value::Null,
    }
}

/// Whether finishing `task` enters a next task that needs the thread's
/// outputs: one whose config has templates, or one that needs no
/// environment and so runs on in the same plan. Other completions skip
/// reading the outputs.
fn next_needs_outputs(snapshot: &Snapshot, task: &Task) -> bool {
    let Some(next) = &task.next_task else {
        return false;
    };
    snapshot.catalog.get(next).is_some_and(|definition| {
        definition.environments.is_empty() || template::has_templates(&definition.config)
    })
}

/// Returns the position of the task's current environment in its list.
fn environment_index(task: &Task) -> usize {
    task.environment
        .as_ref()
        .and_then(|current| task.environments.iter().position(|name| name == current))
        .unwrap_or(0)
}
