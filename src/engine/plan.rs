//! Planning a change to a thread: which rows to write, which plugin calls
//! to make and which events to publish, decided in memory before anything
//! is committed.
//!
//! A plan covers one step of a thread and everything that follows at once.
//! A finishing task stores its output, is archived and enters its next
//! task. A task that needs no environment finishes as it starts. A failure
//! enters the error task. All of it commits in one transaction, so a thread
//! is never seen half way between two tasks.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::catalog::ResolvedDefinition;
use super::task::{Task, TaskStatus, rfc3339};
use super::template::{self, TemplateContext};
use crate::plugin::{LoadedPlugin, Snapshot};
use crate::processors::{Processor, ProcessorRegistry};
use crate::storage::{TaskRecord, ThreadRecord, Transaction, Write};

/// Tasks one plan may enter before the hub stops the chain: a `nextTask`
/// loop of tasks that need no environment would otherwise never end.
pub const MAX_STEPS: usize = 64;

/// The environment of tasks that a person completes through the HTTP API
/// or the browser.
pub const USER_ENVIRONMENT: &str = "user";

/// Where tasks can be sent: the loaded plugins and the connected
/// processors, as one plan sees them.
#[derive(Clone, Copy)]
pub struct Providers<'a> {
    /// The plugin registry's current snapshot, with the catalog.
    pub plugins: &'a Snapshot,
    /// The connected processors.
    pub processors: &'a ProcessorRegistry,
}

/// A provider a dispatched task is sent to once the plan is committed.
#[derive(Debug, Clone)]
pub enum Target {
    /// An environment adapter plugin, called in-process.
    Plugin(Arc<LoadedPlugin>),
    /// A remote processor, sent the task over its connection.
    Processor(Arc<Processor>),
}

/// A task instance with what the hub keeps beside it.
#[derive(Debug, Clone)]
pub struct Instance {
    /// The task.
    pub task: Task,
    /// Position in the thread, from 1.
    pub seq: i64,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// The provider running it while dispatched, e.g. `plugin:llm-mock`.
    pub provider: Option<String>,
    /// Whether it runs after a failure in its thread: it is an error task
    /// or follows one. Its own failure then ends the thread, so error
    /// tasks cannot loop, and the thread ends as failed.
    pub after_failure: bool,
}

impl Instance {
    /// Returns the row for the live table or the archive.
    pub fn record(&self, updated_ms: i64) -> TaskRecord {
        TaskRecord {
            instance_id: self.task.instance_id.clone(),
            thread_id: self.task.thread_id.clone(),
            seq: self.seq,
            task_id: self.task.id.clone(),
            status: self.task.status.as_str().to_owned(),
            environment: self.task.environment.clone(),
            provider: self.provider.clone(),
            version: self.task.version as i64,
            after_failure: self.after_failure,
            body: serde_json::to_string(&self.task).expect("a task always serializes"),
            created_at: self.created_ms,
            updated_at: updated_ms,
        }
    }

    /// Rebuilds an instance from its stored row.
    ///
    /// # Errors
    ///
    /// Fails when the stored body is not a task.
    pub fn from_record(record: &TaskRecord) -> Result<Self, serde_json::Error> {
        Ok(Self {
            task: serde_json::from_str(&record.body)?,
            seq: record.seq,
            created_ms: record.created_at,
            provider: record.provider.clone(),
            after_failure: record.after_failure,
        })
    }
}

/// Which kind of provider a task accepts, from its `config.provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preference {
    Any,
    Plugin,
    Processor,
}

/// Returns the provider kind a task accepts, from its `config.provider`.
fn preference(task: &Task) -> Result<Preference, String> {
    match task.config.get("provider") {
        None | Some(Value::Null) => Ok(Preference::Any),
        Some(Value::String(name)) if name == "plugin" => Ok(Preference::Plugin),
        Some(Value::String(name)) if name == "processor" => Ok(Preference::Processor),
        Some(other) => Err(format!(
            "task {}: `config.provider` is {other}; use \"plugin\" or \"processor\", \
             or leave it out to prefer plugins",
            task.id
        )),
    }
}

/// Picks the provider for a task in `environment`: a plugin before a
/// processor, unless `preference` allows only one kind.
fn choose(
    providers: Providers<'_>,
    environment: &str,
    preference: Preference,
    user_id: Option<&str>,
) -> Option<Target> {
    let plugin = || {
        providers
            .plugins
            .provider(environment)
            .map(|plugin| Target::Plugin(plugin.clone()))
    };
    let processor = || {
        providers
            .processors
            .choose(environment, user_id)
            .map(Target::Processor)
    };
    match preference {
        Preference::Any => plugin().or_else(processor),
        Preference::Plugin => plugin(),
        Preference::Processor => processor(),
    }
}

