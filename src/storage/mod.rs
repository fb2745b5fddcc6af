//! SQLite storage: threads, live tasks, the archive, outputs and plugin
//! versions.
//!
//! Reads go through a pool of read-only connections. Every write goes
//! through one [`Writer`] task that commits batches of transactions (group
//! commit), so a caller's transaction is durable when its `commit` returns.
//! The database runs in WAL mode with `synchronous=FULL`: a commit reaches
//! the disk before its caller gets a result.
//!
//! This module knows rows, not rules: the task engine decides what to
//! write and hands over a [`Transaction`].

mod users;
mod writer;

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};

pub use users::{TokenRecord, UserRecord};
use writer::Writer;
pub use writer::{Transaction, Write, WriteError};

/// How long a connection waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

// Column lists as macros, so `concat!` builds each query as one literal
// and sqlx can see it contains no runtime data.
macro_rules! select_live {
    () => {
        "SELECT instance_id, thread_id, seq, task_id, status, environment, provider, version, \
         after_failure, body, created_at, updated_at FROM tasks"
    };
}
macro_rules! select_archive {
    () => {
        "SELECT instance_id, thread_id, seq, task_id, status, NULL AS environment, \
         NULL AS provider, version, 0 AS after_failure, body, created_at, \
         completed_at AS updated_at FROM archive"
    };
}
macro_rules! select_thread {
    () => {
        "SELECT thread_id, start_task_id, status, error, user_id, group_id, mode, mode_key, \
         task_count, created_at, updated_at FROM threads"
    };
}

/// Errors from opening the database or reading it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database could not be opened or migrated.
    #[error("failed to open database {path}: {source}")]
    Open {
        /// Path of the database file.
        path: String,
        /// The SQLite or sqlx error.
        source: anyhow::Error,
    },
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// The table a task row is in: live tasks may still change, archived ones
/// are finished and read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shelf {
    /// The `tasks` table.
    Live,
    /// The `archive` table.
    Archive,
}

/// One task instance as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// Primary key.
    pub instance_id: String,
    /// The thread the instance belongs to.
    pub thread_id: String,
    /// Position in the thread, from 1.
    pub seq: i64,
    /// Task definition id.
    pub task_id: String,
    /// Lifecycle status as text (`pending`, `dispatched`, `waiting`,
    /// `done`, `failed`).
    pub status: String,
    /// The environment the instance waits for or runs in.
    pub environment: Option<String>,
    /// The provider that runs a dispatched instance.
    pub provider: Option<String>,
    /// Version of the task, increased by every accepted update.
    pub version: i64,
    /// Whether the task runs after a failure in its thread. Always false
    /// for archived rows, which do not keep it.
    pub after_failure: bool,
    /// The task as JSON.
    pub body: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds; the completion time for archived rows.
    pub updated_at: i64,
}

/// One thread as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadRecord {
    /// Primary key.
    pub thread_id: String,
    /// The start task that began the thread.
    pub start_task_id: String,
    /// `running`, `done` or `failed`.
    pub status: String,
    /// First failure message of the thread.
    pub error: Option<String>,
    /// The user who started the thread.
    pub user_id: Option<String>,
    /// The group the thread runs for.
    pub group_id: Option<String>,
    /// The thread mode it was started in: `new`, `user`, `group` or
    /// `session`.
    pub mode: String,
    /// The user, group or session whose one thread it is, for the modes
    /// other than `new`.
    pub mode_key: Option<String>,
    /// Number of task instances so far.
    pub task_count: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// One recorded version of a plugin.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginVersionRecord {
    /// Content hash.
    pub hash: String,
    /// `loaded`, `rejected`, `replaced` or `unloaded`.
    pub status: String,
    /// Why it was rejected.
    pub error: Option<String>,
    /// Unix milliseconds it was loaded or rejected.
    pub loaded_at: i64,
    /// Unix milliseconds it stopped serving.
    pub ended_at: Option<i64>,
    /// The version that replaced it.
    pub replaced_by: Option<String>,
}

