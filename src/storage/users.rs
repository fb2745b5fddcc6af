//! Users, groups, memberships and tokens: the rows behind authentication.

use sqlx::Row;

use super::{Storage, StorageError};

/// One user as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    /// Login name.
    pub user_id: String,
    /// argon2 PHC string of the password, if the user can log in.
    pub password_hash: Option<String>,
    /// JSON object of profile fields.
    pub profile: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// One token (API, processor or browser session) as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    /// Public part of the token.
    pub token_id: String,
    /// Whose token it is.
    pub user_id: String,
    /// `api`, `processor` or `session`.
    pub kind: String,
    /// argon2 PHC string of the secret part.
    pub secret_hash: String,
    /// The operator's note on what the token is for.
    pub label: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds; `None` never expires.
    pub expires_at: Option<i64>,
    /// Unix milliseconds it was revoked.
    pub revoked_at: Option<i64>,
}

impl Storage {
    /// Returns the number of users.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn user_count(&self) -> Result<i64, StorageError> {
        let row = sqlx::query("SELECT COUNT(*) AS count FROM users")
            .fetch_one(&self.readers)
            .await?;
        Ok(row.try_get("count")?)
    }

    /// Returns one user.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn user(&self, user_id: &str) -> Result<Option<UserRecord>, StorageError> {
        let row = sqlx::query(
            "SELECT user_id, password_hash, profile, created_at FROM users WHERE user_id = ?",
        )
        .bind(user_id)
        .fetch_optional(&self.readers)
        .await?;
        row.map(|row| {
            Ok(UserRecord {
                user_id: row.try_get("user_id")?,
                password_hash: row.try_get("password_hash")?,
                profile: row.try_get("profile")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .transpose()
    }

    /// Returns every user, by name.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn users(&self) -> Result<Vec<String>, StorageError> {
        let rows = sqlx::query("SELECT user_id FROM users ORDER BY user_id")
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(|row| Ok(row.try_get("user_id")?)).collect()
    }

    /// Returns whether a group exists.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn group_exists(&self, group_id: &str) -> Result<bool, StorageError> {
        let row = sqlx::query("SELECT 1 AS one FROM groups WHERE group_id = ?")
            .bind(group_id)
            .fetch_optional(&self.readers)
            .await?;
        Ok(row.is_some())
    }

    /// Returns the groups a user belongs to, by name.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn groups_of(&self, user_id: &str) -> Result<Vec<String>, StorageError> {
        let rows =
            sqlx::query("SELECT group_id FROM group_members WHERE user_id = ? ORDER BY group_id")
                .bind(user_id)
                .fetch_all(&self.readers)
                .await?;
        rows.iter()
            .map(|row| Ok(row.try_get("group_id")?))
            .collect()
    }

    /// Returns one token by its public id.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn token(&self, token_id: &str) -> Result<Option<TokenRecord>, StorageError> {
        let row = sqlx::query(
            "SELECT token_id, user_id, kind, secret_hash, label, created_at, expires_at, \
             revoked_at FROM tokens WHERE token_id = ?",
        )
        .bind(token_id)
        .fetch_optional(&self.readers)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Returns the running thread of start task `start_task_id` that
    /// belongs to `mode_key`, if there is one.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn running_thread_for(
        &self,
        start_task_id: &str,
        mode_key: &str,
    ) -> Result<Option<String>, StorageError> {
        let row = sqlx::query(
            "SELECT thread_id FROM threads WHERE start_task_id = ? AND mode_key = ? \
             AND status = 'running'",
        )
        .bind(start_task_id)
        .bind(mode_key)
        .fetch_optional(&self.readers)
        .await?;
        Ok(row.map(|row| row.try_get("thread_id")).transpose()?)
    }

    /// Returns the tokens of `user_id`, or of every user, newest first.
    /// Browser sessions are left out.
    ///
    /// # Errors
    ///
    /// Fails when the query fails.
    pub async fn tokens(&self, user_id: Option<&str>) -> Result<Vec<TokenRecord>, StorageError> {
        let rows = sqlx::query(
            "SELECT token_id, user_id, kind, secret_hash, label, created_at, expires_at, \
             revoked_at FROM tokens WHERE kind != 'session' AND (?1 IS NULL OR user_id = ?1) \
             ORDER BY created_at DESC, token_id",
        )
        .bind(user_id)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(token_from_row).collect()
    }
}

/// Reads a token from a row with every column of `tokens`.
fn token_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<TokenRecord, StorageError> {
    Ok(TokenRecord {
        token_id: row.try_get("token_id")?,
        user_id: row.try_get("user_id")?,
        kind: row.try_get("kind")?,
        secret_hash: row.try_get("secret_hash")?,
        label: row.try_get("label")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}