/// Whether a pending task could be dispatched now: a provider it accepts
/// serves its current environment.
pub fn can_dispatch(providers: Providers<'_>, task: &Task) -> bool {
    let Some(environment) = task.environment.as_deref() else {
        return false;
    };
    let plugin = || providers.plugins.provider(environment).is_some();
    let processor = || {
        providers
            .processors
            .serves(environment, task.user_id.as_deref())
    };
    match preference(task) {
        Ok(Preference::Any) => plugin() || processor(),
        Ok(Preference::Plugin) => plugin(),
        Ok(Preference::Processor) => processor(),
        Err(_) => false,
    }
}

/// The thread a plan works on.
#[derive(Debug, Clone)]
pub struct ThreadContext {
    /// The thread.
    pub thread_id: String,
    /// The user who started it.
    pub user_id: Option<String>,
    /// The group it runs for.
    pub group_id: Option<String>,
    /// The thread mode it was started in: `new`, `user`, `group` or
    /// `session`.
    pub mode: String,
    /// The user, group or session whose one thread it is.
    pub mode_key: Option<String>,
    /// Profile of the user who started it, for `{{user.FIELD}}` templates;
    /// `null` when not loaded.
    pub profile: Value,
}

/// A change a plan logs and publishes once it is committed.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A task entered the thread (and may have finished at once).
    Entered(Task),
    /// A live task changed.
    Changed(Task),
    /// The thread ended.
    ThreadEnded {
        /// The thread.
        thread_id: String,
        /// `done` or `failed`.
        status: &'static str,
    },
}

/// Row changes, plugin calls and outcomes for one step of a thread.
pub struct Plan<'a> {
    providers: Providers<'a>,
    thread: ThreadContext,
    outputs: HashMap<String, Value>,
    now: i64,
    steps: usize,
    last_seq: i64,
    first_error: Option<String>,
    /// Whether this plan inserts the thread's row, so its progress goes
    /// into that insert instead of a separate update.
    inserts_thread: bool,
    /// Rows to commit.
    pub transaction: Transaction,
    /// Plugin calls to start once the transaction is committed.
    pub dispatches: Vec<(Instance, Target)>,
    /// Tasks and threads to log and publish once committed.
    pub outcomes: Vec<Outcome>,
}

impl<'a> Plan<'a> {
    /// Starts a plan for `thread`, whose outputs so far are `outputs`.
    pub fn new(
        providers: Providers<'a>,
        thread: ThreadContext,
        outputs: HashMap<String, Value>,
        now: i64,
    ) -> Self {
        Self {
            providers,
            thread,
            outputs,
            now,
            steps: 0,
            last_seq: 0,
            first_error: None,
            inserts_thread: false,
            transaction: Transaction::new(),
            dispatches: Vec::new(),
            outcomes: Vec::new(),
        }
    }

    /// Adds the row of a new thread that starts with `start_task_id`.
    pub fn insert_thread(&mut self, start_task_id: &str) {
        self.inserts_thread = true;
        self.transaction.push(Write::InsertThread(ThreadRecord {
            thread_id: self.thread.thread_id.clone(),
            start_task_id: start_task_id.to_owned(),
            status: "running".into(),
            error: None,
            user_id: self.thread.user_id.clone(),
            group_id: self.thread.group_id.clone(),
            mode: self.thread.mode.clone(),
            mode_key: self.thread.mode_key.clone(),
            task_count: 0,
            created_at: self.now,
            updated_at: self.now,
        }));
    }

