//! The single writer: group commit of many small transactions.
//!
//! SQLite allows one writer at a time, and each durable commit costs an
//! fsync. The writer task takes every transaction that is waiting, runs
//! them inside one `BEGIN IMMEDIATE ... COMMIT`, each behind its own
//! savepoint, and then returns each caller its result. A transaction whose
//! compare-and-swap fails is rolled back to its savepoint alone; the others
//! in the batch still commit.

use std::sync::{Arc, Mutex};

use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Executor};
use tokio::sync::{mpsc, oneshot};

use super::{TaskRecord, ThreadRecord};

/// Upper bound on transactions per batch, so one commit stays short.
const MAX_BATCH: usize = 512;

/// Transactions that may wait for the writer before callers are slowed.
const QUEUE_DEPTH: usize = 8192;

/// One row change.
#[derive(Debug, Clone)]
pub enum Write {
    /// Inserts a new thread.
    InsertThread(ThreadRecord),
    /// Records a thread's progress. `error` is kept only if the thread has
    /// none yet, so the first failure stays.
    UpdateThread {
        /// The thread.
        thread_id: String,
        /// `running`, `done` or `failed`.
        status: String,
        /// The failure that ended or marked the thread.
        error: Option<String>,
        /// Number of task instances so far.
        task_count: i64,
        /// Unix milliseconds.
        at: i64,
    },
    /// Inserts a new live task.
    InsertTask(TaskRecord),
    /// Replaces a live task if it still has `expected_version`.
    ReplaceTask {
        /// The new row.
        record: TaskRecord,
        /// The version the change is based on.
        expected_version: i64,
    },
    /// Moves a task to the archive. With `expected_version` set, the live
    /// row must still have that version and is deleted. Without it, the
    /// task was never stored live because it finished as it started.
    ArchiveTask {
        /// The finished row; `updated_at` is its completion time.
        record: TaskRecord,
        /// The version of the live row the change is based on.
        expected_version: Option<i64>,
    },
    /// Inserts or replaces the output of a task id in a thread.
    PutOutput {
        /// The thread.
        thread_id: String,
        /// The task definition id.
        task_id: String,
        /// The instance that produced the output.
        instance_id: String,
        /// The output as JSON.
        output: String,
        /// Unix milliseconds.
        at: i64,
    },
    /// Records a plugin version being loaded or rejected.
    PluginVersion {
        /// Plugin name.
        name: String,
        /// Content hash.
        hash: String,
        /// `loaded` or `rejected`.
        status: String,
        /// The rejection reason.
        error: Option<String>,
        /// The version's exports, as JSON.
        exports: Option<String>,
        /// Unix milliseconds.
        at: i64,
    },
    /// Inserts a user.
    InsertUser(super::UserRecord),
    /// Inserts a group unless it exists.
    InsertGroup {
        /// The group.
        group_id: String,
        /// Unix milliseconds.
        at: i64,
    },
    /// Adds a user to a group, unless already a member.
    AddMember {
        /// The group.
        group_id: String,
        /// The user.
        user_id: String,
    },
    /// Inserts a token.
    InsertToken(super::TokenRecord),
    /// Replaces a user's profile fields (a JSON object).
    SetProfile {
        /// The user.
        user_id: String,
        /// The profile as JSON text.
        profile: String,
    },
    /// Revokes a token.
    RevokeToken {
        /// The token's public id.
        token_id: String,
        /// Unix milliseconds.
        at: i64,
    },
    /// Marks the loaded version of a plugin as ended: replaced by another
    /// hash, or unloaded when `replaced_by` is `None`.
    PluginEnded {
        /// Plugin name.
        name: String,
        /// Content hash of the version that ended.
        hash: String,
        /// Hash of its successor.
        replaced_by: Option<String>,
        /// Unix milliseconds.
        at: i64,
    },
}

/// Row changes that are committed together or not at all.
#[derive(Debug, Default, Clone)]
pub struct Transaction {
    writes: Vec<Write>,
}

