//! The task engine: the one owner of task state.
//!
//! Every change to a task (a start or an update over HTTP, a result from a
//! plugin, a resume after a restart) goes through [`Engine`]. It checks the
//! change, plans what follows (see [`plan`]), commits the plan as one
//! transaction, and only then starts plugin calls, writes log lines and
//! publishes events. HTTP handlers translate and hand over; they never
//! write rows themselves.
//!
//! Concurrent changes to one task are settled by its `version`: every write
//! replaces the row only if it still has the version the change was based
//! on (compare-and-swap in the storage writer). A late or duplicate result
//! therefore finds a newer version and is dropped.

pub mod catalog;
pub mod merge;
pub mod plan;
pub mod task;
pub mod template;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::events::{Event, Events};
use crate::plugin::{CallError, LoadedPlugin, PluginHost, PluginRegistry, RunError, WitTask};
use crate::storage::{Shelf, Storage, StorageError, WriteError};
use plan::{Instance, Outcome, Plan, ThreadContext};
use task::{Task, TaskStatus, now_millis};

/// Why the engine refused a change. Each variant maps to one HTTP status.
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
    pub user_id: Option<String>,
    /// The group it runs for.
    pub group_id: Option<String>,
}

/// The task engine.
pub struct Engine {
    storage: Storage,
    plugins: Arc<PluginRegistry>,
    host: Arc<PluginHost>,
    events: Events,
    /// Serializes the sweeps that hand pending tasks to new providers, so
    /// two sweeps never dispatch one task twice.
    sweep: tokio::sync::Mutex<()>,
}

impl Engine {
    /// Creates the engine.
    pub fn new(
        storage: Storage,
        plugins: Arc<PluginRegistry>,
        host: Arc<PluginHost>,
        events: Events,
    ) -> Arc<Self> {
        Arc::new(Self {
            storage,
            plugins,
            host,
            events,
            sweep: tokio::sync::Mutex::new(()),
        })
    }