    /// Creates an instance of `definition` at position `seq` and takes it
    /// as far as it goes without waiting, returning it as it ends up.
    pub fn enter(
        &mut self,
        definition: &ResolvedDefinition,
        input: Value,
        parent: Option<&str>,
        seq: i64,
        after_failure: bool,
    ) -> Instance {
        self.steps += 1;
        self.last_seq = self.last_seq.max(seq);
        let timestamp = rfc3339(self.now);
        let mut instance = Instance {
            task: Task {
                id: definition.id.clone(),
                instance_id: uuid::Uuid::now_v7().to_string(),
                thread_id: self.thread.thread_id.clone(),
                parent_instance_id: parent.map(str::to_owned),
                user_id: self.thread.user_id.clone(),
                group_id: self.thread.group_id.clone(),
                environments: definition.environments.clone(),
                environment: None,
                status: TaskStatus::Pending,
                state: Value::Null,
                input,
                output: Value::Null,
                config: definition.config.clone(),
                request: Value::Null,
                response: Value::Null,
                error: None,
                next_task: definition.next_task.clone(),
                command: None,
                command_args: Value::Null,
                version: 1,
                created_at: timestamp.clone(),
                updated_at: timestamp,
                completed_at: None,
            },
            seq,
            created_ms: self.now,
            provider: None,
            after_failure,
        };
        tracing::debug!(task_id = %definition.id, seq, "entering task");

        if self.steps > MAX_STEPS {
            let message = format!(
                "more than {MAX_STEPS} tasks ran in a row without waiting for an environment; \
                 check the nextTask chain through {} for a loop",
                definition.id
            );
            return self.fail(instance, None, message);
        }

        if template::has_templates(&instance.task.config) {
            let context = TemplateContext {
                input: &instance.task.input,
                outputs: &self.outputs,
                user: &self.thread.profile,
            };
            match template::fill(&instance.task.config, &context) {
                Ok(config) => instance.task.config = config,
                Err(err) => {
                    let message = format!("task {}: {err}", definition.id);
                    return self.fail(instance, None, message);
                }
            }
        }
        if let Some(request) = instance.task.config.get("request") {
            instance.task.request = request.clone();
        }

        if instance.task.environments.is_empty() {
            instance.task.output = instance.task.input.clone();
            instance.task.state = json!({ "done": true });
            return self.complete(instance, None);
        }
        self.route(instance, 0, None)
    }

    /// Sends `instance` to its environment at `index`: a plugin call, a
    /// processor, a wait for the user, or a wait for a provider.
    /// `expected_version` is the stored version to replace; `None` inserts
    /// a new row.
    ///
    /// A plugin serves an environment before a processor does, unless the
    /// task's `config.provider` is `"processor"` (only processors) or
    /// `"plugin"` (only plugins).
    pub fn route(
        &mut self,
        mut instance: Instance,
        index: usize,
        expected_version: Option<i64>,
    ) -> Instance {
        let environment = instance.task.environments[index].clone();
        let preference = match preference(&instance.task) {
            Ok(preference) => preference,
            Err(message) => return self.fail(instance, expected_version, message),
        };
        let target = if environment == USER_ENVIRONMENT {
            None
        } else {
            choose(
                self.providers,
                &environment,
                preference,
                instance.task.user_id.as_deref(),
            )
        };

        instance.task.status = if environment == USER_ENVIRONMENT {
            TaskStatus::Waiting
        } else if target.is_some() {
            TaskStatus::Dispatched
        } else {
            TaskStatus::Pending
        };
        instance.provider = target.as_ref().map(|target| match target {
            Target::Plugin(plugin) => format!("plugin:{}", plugin.name),
            Target::Processor(processor) => processor.provider(),
        });
        instance.task.environment = Some(environment);
        instance.task.updated_at = rfc3339(self.now);

        let record = instance.record(self.now);
        self.transaction.push(match expected_version {
            None => Write::InsertTask(record),
            Some(expected_version) => Write::ReplaceTask {
                record,
                expected_version,
            },
        });
        self.note(&instance, expected_version.is_none());
        if let Some(target) = target {
            self.dispatches.push((instance.clone(), target));
        }
        instance
    }

    /// Puts a live task back in the queue for its current environment, with
    /// no provider, so the next sweep can send it elsewhere.
    pub fn park(&mut self, mut instance: Instance, expected_version: i64) -> Instance {
        instance.task.status = TaskStatus::Pending;
        instance.provider = None;
        instance.task.updated_at = rfc3339(self.now);
        self.transaction.push(Write::ReplaceTask {
            record: instance.record(self.now),
            expected_version,
        });
        self.outcomes.push(Outcome::Changed(instance.task.clone()));
        instance
    }

    /// Stores a live task that changed but goes on where it is.
    pub fn keep(&mut self, mut instance: Instance, expected_version: i64) -> Instance {
        instance.task.updated_at = rfc3339(self.now);
        self.transaction.push(Write::ReplaceTask {
            record: instance.record(self.now),
            expected_version,
        });
        self.outcomes.push(Outcome::Changed(instance.task.clone()));
        instance
    }

    /// Finishes `instance`: archives it, stores its output and enters its
    /// next task, or ends the thread.
    pub fn complete(&mut self, mut instance: Instance, expected_version: Option<i64>) -> Instance {
        // A person's response is the output of a step that produced none.
        if instance.task.output.is_null() && !instance.task.response.is_null() {
            instance.task.output = instance.task.response.clone();
        }
        self.finish(&mut instance, TaskStatus::Done, expected_version);
        let output = instance.task.output.clone();
        self.transaction.push(Write::PutOutput {
            thread_id: instance.task.thread_id.clone(),
            task_id: instance.task.id.clone(),
            instance_id: instance.task.instance_id.clone(),
            output: output.to_string(),
            at: self.now,
        });
        self.outputs
            .insert(instance.task.id.clone(), output.clone());

        match instance.task.next_task.clone() {
            None => self.end_thread(instance.after_failure),
            Some(next) => match self.providers.plugins.catalog.get(&next).cloned() {
                Some(definition) => {
                    self.enter(
                        &definition,
                        output,
                        Some(&instance.task.instance_id),
                        instance.seq + 1,
                        instance.after_failure,
                    );
                }
                None => {
                    let message = format!(
                        "task {} finished, but its next task {next} is not defined by any \
                         loaded plugin",
                        instance.task.id
                    );
                    self.record_error(message);
                    self.end_thread(instance.after_failure);
                }
            },
        }
        instance
    }