/// The database: a pool of readers and the one writer.
#[derive(Clone)]
pub struct Storage {
    readers: SqlitePool,
    writer: Writer,
}

impl Storage {
    /// Opens (creating if needed) the database at `path`, applies the
    /// migrations and starts the writer task.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be created or opened, is not a SQLite
    /// database, or contains a schema newer than this build supports.
    pub async fn open(path: &Path) -> Result<Self, StorageError> {
        let open_error = |source: anyhow::Error| StorageError::Open {
            path: path.display().to_string(),
            source,
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);

        let mut connection = options
            .clone()
            .create_if_missing(true)
            .connect()
            .await
            .map_err(|err| open_error(err.into()))?;
        sqlx::migrate!("./migrations")
            .run(&mut connection)
            .await
            .map_err(|err| open_error(err.into()))?;

        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options.read_only(true))
            .await
            .map_err(|err| open_error(err.into()))?;

        Ok(Self {
            readers,
            writer: Writer::spawn(connection),
        })
    }

    /// Commits `transaction` as one unit, batched with whatever else is
    /// waiting, and returns once it is on disk.
    ///
    /// # Errors
    ///
    /// [`WriteError::Conflict`] when a compare-and-swap in the transaction
    /// found another version (nothing of the transaction is written);
    /// [`WriteError::Database`] when SQLite failed.
    pub async fn commit(&self, transaction: Transaction) -> Result<(), WriteError> {
        self.writer.commit(transaction).await
    }

    /// Commits what is queued and closes every connection; SQLite
    /// checkpoints the WAL as the last one closes.
    pub async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }

    /// Checks that a read connection responds.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be read.
    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    /// Returns one task instance, live or archived.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn task(
        &self,
        instance_id: &str,
    ) -> Result<Option<(Shelf, TaskRecord)>, StorageError> {
        let live = sqlx::query(concat!(select_live!(), " WHERE instance_id = ?"))
            .bind(instance_id)
            .fetch_optional(&self.readers)
            .await?;
        if let Some(row) = live {
            return Ok(Some((Shelf::Live, task_from_row(&row)?)));
        }
        let archived = sqlx::query(concat!(select_archive!(), " WHERE instance_id = ?"))
            .bind(instance_id)
            .fetch_optional(&self.readers)
            .await?;
        archived
            .map(|row| Ok((Shelf::Archive, task_from_row(&row)?)))
            .transpose()
    }

    /// Returns every instance of a thread, in order, live and archived.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn thread_tasks(&self, thread_id: &str) -> Result<Vec<TaskRecord>, StorageError> {
        let rows = sqlx::query(concat!(
            "SELECT * FROM (",
            select_live!(),
            " WHERE thread_id = ?1 UNION ALL ",
            select_archive!(),
            " WHERE thread_id = ?1) ORDER BY seq"
        ))
        .bind(thread_id)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    /// Returns one thread.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn thread(&self, thread_id: &str) -> Result<Option<ThreadRecord>, StorageError> {
        let row = sqlx::query(concat!(select_thread!(), " WHERE thread_id = ?"))
            .bind(thread_id)
            .fetch_optional(&self.readers)
            .await?;
        row.as_ref().map(thread_from_row).transpose()
    }

    /// Returns up to `limit` threads, newest first, that began before the
    /// thread `before` (all threads when `before` is `None`).
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn threads(
        &self,
        limit: u32,
        before: Option<&ThreadRecord>,
    ) -> Result<Vec<ThreadRecord>, StorageError> {
        let rows = match before {
            Some(cursor) => {
                sqlx::query(concat!(
                    select_thread!(),
                    " WHERE (created_at, thread_id) < (?, ?) \
                     ORDER BY created_at DESC, thread_id DESC LIMIT ?"
                ))
                .bind(cursor.created_at)
                .bind(&cursor.thread_id)
                .bind(limit)
                .fetch_all(&self.readers)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    select_thread!(),
                    " ORDER BY created_at DESC, thread_id DESC LIMIT ?"
                ))
                .bind(limit)
                .fetch_all(&self.readers)
                .await?
            }
        };
        rows.iter().map(thread_from_row).collect()
    }

    /// Returns up to `limit` threads that `user_id` may see (their own, and
    /// the collaboration threads of `groups`), newest first, that began
    /// before the thread `before`.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn threads_of(
        &self,
        user_id: &str,
        groups: &[String],
        limit: u32,
        before: Option<&ThreadRecord>,
    ) -> Result<Vec<ThreadRecord>, StorageError> {
        let groups = serde_json::to_string(groups).expect("names serialize");
        let (created_at, thread_id) = match before {
            Some(cursor) => (cursor.created_at, cursor.thread_id.clone()),
            None => (i64::MAX, String::new()),
        };
        let rows = sqlx::query(concat!(
            select_thread!(),
            " WHERE (user_id = ?1 OR (mode = 'group' AND group_id IN \
             (SELECT value FROM json_each(?2)))) \
             AND (created_at, thread_id) < (?3, ?4) \
             ORDER BY created_at DESC, thread_id DESC LIMIT ?5"
        ))
        .bind(user_id)
        .bind(groups)
        .bind(created_at)
        .bind(if before.is_some() {
            thread_id
        } else {
            "\u{10FFFF}".to_owned()
        })
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(thread_from_row).collect()
    }

    /// Returns the latest output of every task id in a thread, as
    /// `(task id, output JSON)`.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn outputs(&self, thread_id: &str) -> Result<Vec<(String, String)>, StorageError> {
        let rows = sqlx::query("SELECT task_id, output FROM outputs WHERE thread_id = ?")
            .bind(thread_id)
            .fetch_all(&self.readers)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("task_id")?, row.try_get("output")?)))
            .collect()
    }

    /// Returns the latest output of `task_id` in a thread.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn output(
        &self,
        thread_id: &str,
        task_id: &str,
    ) -> Result<Option<String>, StorageError> {
        let row = sqlx::query("SELECT output FROM outputs WHERE thread_id = ? AND task_id = ?")
            .bind(thread_id)
            .bind(task_id)
            .fetch_optional(&self.readers)
            .await?;
        Ok(row.map(|row| row.try_get("output")).transpose()?)
    }

    /// Returns every recorded version of plugin `name`, newest first.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn plugin_versions(
        &self,
        name: &str,
    ) -> Result<Vec<PluginVersionRecord>, StorageError> {
        let rows = sqlx::query(
            "SELECT hash, status, error, loaded_at, ended_at, replaced_by FROM plugin_versions \
             WHERE name = ? ORDER BY loaded_at DESC",
        )
        .bind(name)
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PluginVersionRecord {
                    hash: row.try_get("hash")?,
                    status: row.try_get("status")?,
                    error: row.try_get("error")?,
                    loaded_at: row.try_get("loaded_at")?,
                    ended_at: row.try_get("ended_at")?,
                    replaced_by: row.try_get("replaced_by")?,
                })
            })
            .collect()
    }

    /// Returns the live tasks dispatched to `provider`.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn live_tasks_held_by(
        &self,
        provider: &str,
    ) -> Result<Vec<TaskRecord>, StorageError> {
        let rows = sqlx::query(concat!(
            select_live!(),
            " WHERE status = 'dispatched' AND provider = ? ORDER BY created_at"
        ))
        .bind(provider)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    /// Returns the number of pending tasks for each environment.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn pending_counts(&self) -> Result<Vec<(String, i64)>, StorageError> {
        let rows = sqlx::query(
            "SELECT COALESCE(environment, '') AS environment, COUNT(*) AS count \
             FROM tasks WHERE status = 'pending' GROUP BY environment",
        )
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("environment")?, row.try_get("count")?)))
            .collect()
    }

    /// Returns the pending tasks that last changed before `cutoff` (unix
    /// milliseconds), oldest first.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn pending_since_before(&self, cutoff: i64) -> Result<Vec<TaskRecord>, StorageError> {
        let rows = sqlx::query(concat!(
            select_live!(),
            " WHERE status = 'pending' AND updated_at < ? ORDER BY updated_at LIMIT 1000"
        ))
        .bind(cutoff)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    /// Returns the live tasks with one of `statuses`, oldest first, for
    /// resuming after a restart or when a provider appears.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn live_tasks(&self, statuses: &[&str]) -> Result<Vec<TaskRecord>, StorageError> {
        let mut records = Vec::new();
        for status in statuses {
            let rows = sqlx::query(concat!(
                select_live!(),
                " WHERE status = ? ORDER BY created_at, instance_id"
            ))
            .bind(status)
            .fetch_all(&self.readers)
            .await?;
            for row in &rows {
                records.push(task_from_row(row)?);
            }
        }
        Ok(records)
    }
}