impl Transaction {
    /// Returns an empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one change.
    pub fn push(&mut self, write: Write) {
        self.writes.push(write);
    }

    /// Returns the changes in order.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// Returns the changes in order, to adjust them before the commit.
    pub fn writes_mut(&mut self) -> &mut [Write] {
        &mut self.writes
    }

    /// Returns whether the transaction changes nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// The reason a transaction was not committed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A compare-and-swap failed: the task changed (or finished) since the
    /// caller read it. Nothing was written; read again and retry.
    #[error("task {instance_id} changed since version {expected_version}")]
    Conflict {
        /// The task whose version did not match.
        instance_id: String,
        /// The version the caller expected.
        expected_version: i64,
    },
    /// SQLite failed; nothing of the transaction was written.
    #[error("database write failed: {0}")]
    Database(String),
    /// The writer task has stopped (the hub is shutting down).
    #[error("the database writer has stopped")]
    Closed,
}

struct Job {
    transaction: Transaction,
    reply: oneshot::Sender<Result<(), WriteError>>,
}

/// The means to stop the writer task: the stop signal, and its handle to
/// wait on.
type WriterStop = (oneshot::Sender<()>, tokio::task::JoinHandle<()>);

/// Handle to the writer task.
#[derive(Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
    /// Closes the queue: the writer commits what is queued, then stops.
    close: Arc<Mutex<Option<WriterStop>>>,
}

impl Writer {
    /// Starts the writer task on `connection`, which it owns from now on.
    pub(super) fn spawn(connection: SqliteConnection) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let (close, closed) = oneshot::channel();
        let task = tokio::spawn(run(connection, queue, closed));
        Self {
            jobs,
            close: Arc::new(Mutex::new(Some((close, task)))),
        }
    }

    /// Commits every queued transaction, closes the connection, and
    /// returns once it is closed. Later commits fail with
    /// [`WriteError::Closed`].
    pub(super) async fn close(&self) {
        let taken = self.close.lock().expect("writer lock poisoned").take();
        if let Some((close, task)) = taken {
            let _ = close.send(());
            let _ = task.await;
        }
    }

    pub(super) async fn commit(&self, transaction: Transaction) -> Result<(), WriteError> {
        if transaction.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { transaction, reply })
            .await
            .map_err(|_| WriteError::Closed)?;
        answer.await.map_err(|_| WriteError::Closed)?
    }
}

async fn run(
    mut connection: SqliteConnection,
    mut queue: mpsc::Receiver<Job>,
    mut closed: oneshot::Receiver<()>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = false;
    loop {
        let received = if closing {
            queue.recv_many(&mut batch, MAX_BATCH).await
        } else {
            tokio::select! {
                received = queue.recv_many(&mut batch, MAX_BATCH) => received,
                _ = &mut closed => {
                    // Refuse new work, then commit what is already queued.
                    closing = true;
                    queue.close();
                    queue.recv_many(&mut batch, MAX_BATCH).await
                }
            }
        };
        if received == 0 {
            break;
        }
        let results = commit_batch(&mut connection, &batch).await;
        for (job, result) in batch.drain(..).zip(results) {
            // A caller that went away no longer needs the result.
            let _ = job.reply.send(result);
        }
    }
    if let Err(err) = connection.close().await {
        tracing::warn!(error = %err, "failed to close the database writer connection");
    }
}

/// Runs every job of the batch in one SQLite transaction and returns one
/// result per job.
///
/// A job whose only compare-and-swap is its first write runs without a
/// savepoint: if that write fails, nothing of the job was written. Should
/// any later write of such a job fail (which only a broken database
/// causes), the whole batch is rolled back and run again with a savepoint
/// around every job.
async fn commit_batch(
    connection: &mut SqliteConnection,
    batch: &[Job],
) -> Vec<Result<(), WriteError>> {
    match run_batch(connection, batch, false).await {
        Ok(results) => results,
        Err(BatchError::Retry) => match run_batch(connection, batch, true).await {
            Ok(results) => results,
            Err(BatchError::Retry) => unreachable!("a careful batch never asks for a retry"),
            Err(BatchError::Failed(message)) => fail_all(batch, message),
        },
        Err(BatchError::Failed(message)) => fail_all(batch, message),
    }
}

