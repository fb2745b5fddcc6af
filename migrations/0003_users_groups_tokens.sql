-- People who use the hub. The password is an argon2 hash (PHC string);
-- the profile is JSON that templates read as `{{user.FIELD}}`.
CREATE TABLE users (
    user_id        TEXT PRIMARY KEY,
    password_hash  TEXT,
    profile        TEXT NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE TABLE groups (
    group_id       TEXT PRIMARY KEY,
    created_at     INTEGER NOT NULL
);

CREATE TABLE group_members (
    group_id       TEXT NOT NULL REFERENCES groups (group_id),
    user_id        TEXT NOT NULL REFERENCES users (user_id),
    PRIMARY KEY (group_id, user_id)
);

-- API tokens, processor tokens and browser sessions. A token is
-- `thk_<token_id>_<secret>`; only an argon2 hash of the secret is kept.
CREATE TABLE tokens (
    token_id       TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (user_id),
    -- api, processor or session
    kind           TEXT NOT NULL,
    secret_hash    TEXT NOT NULL,
    label          TEXT,
    created_at     INTEGER NOT NULL,
    -- unix milliseconds; NULL never expires
    expires_at     INTEGER,
    revoked_at     INTEGER
);
CREATE INDEX tokens_by_user ON tokens (user_id);

-- How a thread was started: `mode` is new, user, group or session, and
-- `mode_key` names the user, group or session whose thread it is. At most
-- one running thread per start task and key, so starting again rejoins it.
ALTER TABLE threads ADD COLUMN mode TEXT NOT NULL DEFAULT 'new';
ALTER TABLE threads ADD COLUMN mode_key TEXT;
CREATE UNIQUE INDEX threads_one_running_per_key
    ON threads (start_task_id, mode_key)
    WHERE mode_key IS NOT NULL AND status = 'running';
CREATE INDEX threads_by_user ON threads (user_id, created_at DESC);
CREATE INDEX threads_by_group ON threads (group_id, mode, created_at DESC);