    /// Returns the storage, for reads.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Starts a thread with the start task `request.id` and returns its
    /// first task as stored.
    ///
    /// # Errors
    ///
    /// [`EngineError::UnknownTask`] or [`EngineError::NotStartable`] for a
    /// bad id; storage errors otherwise.
    pub async fn start(self: &Arc<Self>, request: StartRequest) -> Result<Task, EngineError> {
        let snapshot = self.plugins.snapshot();
        let definition = snapshot
            .catalog
            .get(&request.id)
            .ok_or_else(|| EngineError::UnknownTask(request.id.clone()))?
            .clone();
        if !definition.start {
            return Err(EngineError::NotStartable(request.id));
        }

        let thread = ThreadContext {
            thread_id: uuid::Uuid::now_v7().to_string(),
            user_id: request.user_id,
            group_id: request.group_id,
            error: None,
        };
        let mut plan = Plan::new(&snapshot, thread, HashMap::new(), now_millis());
        plan.insert_thread(&definition.id);
        let first = plan.enter(&definition, request.input, None, 1);
        plan.finish_thread();
        self.execute(plan).await?;
        Ok(first.task)
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
        let sent = match update.get("version") {
            Some(Value::Number(number)) if number.as_u64().is_some() => {
                number.as_u64().unwrap_or(0)
            }
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
        if let Some(Value::String(named)) = update.get("instanceId")
            && named != instance_id
        {
            return Err(EngineError::Invalid(format!(
                "the update names instance {named} but was sent to {instance_id}"
            )));
        }

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
        if sent != instance.task.version {
            return Err(EngineError::VersionConflict {
                instance_id: instance_id.to_owned(),
                current: instance.task.version,
                sent,
            });
        }

        let mut merged = merge::merge(&instance.task, update)
            .map_err(|err| EngineError::Invalid(err.to_string()))?;
        merged.version += 1;
        let updated = Instance {
            task: merged,
            ..instance.clone()
        };
        let expected = instance.task.version as i64;
        let result = self.advance(updated, expected, None).await;
        match result {
            Ok(task) => Ok(task),
            Err(EngineError::Write(WriteError::Conflict { .. })) => {
                let current = self.current_version(instance_id).await;
                match current {
                    Some(current) => Err(EngineError::VersionConflict {
                        instance_id: instance_id.to_owned(),
                        current,
                        sent,
                    }),
                    None => Err(EngineError::Finished(instance_id.to_owned())),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// Hands every pending task whose environment now has a provider to it.
    /// Runs after a plugin is loaded and at start-up.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be read.
    pub async fn dispatch_pending(self: &Arc<Self>) -> Result<usize, EngineError> {
        let _sweep = self.sweep.lock().await;
        let snapshot = self.plugins.snapshot();
        let mut dispatched = 0;
        for record in self.storage.live_tasks(&["pending"]).await? {
            let Some(environment) = record.environment.as_deref() else {
                continue;
            };
            if snapshot.provider(environment).is_none() {
                continue;
            }
            let Ok(instance) = Instance::from_record(&record) else {
                tracing::error!(instance_id = %record.instance_id, "skipping an unreadable stored task");
                continue;
            };
            let index = environment_index(&instance.task);
            let thread = self.thread_context(&instance.task).await?;
            let mut plan = Plan::new(&snapshot, thread, HashMap::new(), now_millis());
            let expected = instance.task.version as i64;
            plan.route(instance, index, Some(expected));
            match self.execute(plan).await {
                Ok(()) => dispatched += 1,
                Err(EngineError::Write(WriteError::Conflict { .. })) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(dispatched)
    }

    /// Resumes after a restart: runs again every task that was dispatched
    /// to a plugin when the hub stopped (at-least-once), then dispatches
    /// pending tasks.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be read.
    pub async fn resume(self: &Arc<Self>) -> Result<usize, EngineError> {
        let snapshot = self.plugins.snapshot();
        let mut resumed = 0;
        for record in self.storage.live_tasks(&["dispatched"]).await? {
            let Ok(instance) = Instance::from_record(&record) else {
                tracing::error!(instance_id = %record.instance_id, "skipping an unreadable stored task");
                continue;
            };
            let index = environment_index(&instance.task);
            let thread = self.thread_context(&instance.task).await?;
            let mut plan = Plan::new(&snapshot, thread, HashMap::new(), now_millis());
            let expected = instance.task.version as i64;
            tracing::info!(
                task_id = %instance.task.id,
                instance_id = %instance.task.instance_id,
                thread_id = %instance.task.thread_id,
                "resuming task that was running when the hub stopped"
            );
            plan.route(instance, index, Some(expected));
            match self.execute(plan).await {
                Ok(()) => resumed += 1,
                Err(EngineError::Write(WriteError::Conflict { .. })) => {}
                Err(err) => return Err(err),
            }
        }
        resumed += self.dispatch_pending().await?;
        Ok(resumed)
    }

    /// Applies the result of a plugin call to the instance it ran.
    async fn apply_plugin_result(
        self: &Arc<Self>,
        instance: Instance,
        plugin: &LoadedPlugin,
        result: Result<Result<WitTask, RunError>, CallError>,
    ) {
        let expected = instance.task.version as i64;
        let name = &plugin.name;
        let outcome = match result {
            Ok(Ok(returned)) => match crate::plugin::apply_wit_task(&instance.task, returned) {
                Ok(mut task) => {
                    task.version += 1;
                    Ok(Instance {
                        task,
                        ..instance.clone()
                    })
                }
                Err(err) => Err(format!("plugin `{name}` returned an invalid task: {err}")),
            },
            Ok(Err(RunError::InvalidTask(message))) => Err(format!(
                "plugin `{name}` rejected the task as invalid: {message}"
            )),
            Ok(Err(RunError::Failed(message))) => Err(format!("plugin `{name}` failed: {message}")),
            Err(err) => Err(err.to_string()),
        };

        let result = match outcome {
            Ok(updated) => self
                .advance(updated, expected, Some(name))
                .await
                .map(|_| ()),
            Err(message) => self.fail(instance.clone(), expected, message).await,
        };
        match result {
            Ok(()) => {}
            Err(EngineError::Write(WriteError::Conflict { .. })) => {
                tracing::warn!(
                    plugin = %name,
                    instance_id = %instance.task.instance_id,
                    version = instance.task.version,
                    "dropping a plugin result: the task changed while the plugin ran"
                );
                self.redispatch(&instance.task.instance_id).await;
            }
            Err(err) => {
                tracing::error!(
                    plugin = %name,
                    instance_id = %instance.task.instance_id,
                    error = %err,
                    "failed to store a plugin result; the task is run again after a restart"
                );
            }
        }
    }

    /// Runs a task again when a plugin's result was dropped because an
    /// update changed the task meanwhile but left it dispatched: no call
    /// would otherwise finish it.
    async fn redispatch(self: &Arc<Self>, instance_id: &str) {
        let record = match self.storage.task(instance_id).await {
            Ok(Some((Shelf::Live, record))) if record.status == "dispatched" => record,
            Ok(_) => return,
            Err(err) => {
                tracing::error!(instance_id, error = %err, "failed to read a task to run it again");
                return;
            }
        };
        let Ok(instance) = Instance::from_record(&record) else {
            return;
        };
        let snapshot = self.plugins.snapshot();
        let thread = match self.thread_context(&instance.task).await {
            Ok(thread) => thread,
            Err(err) => {
                tracing::error!(instance_id, error = %err, "failed to read a thread to run a task again");
                return;
            }
        };
        let index = environment_index(&instance.task);
        let expected = instance.task.version as i64;
        let mut plan = Plan::new(&snapshot, thread, HashMap::new(), now_millis());
        plan.route(instance, index, Some(expected));
        if let Err(err) = self.execute(plan).await {
            tracing::warn!(instance_id, error = %err, "did not run a changed task again");
        }
    }

    /// Moves an updated instance on: fails it if it carries an error,
    /// completes it if done, sends it to its next environment if a plugin
    /// left it unfinished, or keeps it where it is.
    async fn advance(
        self: &Arc<Self>,
        updated: Instance,
        expected: i64,
        from_plugin: Option<&str>,
    ) -> Result<Task, EngineError> {
        if let Some(error) = updated.task.error.clone() {
            return self.fail_returning(updated, expected, error).await;
        }
        let snapshot = self.plugins.snapshot();
        let thread = self.thread_context(&updated.task).await?;
        let outputs = if updated.task.is_done() {
            self.thread_outputs(&updated.task.thread_id).await?
        } else {
            HashMap::new()
        };
        let mut plan = Plan::new(&snapshot, thread, outputs, now_millis());

        let task = if updated.task.is_done() {
            plan.complete(updated, Some(expected)).task
        } else if let Some(plugin) = from_plugin {
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

    async fn fail(
        self: &Arc<Self>,
        instance: Instance,
        expected: i64,
        message: String,
    ) -> Result<(), EngineError> {
        self.fail_returning(instance, expected, message)
            .await
            .map(|_| ())
    }

    async fn fail_returning(
        self: &Arc<Self>,
        instance: Instance,
        expected: i64,
        message: String,
    ) -> Result<Task, EngineError> {
        let snapshot = self.plugins.snapshot();
        let thread = self.thread_context(&instance.task).await?;
        let outputs = self.thread_outputs(&instance.task.thread_id).await?;
        let mut plan = Plan::new(&snapshot, thread, outputs, now_millis());
        let task = plan.fail(instance, Some(expected), message).task;
        plan.finish_thread();
        self.execute(plan).await?;
        Ok(task)
    }

    /// Commits a plan, then starts its plugin calls, logs and publishes.
    async fn execute(self: &Arc<Self>, plan: Plan<'_>) -> Result<(), EngineError> {
        let Plan {
            transaction,
            dispatches,
            outcomes,
            ..
        } = plan;
        self.storage
            .commit(transaction)
            .await
            .map_err(EngineError::Write)?;

        for outcome in outcomes {
            self.publish(outcome);
        }
        for (instance, plugin) in dispatches {
            tokio::spawn(self.clone().call_plugin(instance, plugin));
        }
        Ok(())
    }

    /// Runs a plugin call and applies its result. The boxed future breaks
    /// the type cycle between `execute` and the calls it starts.
    fn call_plugin(
        self: Arc<Self>,
        instance: Instance,
        plugin: Arc<LoadedPlugin>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let result = self.host.run(&plugin, &instance.task).await;
            self.apply_plugin_result(instance, &plugin, result).await;
        })
    }

    fn publish(&self, outcome: Outcome) {
        match outcome {
            Outcome::Entered(task) | Outcome::Changed(task) => {
                log_task(&task);
                self.events.publish(Event::TaskChanged {
                    task: Box::new(task),
                });
            }
            Outcome::ThreadEnded { thread_id, status } => {
                tracing::info!(%thread_id, status, "thread ended");
                self.events.publish(Event::ThreadEnded {
                    thread_id,
                    status: status.to_owned(),
                });
            }
        }
    }

    async fn thread_context(&self, task: &Task) -> Result<ThreadContext, EngineError> {
        let error = self
            .storage
            .thread(&task.thread_id)
            .await?
            .and_then(|thread| thread.error);
        Ok(ThreadContext {
            thread_id: task.thread_id.clone(),
            user_id: task.user_id.clone(),
            group_id: task.group_id.clone(),
            error,
        })
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

/// Returns the position of the task's current environment in its list.
fn environment_index(task: &Task) -> usize {
    task.environment
        .as_ref()
        .and_then(|current| task.environments.iter().position(|name| name == current))
        .unwrap_or(0)
}

fn log_task(task: &Task) {
    let taskflow = task
        .id
        .rsplit_once('.')
        .map_or(task.id.as_str(), |(prefix, _)| prefix);
    let environment = task.environment.as_deref().unwrap_or("");
    match task.status {
        TaskStatus::Done => tracing::info!(
            taskflow, task_id = %task.id, instance_id = %task.instance_id,
            thread_id = %task.thread_id, "task done"
        ),
        TaskStatus::Failed => tracing::warn!(
            taskflow, task_id = %task.id, instance_id = %task.instance_id,
            thread_id = %task.thread_id, error = task.error.as_deref().unwrap_or(""),
            "task failed"
        ),
        TaskStatus::Pending => tracing::info!(
            taskflow, task_id = %task.id, instance_id = %task.instance_id,
            thread_id = %task.thread_id, environment, "task waiting for a provider"
        ),
        TaskStatus::Dispatched | TaskStatus::Waiting => tracing::info!(
            taskflow, task_id = %task.id, instance_id = %task.instance_id,
            thread_id = %task.thread_id, environment, status = task.status.as_str(),
            "task started"
        ),
    }
}
