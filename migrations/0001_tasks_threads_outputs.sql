-- Threads: one row per chain of task instances that a start request began.
CREATE TABLE threads (
    thread_id      TEXT PRIMARY KEY,
    start_task_id  TEXT NOT NULL,
    -- running, done or failed
    status         TEXT NOT NULL,
    -- first failure message of the thread, if any
    error          TEXT,
    user_id        TEXT,
    group_id       TEXT,
    -- number of task instances the thread has had so far
    task_count     INTEGER NOT NULL,
    -- unix milliseconds
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX threads_newest ON threads (created_at DESC, thread_id DESC);

-- Live tasks: every instance that is not finished yet. A finished instance
-- moves to `archive` in the transaction that finishes it.
CREATE TABLE tasks (
    instance_id    TEXT PRIMARY KEY,
    thread_id      TEXT NOT NULL REFERENCES threads (thread_id),
    -- position of the instance in its thread, from 1
    seq            INTEGER NOT NULL,
    task_id        TEXT NOT NULL,
    -- pending, dispatched or waiting
    status         TEXT NOT NULL,
    -- the environment the instance is waiting for or running in
    environment    TEXT,
    -- who holds a dispatched instance, e.g. `plugin:llm-mock`
    provider       TEXT,
    version        INTEGER NOT NULL,
    -- the whole task as JSON, as the API returns it
    body           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX tasks_by_thread ON tasks (thread_id, seq);
CREATE INDEX tasks_by_status ON tasks (status, environment);

-- Finished instances (done or failed), read-only.
CREATE TABLE archive (
    instance_id    TEXT PRIMARY KEY,
    thread_id      TEXT NOT NULL REFERENCES threads (thread_id),
    seq            INTEGER NOT NULL,
    task_id        TEXT NOT NULL,
    -- done or failed
    status         TEXT NOT NULL,
    version        INTEGER NOT NULL,
    body           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    completed_at   INTEGER NOT NULL
);
CREATE INDEX archive_by_thread ON archive (thread_id, seq);

-- The latest output of each task id in each thread, for templates and for
-- the `output` host function.
CREATE TABLE outputs (
    thread_id      TEXT NOT NULL REFERENCES threads (thread_id),
    task_id        TEXT NOT NULL,
    instance_id    TEXT NOT NULL,
    output         TEXT NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (thread_id, task_id)
);

-- Every plugin version the hub has loaded or rejected.
CREATE TABLE plugin_versions (
    name           TEXT NOT NULL,
    -- sha256 of the component file, hex
    hash           TEXT NOT NULL,
    -- loaded, rejected, replaced or unloaded
    status         TEXT NOT NULL,
    error          TEXT,
    -- JSON: what the version exports
    exports        TEXT,
    loaded_at      INTEGER NOT NULL,
    ended_at       INTEGER,
    -- hash of the version that replaced this one
    replaced_by    TEXT,
    PRIMARY KEY (name, hash)
);
