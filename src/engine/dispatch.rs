//! Executing plans and everything that moves tasks between providers:
//! plugin calls and their results, sends to processors, resuming after a
//! restart, handing pending tasks to new providers, taking tasks back from
//! processors that left, and failing tasks that waited too long.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::plan::{Instance, Outcome, Plan, Target, can_dispatch};
use super::task::{Task, TaskStatus, now_millis};
use super::{Engine, EngineError, Source, Sweeps, environment_index};
use crate::events::Event;
use crate::metrics;
use crate::plugin::{CallError, LoadedPlugin, RunError, WitTask};
use crate::processors::{Outbound, PROVIDER_PREFIX, Processor};
use crate::storage::{Shelf, TaskRecord, WriteError};

/// A boxed future; boxing breaks the type cycle between executing a plan
/// and the plugin calls and requeues it starts.
type Detached = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Engine {
    /// Commits a plan, then publishes its outcomes and starts its plugin
    /// calls and processor sends.
    pub(super) async fn execute(self: &Arc<Self>, plan: Plan<'_>) -> Result<(), EngineError> {
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

        // A provider that arrived while this plan was built swept the
        // pending tasks before this commit; sweep again for this one.
        let snapshot = self.plugins.snapshot();
        let providers = self.providers(&snapshot);
        let missed = outcomes.iter().any(|outcome| match outcome {
            Outcome::Entered(task) | Outcome::Changed(task) => {
                task.status == TaskStatus::Pending && can_dispatch(providers, task)
            }
            Outcome::ThreadEnded { .. } => false,
        });
        for outcome in outcomes {
            self.publish(outcome);
        }
        if missed {
            tokio::spawn(self.clone().sweep_pending());
        }
        if self.is_shutting_down() && !dispatches.is_empty() {
            // The tasks stay dispatched and run again after the restart.
            tracing::info!(
                tasks = dispatches.len(),
                "not starting tasks while shutting down"
            );
            return Ok(());
        }
        for (instance, target) in dispatches {
            match target {
                Target::Plugin(plugin) => {
                    tokio::spawn(self.clone().call_plugin(instance, plugin));
                }
                Target::Processor(processor) => self.send_to_processor(instance, &processor),
            }
        }
        Ok(())
    }

    fn publish(&self, outcome: Outcome) {
        let entered = matches!(outcome, Outcome::Entered(_));
        match outcome {
            Outcome::Entered(task) | Outcome::Changed(task) => {
                if task.status != TaskStatus::Dispatched {
                    self.processors.release(&task.instance_id);
                }
                record_metrics(&task, entered);
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

    /// Sends a committed dispatch to its processor. When the connection has
    /// closed in the meantime, the task goes back to the queue.
    fn send_to_processor(self: &Arc<Self>, instance: Instance, processor: &Arc<Processor>) {
        let instance_id = instance.task.instance_id.clone();
        self.processors.assign(&instance_id, processor);
        let sent = processor.send(Outbound::Dispatch {
            task: Box::new(instance.task),
        });
        if sent.is_err() {
            tracing::warn!(
                processor_id = %processor.id,
                %instance_id,
                "failed to send a task to a processor that is leaving or overloaded; requeueing it"
            );
            self.processors.release(&instance_id);
            tokio::spawn(
                self.clone()
                    .requeue(vec![instance_id], processor.provider()),
            );
        }
    }

    /// Runs [`Engine::dispatch_pending`] on a task of its own.
    fn sweep_pending(self: Arc<Self>) -> Detached {
        Box::pin(async move {
            if let Err(err) = self.dispatch_pending().await {
                tracing::error!(error = %err, "failed to dispatch pending tasks");
            }
        })
    }

    /// Runs a plugin call and applies its result.
    fn call_plugin(self: Arc<Self>, instance: Instance, plugin: Arc<LoadedPlugin>) -> Detached {
        Box::pin(async move {
            let _running = self
                .in_flight
                .call(&instance.task.instance_id, &plugin.name);
            let result = self.host.run(&plugin, &instance.task).await;
            self.apply_plugin_result(instance, &plugin, result).await;
        })
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
                    let catalog = &self.plugins.snapshot().catalog;
                    let unknown_next = task
                        .next_task
                        .as_ref()
                        .filter(|next| Some(*next) != instance.task.next_task.as_ref())
                        .filter(|next| catalog.get(next).is_none());
                    if let Err(message) = super::merge::check_limits(&task) {
                        Err(format!(
                            "plugin `{name}` returned an invalid task: {message}"
                        ))
                    } else if let Some(next) = unknown_next {
                        Err(format!(
                            "plugin `{name}` set `nextTask` to {next}, which no loaded plugin defines"
                        ))
                    } else {
                        task.version += 1;
                        Ok(Instance {
                            task,
                            ..instance.clone()
                        })
                    }
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
            Ok(updated) => self.advance(updated, expected, Source::Plugin(name)).await,
            Err(message) => self.fail(instance.clone(), expected, message).await,
        };
        match result {
            Ok(_) => {}
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

    /// Runs a task on a plugin again when the plugin's result was dropped
    /// because an update changed the task meanwhile but left it
    /// dispatched: no call would otherwise finish it.
    async fn redispatch(self: &Arc<Self>, instance_id: &str) {
        let record = match self.storage.task(instance_id).await {
            Ok(Some((Shelf::Live, record))) if record.status == "dispatched" => record,
            Ok(_) => return,
            Err(err) => {
                tracing::error!(instance_id, error = %err, "failed to read a task to run it again");
                return;
            }
        };
        if let Err(err) = self.reroute(&record).await {
            tracing::warn!(instance_id, error = %err, "did not run a changed task again");
        }
    }

    /// Sends a live task to a provider of its current environment again.
    async fn reroute(self: &Arc<Self>, record: &TaskRecord) -> Result<(), EngineError> {
        let instance = Instance::from_record(record).map_err(|err| {
            EngineError::Invalid(format!(
                "stored task {} is unreadable: {err}",
                record.instance_id
            ))
        })?;
        let snapshot = self.plugins.snapshot();
        let thread = super::thread_of(&instance.task);
        let index = environment_index(&instance.task);
        let expected = instance.task.version as i64;
        let mut plan = Plan::new(
            self.providers(&snapshot),
            thread,
            HashMap::new(),
            now_millis(),
        );
        plan.route(instance, index, Some(expected));
        self.execute(plan).await
    }

    /// Hands every pending task whose environment now has a provider to it.
    /// Runs after a plugin loads, a processor registers, a processor leaves,
    /// and at start-up.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be read.
    pub async fn dispatch_pending(self: &Arc<Self>) -> Result<usize, EngineError> {
        let _sweep = self.sweep.lock().await;
        let snapshot = self.plugins.snapshot();
        let mut dispatched = 0;
        for record in self.storage.live_tasks(&["pending"]).await? {
            let Ok(instance) = Instance::from_record(&record) else {
                tracing::error!(instance_id = %record.instance_id, "skipping an unreadable pending task");
                continue;
            };
            if !can_dispatch(self.providers(&snapshot), &instance.task) {
                continue;
            }
            match self.reroute(&record).await {
                Ok(()) => dispatched += 1,
                Err(EngineError::Write(WriteError::Conflict { .. })) => {}
                Err(EngineError::Invalid(message)) => {
                    tracing::error!(instance_id = %record.instance_id, message, "skipping a pending task");
                }
                Err(err) => return Err(err),
            }
        }
        Ok(dispatched)
    }

    /// Resumes after a restart. Tasks that were dispatched to a plugin run
    /// again (at least once); tasks that processors held go back to the
    /// queue, because those connections ended with the old process. Then
    /// pending tasks are dispatched.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be read.
    pub async fn resume(self: &Arc<Self>) -> Result<usize, EngineError> {
        let mut resumed = 0;
        let mut from_processors = Vec::new();
        for record in self.storage.live_tasks(&["dispatched"]).await? {
            if record
                .provider
                .as_deref()
                .is_some_and(|provider| provider.starts_with(PROVIDER_PREFIX))
            {
                from_processors.push(record);
                continue;
            }
            tracing::info!(
                task_id = %record.task_id,
                instance_id = %record.instance_id,
                thread_id = %record.thread_id,
                "resuming task that was running when the hub stopped"
            );
            match self.reroute(&record).await {
                Ok(()) => resumed += 1,
                Err(EngineError::Write(WriteError::Conflict { .. })) => {}
                Err(err) => return Err(err),
            }
        }
        for record in from_processors {
            tracing::info!(
                task_id = %record.task_id,
                instance_id = %record.instance_id,
                provider = record.provider.as_deref().unwrap_or(""),
                "requeueing task a processor held when the hub stopped"
            );
            self.park(&record).await?;
        }
        resumed += self.dispatch_pending().await?;
        Ok(resumed)
    }

    /// Takes back every task `processor` held, after its connection ended,
    /// and sends them to other providers (or lets them wait).
    pub async fn processor_left(self: &Arc<Self>, processor: &Processor) {
        let provider = processor.provider();
        let held = match self.storage.live_tasks_held_by(&provider).await {
            Ok(held) => held,
            Err(err) => {
                tracing::error!(processor_id = %processor.id, error = %err, "failed to read the tasks a processor held");
                return;
            }
        };
        let ids = held.into_iter().map(|record| record.instance_id).collect();
        self.clone().requeue(ids, provider).await;
    }

    /// Puts the given tasks back in the queue if `provider` still holds
    /// them, then dispatches pending tasks.
    fn requeue(self: Arc<Self>, instance_ids: Vec<String>, provider: String) -> Detached {
        Box::pin(async move {
            for instance_id in instance_ids {
                let record = match self.storage.task(&instance_id).await {
                    Ok(Some((Shelf::Live, record))) => record,
                    Ok(_) => continue,
                    Err(err) => {
                        tracing::error!(%instance_id, error = %err, "failed to read a task to requeue it");
                        continue;
                    }
                };
                if record.status != "dispatched" || record.provider.as_deref() != Some(&provider) {
                    continue;
                }
                tracing::info!(%instance_id, %provider, "requeueing task of a processor that left");
                if let Err(err) = self.park(&record).await {
                    tracing::warn!(%instance_id, error = %err, "did not requeue a task");
                }
            }
            if let Err(err) = self.dispatch_pending().await {
                tracing::error!(error = %err, "failed to dispatch pending tasks");
            }
        })
    }

    /// Sets a dispatched task back to pending.
    async fn park(self: &Arc<Self>, record: &TaskRecord) -> Result<(), EngineError> {
        let instance = Instance::from_record(record).map_err(|err| {
            EngineError::Invalid(format!(
                "stored task {} is unreadable: {err}",
                record.instance_id
            ))
        })?;
        let snapshot = self.plugins.snapshot();
        let thread = super::thread_of(&instance.task);
        let expected = instance.task.version as i64;
        let mut plan = Plan::new(
            self.providers(&snapshot),
            thread,
            HashMap::new(),
            now_millis(),
        );
        plan.park(instance, expected);
        match self.execute(plan).await {
            Ok(()) | Err(EngineError::Write(WriteError::Conflict { .. })) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Starts the background sweeps: failing tasks that waited longer than
    /// the pending timeout for a provider.
    pub fn start_sweeps(self: &Arc<Self>, sweeps: Sweeps) {
        let Some(timeout) = sweeps.pending_timeout else {
            return;
        };
        let engine = self.clone();
        let every = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                ticker.tick().await;
                engine.fail_overdue(timeout).await;
            }
        });
    }

    async fn fail_overdue(self: &Arc<Self>, timeout: Duration) {
        let cutoff = now_millis() - timeout.as_millis() as i64;
        let overdue = match self.storage.pending_since_before(cutoff).await {
            Ok(overdue) => overdue,
            Err(err) => {
                tracing::error!(error = %err, "failed to read tasks waiting for a provider");
                return;
            }
        };
        for record in overdue {
            let Ok(instance) = Instance::from_record(&record) else {
                continue;
            };
            let environment = record.environment.clone().unwrap_or_default();
            let message = format!(
                "no plugin or processor provides environment `{environment}`: the task waited {} s \
                 and timed out; load a plugin or connect a processor that provides it",
                timeout.as_secs_f64()
            );
            let expected = instance.task.version as i64;
            match self.fail(instance, expected, message).await {
                Ok(_) | Err(EngineError::Write(WriteError::Conflict { .. })) => {}
                Err(err) => {
                    tracing::error!(instance_id = %record.instance_id, error = %err, "failed to time out a task");
                }
            }
        }
    }
}

fn record_metrics(task: &Task, entered: bool) {
    let environment = task.environments.first().map_or("none", String::as_str);
    if entered {
        metrics::task_started(&task.id, environment);
    }
    if task.status.is_finished() {
        let created = chrono::DateTime::parse_from_rfc3339(&task.created_at);
        let ended = task
            .completed_at
            .as_deref()
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok());
        let duration = match (created, ended) {
            (Ok(created), Some(ended)) => (ended - created).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        };
        metrics::task_ended(
            &task.id,
            environment,
            task.status == TaskStatus::Done,
            duration,
        );
    }
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