enum BatchError {
    /// A job failed half way without a savepoint; run the batch again
    /// with savepoints.
    Retry,
    /// The batch could not begin or commit.
    Failed(String),
}

fn fail_all(batch: &[Job], message: String) -> Vec<Result<(), WriteError>> {
    batch
        .iter()
        .map(|_| Err(WriteError::Database(message.clone())))
        .collect()
}

async fn run_batch(
    connection: &mut SqliteConnection,
    batch: &[Job],
    careful: bool,
) -> Result<Vec<Result<(), WriteError>>, BatchError> {
    // IMMEDIATE takes the write lock now, so a busy database makes this
    // wait on busy_timeout instead of failing half way through.
    if let Err(err) = connection.execute("BEGIN IMMEDIATE").await {
        tracing::error!(error = %err, "failed to begin a write transaction");
        return Err(BatchError::Failed(err.to_string()));
    }

    let started = std::time::Instant::now();
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let result = if careful || needs_savepoint(&job.transaction) {
            apply_isolated(connection, &job.transaction).await
        } else {
            match apply_unguarded(connection, &job.transaction).await {
                Unguarded::Done(result) => result,
                Unguarded::Dirty(err) => {
                    tracing::warn!(error = %err, "a write failed half way; running the batch again with savepoints");
                    let _ = connection.execute("ROLLBACK").await;
                    return Err(BatchError::Retry);
                }
            }
        };
        results.push(result);
    }

    if let Err(err) = connection.execute("COMMIT").await {
        tracing::error!(error = %err, batch = batch.len(), "failed to commit a write batch");
        let _ = connection.execute("ROLLBACK").await;
        return Err(BatchError::Failed(err.to_string()));
    }
    crate::metrics::write_batch(batch.len(), started.elapsed());
    Ok(results)
}

/// Whether a job needs a savepoint: it has a compare-and-swap after its
/// first write, which could fail after earlier writes were made.
fn needs_savepoint(transaction: &Transaction) -> bool {
    transaction.writes().iter().skip(1).any(|write| {
        matches!(
            write,
            Write::ReplaceTask { .. }
                | Write::ArchiveTask {
                    expected_version: Some(_),
                    ..
                }
        )
    })
}

enum Unguarded {
    /// The job committed, or failed at its first write with nothing written.
    Done(Result<(), WriteError>),
    /// A later write failed; the job is half written.
    Dirty(WriteError),
}

async fn apply_unguarded(
    connection: &mut SqliteConnection,
    transaction: &Transaction,
) -> Unguarded {
    for (index, write) in transaction.writes().iter().enumerate() {
        if let Err(err) = apply(connection, write).await {
            return if index == 0 {
                Unguarded::Done(Err(err))
            } else {
                Unguarded::Dirty(err)
            };
        }
    }
    Unguarded::Done(Ok(()))
}

/// Applies one transaction behind a savepoint and rolls it back alone if
/// any of its writes fails.
async fn apply_isolated(
    connection: &mut SqliteConnection,
    transaction: &Transaction,
) -> Result<(), WriteError> {
    let database_error = |err: sqlx::Error| WriteError::Database(err.to_string());
    connection
        .execute("SAVEPOINT job")
        .await
        .map_err(database_error)?;

    let mut outcome = Ok(());
    for write in transaction.writes() {
        outcome = apply(connection, write).await;
        if outcome.is_err() {
            break;
        }
    }

    if outcome.is_err() {
        connection
            .execute("ROLLBACK TO job")
            .await
            .map_err(database_error)?;
    }
    connection
        .execute("RELEASE job")
        .await
        .map_err(database_error)?;
    outcome
}