    /// Fails `instance` with `message`: archives it and enters its error
    /// task, or ends the thread when there is none (or the thread had
    /// already failed).
    pub fn fail(
        &mut self,
        mut instance: Instance,
        expected_version: Option<i64>,
        message: String,
    ) -> Instance {
        instance.task.error = Some(message.clone());
        self.finish(&mut instance, TaskStatus::Failed, expected_version);
        self.record_error(message.clone());

        // A failure after a failure ends the thread: error tasks never
        // start error tasks.
        if instance.after_failure {
            self.end_thread(true);
            return instance;
        }
        let target = self.error_task_for(&instance.task);
        let Some(definition) =
            target.and_then(|id| self.providers.plugins.catalog.get(&id).cloned())
        else {
            self.end_thread(true);
            return instance;
        };
        let input = json!({
            "error": message,
            "failedTask": {
                "id": instance.task.id,
                "instanceId": instance.task.instance_id,
                "input": instance.task.input,
            },
        });
        self.enter(
            &definition,
            input,
            Some(&instance.task.instance_id),
            instance.seq + 1,
            true,
        );
        instance
    }

    /// Returns the error task for a failed task: `config.errorTask`, else
    /// the definition's (inherited) error task, else the nearest `*.error`.
    fn error_task_for(&self, task: &Task) -> Option<String> {
        if let Some(id) = task.config.get("errorTask").and_then(Value::as_str) {
            return Some(id.to_owned());
        }
        if let Some(id) = self
            .providers
            .plugins
            .catalog
            .get(&task.id)
            .and_then(|definition| definition.error_task.clone())
        {
            return Some(id);
        }
        self.providers
            .plugins
            .catalog
            .nearest_error_task(&task.id)
            .map(|definition| definition.id.clone())
    }

    fn finish(
        &mut self,
        instance: &mut Instance,
        status: TaskStatus,
        expected_version: Option<i64>,
    ) {
        let timestamp = rfc3339(self.now);
        instance.task.status = status;
        instance.task.environment = None;
        instance.task.updated_at = timestamp.clone();
        instance.task.completed_at = Some(timestamp);
        instance.provider = None;
        self.last_seq = self.last_seq.max(instance.seq);
        self.transaction.push(Write::ArchiveTask {
            record: instance.record(self.now),
            expected_version,
        });
        self.note(instance, expected_version.is_none());
    }

    fn note(&mut self, instance: &Instance, entered: bool) {
        let task = instance.task.clone();
        self.outcomes.push(if entered {
            Outcome::Entered(task)
        } else {
            Outcome::Changed(task)
        });
    }

    fn record_error(&mut self, message: String) {
        if self.first_error.is_none() {
            self.first_error = Some(message);
        }
    }

    fn end_thread(&mut self, after_failure: bool) {
        let failed = after_failure || self.first_error.is_some();
        let status = if failed { "failed" } else { "done" };
        self.outcomes.push(Outcome::ThreadEnded {
            thread_id: self.thread.thread_id.clone(),
            status,
        });
        self.push_thread_update(status);
    }

    /// Adds the thread row's update; call once the plan is complete.
    pub fn finish_thread(&mut self) {
        let ended = self
            .outcomes
            .iter()
            .any(|outcome| matches!(outcome, Outcome::ThreadEnded { .. }));
        if !ended {
            self.push_thread_update("running");
        }
    }

    fn push_thread_update(&mut self, status: &str) {
        let error = self.first_error.clone();
        let task_count = self.last_seq;
        // A thread inserted by this plan gets its progress in the insert.
        if self.inserts_thread {
            for write in self.transaction.writes_mut() {
                if let Write::InsertThread(thread) = write {
                    thread.status = status.to_owned();
                    thread.error = error;
                    thread.task_count = task_count;
                    return;
                }
            }
        }
        self.transaction.push(Write::UpdateThread {
            thread_id: self.thread.thread_id.clone(),
            status: status.to_owned(),
            error,
            task_count,
            at: self.now,
        });
    }
}