fn task_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<TaskRecord, StorageError> {
    Ok(TaskRecord {
        instance_id: row.try_get("instance_id")?,
        thread_id: row.try_get("thread_id")?,
        seq: row.try_get("seq")?,
        task_id: row.try_get("task_id")?,
        status: row.try_get("status")?,
        environment: row.try_get("environment")?,
        provider: row.try_get("provider")?,
        version: row.try_get("version")?,
        after_failure: row.try_get("after_failure")?,
        body: row.try_get("body")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn thread_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<ThreadRecord, StorageError> {
    Ok(ThreadRecord {
        thread_id: row.try_get("thread_id")?,
        start_task_id: row.try_get("start_task_id")?,
        status: row.try_get("status")?,
        error: row.try_get("error")?,
        user_id: row.try_get("user_id")?,
        group_id: row.try_get("group_id")?,
        mode: row.try_get("mode")?,
        mode_key: row.try_get("mode_key")?,
        task_count: row.try_get("task_count")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(thread_id: &str) -> ThreadRecord {
        ThreadRecord {
            thread_id: thread_id.into(),
            start_task_id: "a.start".into(),
            status: "running".into(),
            error: None,
            user_id: None,
            group_id: None,
            mode: "new".into(),
            mode_key: None,
            task_count: 1,
            created_at: 1,
            updated_at: 1,
        }
    }

    fn task(thread_id: &str, instance_id: &str, version: i64) -> TaskRecord {
        TaskRecord {
            instance_id: instance_id.into(),
            thread_id: thread_id.into(),
            seq: 1,
            task_id: "a.start".into(),
            status: "waiting".into(),
            environment: Some("user".into()),
            provider: None,
            version,
            after_failure: false,
            body: format!("{{\"version\": {version}}}"),
            created_at: 1,
            updated_at: 1,
        }
    }

    async fn storage() -> (tempfile::TempDir, Storage) {
        let folder = tempfile::tempdir().unwrap();
        let storage = Storage::open(&folder.path().join("test.db")).await.unwrap();
        (folder, storage)
    }

    fn replace(record: TaskRecord, expected_version: i64) -> Transaction {
        let mut transaction = Transaction::new();
        transaction.push(Write::ReplaceTask {
            record,
            expected_version,
        });
        transaction
    }

    #[tokio::test]
    async fn committed_rows_are_readable() {
        let (_folder, storage) = storage().await;
        let mut transaction = Transaction::new();
        transaction.push(Write::InsertThread(thread("t1")));
        transaction.push(Write::InsertTask(task("t1", "i1", 1)));
        storage.commit(transaction).await.unwrap();

        let (shelf, record) = storage.task("i1").await.unwrap().unwrap();
        assert_eq!(shelf, Shelf::Live);
        assert_eq!(record, task("t1", "i1", 1));
        assert_eq!(storage.thread("t1").await.unwrap().unwrap(), thread("t1"));
    }

    #[tokio::test]
    async fn stale_version_conflicts_and_writes_nothing() {
        let (_folder, storage) = storage().await;
        let mut setup = Transaction::new();
        setup.push(Write::InsertThread(thread("t1")));
        setup.push(Write::InsertTask(task("t1", "i1", 1)));
        storage.commit(setup).await.unwrap();

        // The output write comes first, so a rollback must undo it too.
        let mut stale = Transaction::new();
        stale.push(Write::PutOutput {
            thread_id: "t1".into(),
            task_id: "a.start".into(),
            instance_id: "i1".into(),
            output: "{}".into(),
            at: 2,
        });
        stale.push(Write::ReplaceTask {
            record: task("t1", "i1", 3),
            expected_version: 2,
        });
        let error = storage.commit(stale).await.unwrap_err();
        assert!(
            matches!(
                error,
                WriteError::Conflict {
                    expected_version: 2,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(storage.task("i1").await.unwrap().unwrap().1.version, 1);
        assert!(storage.output("t1", "a.start").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn batched_transactions_fail_alone() {
        let (_folder, storage) = storage().await;
        let mut setup = Transaction::new();
        setup.push(Write::InsertThread(thread("t1")));
        for instance in ["i1", "i2", "i3"] {
            setup.push(Write::InsertTask(task("t1", instance, 1)));
        }
        storage.commit(setup).await.unwrap();

        // Sent together, these land in one batch; the middle one is stale.
        let (first, second, third) = tokio::join!(
            storage.commit(replace(task("t1", "i1", 2), 1)),
            storage.commit(replace(task("t1", "i2", 6), 5)),
            storage.commit(replace(task("t1", "i3", 2), 1)),
        );
        assert!(first.is_ok());
        assert!(matches!(second, Err(WriteError::Conflict { .. })));
        assert!(third.is_ok());
        assert_eq!(storage.task("i1").await.unwrap().unwrap().1.version, 2);
        assert_eq!(storage.task("i2").await.unwrap().unwrap().1.version, 1);
        assert_eq!(storage.task("i3").await.unwrap().unwrap().1.version, 2);
    }

    #[tokio::test]
    async fn archived_task_moves_shelves() {
        let (_folder, storage) = storage().await;
        let mut setup = Transaction::new();
        setup.push(Write::InsertThread(thread("t1")));
        setup.push(Write::InsertTask(task("t1", "i1", 1)));
        storage.commit(setup).await.unwrap();

        let mut done = task("t1", "i1", 2);
        done.status = "done".into();
        let mut archive = Transaction::new();
        archive.push(Write::ArchiveTask {
            record: done.clone(),
            expected_version: Some(1),
        });
        storage.commit(archive).await.unwrap();

        let (shelf, record) = storage.task("i1").await.unwrap().unwrap();
        assert_eq!(shelf, Shelf::Archive);
        assert_eq!(record.status, "done");
        assert!(storage.live_tasks(&["waiting"]).await.unwrap().is_empty());
        assert_eq!(storage.thread_tasks("t1").await.unwrap().len(), 1);

        // A second completion finds no live row.
        let mut again = Transaction::new();
        again.push(Write::ArchiveTask {
            record: done,
            expected_version: Some(2),
        });
        assert!(matches!(
            storage.commit(again).await,
            Err(WriteError::Conflict { .. })
        ));
    }

    #[tokio::test]
    async fn database_survives_reopen() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("test.db");
        {
            let storage = Storage::open(&path).await.unwrap();
            let mut transaction = Transaction::new();
            transaction.push(Write::InsertThread(thread("t1")));
            storage.commit(transaction).await.unwrap();
        }
        let storage = Storage::open(&path).await.unwrap();
        assert!(storage.thread("t1").await.unwrap().is_some());
    }
}