async fn apply(connection: &mut SqliteConnection, write: &Write) -> Result<(), WriteError> {
    let database_error = |err: sqlx::Error| WriteError::Database(err.to_string());
    match write {
        Write::InsertThread(thread) => {
            sqlx::query(
                "INSERT INTO threads (thread_id, start_task_id, status, error, user_id, \
                 group_id, mode, mode_key, task_count, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&thread.thread_id)
            .bind(&thread.start_task_id)
            .bind(&thread.status)
            .bind(&thread.error)
            .bind(&thread.user_id)
            .bind(&thread.group_id)
            .bind(&thread.mode)
            .bind(&thread.mode_key)
            .bind(thread.task_count)
            .bind(thread.created_at)
            .bind(thread.updated_at)
            .execute(&mut *connection)
            .await
            .map_err(database_error)?;
        }
        Write::UpdateThread {
            thread_id,
            status,
            error,
            task_count,
            at,
        } => {
            sqlx::query(
                "UPDATE threads SET status = ?, error = COALESCE(error, ?), \
                 task_count = MAX(task_count, ?), updated_at = ? WHERE thread_id = ?",
            )
            .bind(status)
            .bind(error)
            .bind(task_count)
            .bind(at)
            .bind(thread_id)
            .execute(&mut *connection)
            .await
            .map_err(database_error)?;
        }
        Write::InsertTask(task) => {
            sqlx::query(
                "INSERT INTO tasks (instance_id, thread_id, seq, task_id, status, environment, \
                 provider, version, after_failure, body, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&task.instance_id)
            .bind(&task.thread_id)
            .bind(task.seq)
            .bind(&task.task_id)
            .bind(&task.status)
            .bind(&task.environment)
            .bind(&task.provider)
            .bind(task.version)
            .bind(task.after_failure)
            .bind(&task.body)
            .bind(task.created_at)
            .bind(task.updated_at)
            .execute(&mut *connection)
            .await
            .map_err(database_error)?;
        }
        Write::ReplaceTask {
            record,
            expected_version,
        } => {
            let done = sqlx::query(
                "UPDATE tasks SET status = ?, environment = ?, provider = ?, version = ?, \
                 after_failure = ?, body = ?, updated_at = ? WHERE instance_id = ? AND version = ?",
            )
            .bind(&record.status)
            .bind(&record.environment)
            .bind(&record.provider)
            .bind(record.version)
            .bind(record.after_failure)
            .bind(&record.body)
            .bind(record.updated_at)
            .bind(&record.instance_id)
            .bind(expected_version)
            .execute(&mut *connection)
            .await
            .map_err(database_error)?;
            if done.rows_affected() != 1 {
                return Err(WriteError::Conflict {
                    instance_id: record.instance_id.clone(),
                    expected_version: *expected_version,
                });
            }
        }
        Write::ArchiveTask {
            record,
            expected_version,
        } => {
            if let Some(expected_version) = expected_version {
                let done = sqlx::query("DELETE FROM tasks WHERE instance_id = ? AND version = ?")
                    .bind(&record.instance_id)
                    .bind(expected_version)
                    .execute(&mut *connection)
                    .await
                    .map_err(database_error)?;
                if done.rows_affected() != 1 {
                    return Err(WriteError::Conflict {
                        instance_id: record.instance_id.clone(),
                        expected_version: *expected_version,
                    });
                }
            }
            sqlx::query(
                "INSERT INTO archive (instance_id, thread_id, seq, task_id, status, version, \
                 body, created_at, completed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&record.instance_id)
            .bind(&record.thread_id)
            .bind(record.seq)
            .bind(&record.task_id)
            .bind(&record.status)
            .bind(record.version)
            .bind(&record.body)
            .bind(record.created_at)
            .bind(record.updated_at)
            .execute(&mut *connection)
            .await
            .map_err(database_error)?;
        }
        Write::PutOutput {
            thread_id,
            task_id,
            instance_id,
            output,
            at,
        } => {
            sqlx::query(
                "INSERT INTO outputs (thread_id, task_id, instance_id, output, updated_at) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (thread_id, task_id) DO UPDATE SET \
                 instance_id = excluded.instance_id, output = excluded.output, \
                 updated_at = excluded.updated_at",
            )
            .bind(thread_id)
            .bind(task_id)
            .bind(instance_id)
            .bind(output)
            .bind(at)
            .execute(&mut *connection)
            .await
            .map_err(database_error)?;
        }
        Write::PluginVersion {
            name,
            hash,
            status,
            error,
            exports,
            at,
        } => {
            sqlx::query(
                "INSERT INTO plugin_versions (name, hash, status, error, exports, loaded_at) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name, hash) DO UPDATE SET \
                 status = excluded.status, error = excluded.error, \
                 exports = excluded.exports, loaded_at = excluded.loaded_at, \
                 ended_at = NULL, replaced_by = NULL",
            )
            .bind(name)
            .bind(hash)
            .bind(status)
            .bind(error)
            .bind(exports)
            .bind(at)
            .execute(&mut *connection)
            .await
            .map_err(database_error)?;
        }
        Write::InsertUser(user) => {
            sqlx::query(
                "INSERT INTO users (user_id, password_hash, profile, created_at) VALUES (?, ?, ?, ?)",
            )
            .bind(&user.user_id)
            .bind(&user.password_hash)
            .bind(&user.profile)
            .bind(user.created_at)
            .execute(&mut *connection)
            .await
            .map_err(database_error)?;
        }
        Write::InsertGroup { group_id, at } => {
            sqlx::query("INSERT OR IGNORE INTO groups (group_id, created_at) VALUES (?, ?)")
                .bind(group_id)
                .bind(at)
                .execute(&mut *connection)
                .await
                .map_err(database_error)?;
        }
        Write::AddMember { group_id, user_id } => {
            sqlx::query("INSERT OR IGNORE INTO group_members (group_id, user_id) VALUES (?, ?)")
                .bind(group_id)
                .bind(user_id)
                .execute(&mut *connection)
                .await
                .map_err(database_error)?;
        }
        Write::InsertToken(token) => {
            sqlx::query(
                "INSERT INTO tokens (token_id, user_id, kind, secret_hash, label, created_at, \
                 expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&token.token_id)
            .bind(&token.user_id)
            .bind(&token.kind)
            .bind(&token.secret_hash)
            .bind(&token.label)
            .bind(token.created_at)
            .bind(token.expires_at)
            .bind(token.revoked_at)
            .execute(&mut *connection)
            .await
            .map_err(database_error)?;
        }
        Write::SetProfile { user_id, profile } => {
            sqlx::query("UPDATE users SET profile = ? WHERE user_id = ?")
                .bind(profile)
                .bind(user_id)
                .execute(&mut *connection)
                .await
                .map_err(database_error)?;
        }
        Write::RevokeToken { token_id, at } => {
            sqlx::query(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE token_id = ?",
            )
            .bind(at)
            .bind(token_id)
            .execute(&mut *connection)
            .await
            .map_err(database_error)?;
        }
        Write::PluginEnded {
            name,
            hash,
            replaced_by,
            at,
        } => {
            let status = if replaced_by.is_some() {
                "replaced"
            } else {
                "unloaded"
            };
            sqlx::query(
                "UPDATE plugin_versions SET status = ?, ended_at = ?, replaced_by = ? \
                 WHERE name = ? AND hash = ?",
            )
            .bind(status)
            .bind(at)
            .bind(replaced_by)
            .bind(name)
            .bind(hash)
            .execute(&mut *connection)
            .await
            .map_err(database_error)?;
        }
    }
    Ok(())
}
