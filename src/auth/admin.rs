//! Managing users, groups and tokens in the database: what `taskhub user`,
//! `taskhub group` and `taskhub token` do. They write the database
//! directly, so they work while the hub runs (SQLite serialises the
//! writes) and while it is stopped.

use anyhow::{Context, bail};
use serde_json::Value;

use super::secret;
use crate::engine::task::now_millis;
use crate::storage::{Storage, TokenRecord, Transaction, UserRecord, Write};

/// Minimum length of a password, in characters.
pub const MIN_PASSWORD: usize = 8;

/// Maximum length of a user or group name, in bytes.
pub const MAX_NAME: usize = 64;

/// Checks a user or group name: 1 to 64 letters, digits, `.`, `_`, `-`
/// or `@`.
///
/// # Errors
///
/// Says what is wrong with the name.
pub fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    if !is_valid_name(name) {
        bail!(
            "{what} name {name:?} is not valid: use 1 to {MAX_NAME} letters, digits, '.', '_', '-' or '@'"
        );
    }
    Ok(())
}

/// Returns whether `name` is a valid user or group name.
pub fn is_valid_name(name: &str) -> bool {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    !name.is_empty() && name.len() <= MAX_NAME && name.chars().all(valid_char)
}

/// Adds a user with an optional password (for the browser) and profile
/// fields (for `{{user.FIELD}}` templates).
///
/// # Errors
///
/// Fails on a bad name, a profile that is not a JSON object, a user that
/// exists, or a database failure.
pub async fn add_user(
    storage: &Storage,
    user_id: &str,
    password: Option<&str>,
    profile: Value,
) -> anyhow::Result<()> {
    check_name("user", user_id)?;
    if user_id == super::LOCAL_USER {
        bail!(
            "the user name {user_id:?} is reserved for dev mode's implicit user, who owns the threads \
             started before the first user existed; choose another name"
        );
    }
    if !profile.is_object() {
        bail!("the profile must be a JSON object such as {{\"name\": \"Ada\"}}, not {profile}");
    }
    if storage.user(user_id).await?.is_some() {
        bail!("user {user_id} already exists");
    }
    if password.is_some_and(str::is_empty) {
        bail!(
            "the password is empty; give one, or leave it out for a user who signs in with tokens only"
        );
    }
    if let Some(password) = password
        && password.chars().count() < MIN_PASSWORD
    {
        bail!(
            "the password has {} characters; use at least {MIN_PASSWORD}",
            password.chars().count()
        );
    }
    let password_hash = match password {
        Some(password) => {
            let password = password.to_owned();
            Some(tokio::task::spawn_blocking(move || secret::hash(&password)).await?)
        }
        None => None,
    };
    let mut transaction = Transaction::new();
    transaction.push(Write::InsertUser(UserRecord {
        user_id: user_id.to_owned(),
        password_hash,
        profile: profile.to_string(),
        created_at: now_millis(),
    }));
    storage
        .commit(transaction)
        .await
        .context("failed to store the user")?;
    Ok(())
}

/// Replaces a user's profile fields.
///
/// # Errors
///
/// Fails for an unknown user, a profile that is not a JSON object, or a
/// database failure.
pub async fn set_profile(storage: &Storage, user_id: &str, profile: Value) -> anyhow::Result<()> {
    if !profile.is_object() {
        bail!("the profile must be a JSON object such as {{\"name\": \"Ada\"}}, not {profile}");
    }
    if storage.user(user_id).await?.is_none() {
        bail!("no user {user_id}; add it first with `taskhub user add {user_id}`");
    }
    let mut transaction = Transaction::new();
    transaction.push(Write::SetProfile {
        user_id: user_id.to_owned(),
        profile: profile.to_string(),
    });
    storage
        .commit(transaction)
        .await
        .context("failed to store the profile")?;
    Ok(())
}

/// Adds a group and returns whether it is new; adding one that exists
/// does nothing.
///
/// # Errors
///
/// Fails on a bad name or a database failure.
pub async fn add_group(storage: &Storage, group_id: &str) -> anyhow::Result<bool> {
    check_name("group", group_id)?;
    if storage.group_exists(group_id).await? {
        return Ok(false);
    }
    let mut transaction = Transaction::new();
    transaction.push(Write::InsertGroup {
        group_id: group_id.to_owned(),
        at: now_millis(),
    });
    storage
        .commit(transaction)
        .await
        .context("failed to store the group")?;
    Ok(true)
}

/// Adds a user to a group; both must exist.
///
/// # Errors
///
/// Fails when either is unknown, or on a database failure.
pub async fn add_member(storage: &Storage, group_id: &str, user_id: &str) -> anyhow::Result<()> {
    if !storage.group_exists(group_id).await? {
        bail!("no group {group_id}; add it first with `taskhub group add {group_id}`");
    }
    if storage.user(user_id).await?.is_none() {
        bail!("no user {user_id}; add it first with `taskhub user add {user_id}`");
    }
    let mut transaction = Transaction::new();
    transaction.push(Write::AddMember {
        group_id: group_id.to_owned(),
        user_id: user_id.to_owned(),
    });
    storage
        .commit(transaction)
        .await
        .context("failed to store the membership")?;
    Ok(())
}

/// Creates an API token, or a processor token, for a user and returns the
/// credential. It is shown once: only its hash is stored.
///
/// # Errors
///
/// Fails for an unknown user or on a database failure.
pub async fn create_token(
    storage: &Storage,
    user_id: &str,
    processor: bool,
    label: Option<String>,
    expires_in_days: Option<f64>,
) -> anyhow::Result<String> {
    if storage.user(user_id).await?.is_none() {
        bail!("no user {user_id}; add it first with `taskhub user add {user_id}`");
    }
    let expires_at = match expires_in_days {
        Some(days) if !(days.is_finite() && days * 86_400.0 >= 1.0 && days <= 36_500.0) => {
            bail!(
                "--expires-in-days must be a number of days between one second (0.0000116) and \
                 100 years (36500), not {days}; leave it out for a token that never expires"
            )
        }
        Some(days) => Some(now_millis() + (days * 86_400_000.0) as i64),
        None => None,
    };
    let kind = if processor { "processor" } else { "api" };
    Ok(super::issue_token(storage, user_id, kind, label, expires_at).await?)
}

/// Revokes a token by its id (the part between `thk_` and the second
/// `_`) or by the whole credential.
///
/// # Errors
///
/// Fails for an unknown token or on a database failure.
pub async fn revoke_token(storage: &Storage, token: &str) -> anyhow::Result<TokenRecord> {
    // The whole token, `thk_<id>`, or the bare id.
    let token_id = secret::split(token).map_or_else(
        || token.strip_prefix(secret::PREFIX).unwrap_or(token),
        |(id, _)| id,
    );
    let Some(record) = storage.token(token_id).await? else {
        bail!("no token {token_id}; `taskhub token list` shows the ids");
    };
    let mut transaction = Transaction::new();
    transaction.push(Write::RevokeToken {
        token_id: token_id.to_owned(),
        at: now_millis(),
    });
    storage
        .commit(transaction)
        .await
        .context("failed to revoke the token")?;
    Ok(record)
}
