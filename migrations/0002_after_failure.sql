-- Whether a live task runs after a failure in its thread (it is an error
-- task, or follows one). A failure of such a task ends the thread instead
-- of starting another error task, and the thread ends as failed.
ALTER TABLE tasks ADD COLUMN after_failure INTEGER NOT NULL DEFAULT 0;
