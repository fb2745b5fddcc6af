//! Authentication: users, groups, tokens and browser sessions.
//!
//! With no user in the database and a loopback address, the hub runs in
//! dev mode: every request acts as one implicit local user who may do
//! everything. On any other address the hub refuses to start without
//! users. Once a user exists, every API request must carry a bearer token
//! (`Authorization: Bearer thk_...`) or a session cookie from `POST
//! /api/session`.
//!
//! Tokens and sessions are `thk_<id>_<secret>`. Only an argon2 hash of the
//! secret is stored; a verified token is remembered for [`CACHE_TTL`] so
//! the slow hash runs once, not on every request. Revocation therefore
//! takes effect within that time.

pub mod admin;
pub mod secret;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::engine::task::now_millis;
use crate::storage::{
    Storage, StorageError, TokenRecord, Transaction, UserRecord, Write, WriteError,
};

/// How long a verified token or session is trusted before it is checked
/// against the database again (revocation, expiry).
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// How often dev mode looks for a first user, which ends it.
pub const DEV_CHECK: Duration = Duration::from_secs(1);

/// How long a browser session lasts.
pub const SESSION_LENGTH: Duration = Duration::from_secs(12 * 3600);

/// The default of [`RateLimits::failures_per_minute`].
pub const FAILURES_PER_MINUTE: u32 = 10;

/// The user id of dev mode.
pub const LOCAL_USER: &str = "local";

/// Members of this group may change plugins (rollback).
pub const ADMIN_GROUP: &str = "admin";

/// The user a request acts for, with their groups and profile.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    /// The user.
    pub user_id: String,
    /// The groups the user belongs to.
    pub groups: Vec<String>,
    /// Profile fields, for `{{user.FIELD}}` templates.
    #[schema(value_type = Object)]
    pub profile: Value,
    /// `dev`, `token`, `processor` or `session`.
    pub via: &'static str,
    /// The token or session id, for rate limits and logout.
    #[serde(skip)]
    pub credential: Option<String>,
}

impl Principal {
    /// Returns whether the principal is dev mode's implicit user, who may
    /// do everything.
    pub fn is_dev(&self) -> bool {
        self.via == "dev"
    }

    /// Returns whether the principal may change plugins.
    pub fn is_admin(&self) -> bool {
        self.is_dev() || self.groups.iter().any(|group| group == ADMIN_GROUP)
    }

    /// Returns whether the principal belongs to `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|member_of| member_of == group)
    }
}

/// The reason a request was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential came with the request.
    #[error(
        "this hub needs a login: send `Authorization: Bearer TOKEN`, or log in with POST /api/session"
    )]
    Missing,
    /// The credential is unknown, wrong, revoked or expired.
    #[error("the token or session is invalid, revoked or expired")]
    Invalid,
    /// The user name or password is wrong.
    #[error("wrong user name or password")]
    WrongPassword,
    /// Too many failed logins or wrong tokens for this user name or from
    /// this address.
    #[error("too many failed logins or wrong tokens; try again in {} s", .0.as_secs().max(1))]
    TooManyAttempts(Duration),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The database could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// A verified credential, remembered for [`CACHE_TTL`].
#[derive(Clone)]
struct Verified {
    principal: Principal,
    expires_at: Option<i64>,
    checked: Instant,
}

/// Authentication and rate limits.
pub struct Auth {
    storage: Storage,
    /// Dev mode; ends for good when the first user is added.
    dev: AtomicBool,
    /// When dev mode last looked for users.
    dev_checked: Mutex<Instant>,
    verified: Mutex<HashMap<[u8; 32], Verified>>,
    limiter: DefaultKeyedRateLimiter<String>,
    /// Failed logins per client address and per user name, and wrong
    /// secrets per token id.
    failures: Throttle,
    /// Permits for argon2 runs, one per core. Each run takes 19 MiB (the
    /// crate's default cost) and a core for about 13 ms (measured by
    /// `cargo bench --bench plugin_call -- "token check"`), so a flood of
    /// logins or made-up tokens waits here instead of exhausting memory.
    hashing: tokio::sync::Semaphore,
}

/// Rate limits on starts and updates, per user and per token.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// Requests a second, on average.
    pub per_second: u32,
    /// Requests at once.
    pub burst: u32,
    /// Failed logins from one client address or for one user name, and
    /// wrong secrets for one token id, allowed per minute. Past it, further
    /// attempts are rejected with 429 before any hashing.
    pub failures_per_minute: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_second: 20,
            burst: 100,
            failures_per_minute: FAILURES_PER_MINUTE,
        }
    }
}

impl Auth {
    /// Decides the mode from the users in the database and the address.
    ///
    /// # Errors
    ///
    /// Fails on a non-loopback address with no user, naming the command
    /// that adds one.
    pub async fn new(
        storage: Storage,
        listen: SocketAddr,
        limits: RateLimits,
    ) -> anyhow::Result<Self> {
        let users = storage.user_count().await?;
        let dev = users == 0;
        if dev && !listen.ip().is_loopback() {
            anyhow::bail!(
                "the hub listens on {listen}, which is not a loopback address, and no user exists; \
                 add one with `taskhub user add NAME` (and a token with `taskhub token create NAME`), \
                 or listen on 127.0.0.1"
            );
        }
        if dev {
            tracing::warn!("no users: dev mode, every request acts as the implicit local user");
        }
        let per_second = NonZeroU32::new(limits.per_second.max(1)).expect("at least 1");
        let burst = NonZeroU32::new(limits.burst.max(1)).expect("at least 1");
        Ok(Self {
            storage,
            dev: AtomicBool::new(dev),
            dev_checked: Mutex::new(Instant::now()),
            verified: Mutex::new(HashMap::new()),
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            failures: Throttle::new(limits.failures_per_minute),
            hashing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            ),
        })
    }

    /// Returns whether the hub runs in dev mode.
    pub fn is_dev(&self) -> bool {
        self.dev.load(Ordering::Acquire)
    }

    /// Ends dev mode once a user exists (added with the CLI while the hub
    /// runs), and returns whether the hub is still in dev mode. Looks for
    /// users at most once per [`DEV_CHECK`].
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be read.
    pub async fn refresh_dev(&self) -> Result<bool, AuthError> {
        if !self.is_dev() {
            return Ok(false);
        }
        {
            let mut checked = self.dev_checked.lock().expect("auth clock poisoned");
            if checked.elapsed() < DEV_CHECK {
                return Ok(true);
            }
            *checked = Instant::now();
        }
        if self.storage.user_count().await? > 0 {
            self.dev.store(false, Ordering::Release);
            tracing::info!("a user exists: dev mode ended, requests now need a token or a session");
            return Ok(false);
        }
        Ok(true)
    }

    /// Returns the principal of dev mode.
    pub fn dev_principal() -> Principal {
        Principal {
            user_id: LOCAL_USER.into(),
            groups: Vec::new(),
            profile: json!({"id": LOCAL_USER, "name": "Local user"}),
            via: "dev",
            credential: None,
        }
    }

    /// Authenticates a request from its bearer token or session cookie.
    ///
    /// # Errors
    ///
    /// [`AuthError::Missing`] or [`AuthError::Invalid`].
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        session: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<Principal, AuthError> {
        if self.refresh_dev().await? {
            return Ok(Self::dev_principal());
        }
        let (credential, kinds): (&str, &[&str]) = match (bearer, session) {
            (Some(token), _) => (token, &["api"]),
            (None, Some(session)) => (session, &["session"]),
            (None, None) => return Err(AuthError::Missing),
        };
        self.verify(credential, kinds, client).await
    }

    /// Authenticates a processor's `register` token: a processor token of
    /// a user.
    ///
    /// # Errors
    ///
    /// [`AuthError::Invalid`] for anything else.
    pub async fn authenticate_processor(
        &self,
        token: &str,
        client: Option<IpAddr>,
    ) -> Result<Principal, AuthError> {
        self.verify(token, &["processor"], client).await
    }

    async fn verify(
        &self,
        credential: &str,
        kinds: &[&str],
        client: Option<IpAddr>,
    ) -> Result<Principal, AuthError> {
        let key: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
        let now = now_millis();
        let cached = self
            .verified
            .lock()
            .expect("auth cache poisoned")
            .get(&key)
            .cloned();
        // This exact credential passed before, so it is its holder's.
        let known_good = cached.is_some();
        if let Some(verified) = cached
            && verified.checked.elapsed() < CACHE_TTL
            && verified.expires_at.is_none_or(|at| at > now)
            && kinds.contains(&verified.principal.via_kind())
        {
            return Ok(verified.principal);
        }

        // Malformed credentials and unknown ids cost a lookup, not a hash.
        let (token_id, secret_part) = secret::split(credential).ok_or(AuthError::Invalid)?;
        let record = self
            .storage
            .token(token_id)
            .await?
            .ok_or(AuthError::Invalid)?;
        if !kinds.contains(&record.kind.as_str())
            || record.revoked_at.is_some()
            || record.expires_at.is_some_and(|at| at <= now)
        {
            return Err(AuthError::Invalid);
        }
        // Guessing the secret of a known id costs a hash each time, so
        // after a few wrong secrets that id takes only credentials that
        // passed before, until its budget refills.
        let throttle_key = format!("token:{token_id}");
        if !known_good && let Some(wait) = self.failures.blocked(&throttle_key) {
            return Err(AuthError::TooManyAttempts(wait));
        }
        let hash = record.secret_hash.clone();
        let secret_part = secret_part.to_owned();
        let matches = self
            .hash_work(move || secret::verify(&secret_part, &hash))
            .await;
        if !matches {
            tracing::warn!(token_id, client = ?client, "wrong secret for a token");
            self.failures.fail(&throttle_key);
            return Err(AuthError::Invalid);
        }
        let principal = self
            .principal(
                &record.user_id,
                via_of(&record.kind),
                Some(record.token_id.clone()),
            )
            .await?;
        self.verified.lock().expect("auth cache poisoned").insert(
            key,
            Verified {
                principal: principal.clone(),
                expires_at: record.expires_at,
                checked: Instant::now(),
            },
        );
        Ok(principal)
    }

    /// Returns whether the token with id `token_id` exists and is neither
    /// revoked nor expired. Reads the database and hashes nothing, so it
    /// is cheap enough to ask on every processor heartbeat.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be read.
    pub async fn is_active(&self, token_id: &str) -> Result<bool, AuthError> {
        let now = now_millis();
        Ok(self.storage.token(token_id).await?.is_some_and(|record| {
            record.revoked_at.is_none() && record.expires_at.is_none_or(|at| at > now)
        }))
    }

    /// Checks a user's password and opens a browser session. Returns the
    /// session credential for the cookie and the principal.
    ///
    /// # Errors
    ///
    /// [`AuthError::WrongPassword`] for an unknown user or a wrong
    /// password (the same error, so names do not leak).
    pub async fn login(
        &self,
        user_id: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<(String, Principal), AuthError> {
        let address = format!("address:{client}");
        if let Some(wait) = self.failures.blocked(&address) {
            tracing::warn!(%client, "login rejected: too many failed attempts from this address");
            return Err(AuthError::TooManyAttempts(wait));
        }
        if !admin::is_valid_name(user_id) {
            // No user can have this name, so it is not worth a hash. It is
            // not logged either, because it may be a password typed into
            // the name field.
            self.failures.fail(&address);
            tracing::warn!(%client, "login failed: invalid user name");
            return Err(AuthError::WrongPassword);
        }
        let name = format!("user:{user_id}");
        if let Some(wait) = self.failures.blocked(&name) {
            tracing::warn!(user_id, %client, "login rejected: too many failed attempts for this user");
            return Err(AuthError::TooManyAttempts(wait));
        }
        let user = self.storage.user(user_id).await?;
        let hash = user.and_then(|user| user.password_hash);
        let password = password.to_owned();
        let matches = self
            .hash_work(move || match hash {
                Some(hash) => secret::verify(&password, &hash),
                None => {
                    // Spend the same time as a real check, so timing does
                    // not tell which user names exist.
                    let _ = secret::hash(&password);
                    false
                }
            })
            .await;
        if !matches {
            self.failures.fail(&address);
            self.failures.fail(&name);
            tracing::warn!(user_id, %client, "login failed: wrong user name or password");
            return Err(AuthError::WrongPassword);
        }
        let expires = now_millis() + SESSION_LENGTH.as_millis() as i64;
        let credential = self.issue(user_id, "session", None, Some(expires)).await?;
        let principal = self.verify(&credential, &["session"], None).await?;
        tracing::info!(user_id, "logged in");
        Ok((credential, principal))
    }

    /// Ends a browser session.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be written.
    pub async fn logout(&self, principal: &Principal) -> Result<(), AuthError> {
        if let Some(token_id) = &principal.credential {
            let mut transaction = Transaction::new();
            transaction.push(Write::RevokeToken {
                token_id: token_id.clone(),
                at: now_millis(),
            });
            self.storage.commit(transaction).await?;
        }
        self.verified
            .lock()
            .expect("auth cache poisoned")
            .retain(|_, verified| verified.principal.credential != principal.credential);
        tracing::info!(user_id = %principal.user_id, "logged out");
        Ok(())
    }

    /// Creates a token of `kind` for `user_id` and returns it; it is shown
    /// once and stored only as a hash.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be written.
    pub async fn issue(
        &self,
        user_id: &str,
        kind: &str,
        label: Option<String>,
        expires_at: Option<i64>,
    ) -> Result<String, AuthError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .expect("the semaphore is never closed");
        issue_token(&self.storage, user_id, kind, label, expires_at).await
    }

    /// Takes one request from the rate budget of the principal's user and
    /// credential; returns how long to wait when there is none left.
    pub fn check_rate(&self, principal: &Principal) -> Result<(), Duration> {
        if principal.is_dev() {
            return Ok(());
        }
        let limiter = &self.limiter;
        if limiter.len() > 10_000 {
            // Forget keys whose budget is full again (ended sessions).
            limiter.retain_recent();

            self.verified
                .lock()
                .expect("auth cache poisoned")
                .retain(|_, verified| verified.checked.elapsed() < CACHE_TTL);
        }
        let mut keys = vec![format!("user:{}", principal.user_id)];
        if let Some(credential) = &principal.credential {
            keys.push(format!("token:{credential}"));
        }
        for key in keys {
            if let Err(not_until) = limiter.check_key(&key) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(wait);
            }
        }
        Ok(())
    }

    /// Runs argon2 work on the blocking pool, a few at a time.
    async fn hash_work<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let _permit = self
            .hashing
            .acquire()
            .await
            .expect("the semaphore is never closed");
        tokio::task::spawn_blocking(work)
            .await
            .expect("argon2 does not panic")
    }

    async fn principal(
        &self,
        user_id: &str,
        via: &'static str,
        credential: Option<String>,
    ) -> Result<Principal, AuthError> {
        let user = self
            .storage
            .user(user_id)
            .await?
            .ok_or(AuthError::Invalid)?;
        Ok(Principal {
            user_id: user_id.to_owned(),
            groups: self.storage.groups_of(user_id).await?,
            profile: profile(&user),
            via,
            credential,
        })
    }
}

impl Principal {
    fn via_kind(&self) -> &str {
        match self.via {
            "token" => "api",
            other => other,
        }
    }
}

fn via_of(kind: &str) -> &'static str {
    match kind {
        "session" => "session",
        "processor" => "processor",
        _ => "token",
    }
}

/// Failed attempts per key (a client address or a user name). A key past
/// its budget is blocked until the budget refills.
struct Throttle {
    failures: DefaultKeyedRateLimiter<String>,
    blocked: Mutex<HashMap<String, Instant>>,
}

impl Throttle {
    fn new(per_minute: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute.max(1)).expect("at least 1");
        Self {
            failures: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(per_minute)),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// Returns how much longer `key` is blocked, if it is.
    fn blocked(&self, key: &str) -> Option<Duration> {
        let blocked = self.blocked.lock().expect("throttle poisoned");
        blocked
            .get(key)
            .and_then(|until| until.checked_duration_since(Instant::now()))
    }

    /// Counts a failure of `key`, and blocks it once it is past its budget.
    fn fail(&self, key: &str) {
        if let Err(not_until) = self.failures.check_key(&key.to_owned()) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            tracing::warn!(
                key,
                blocked_ms = wait.as_millis() as u64,
                "too many failed attempts; rejecting more for a while"
            );
            let mut blocked = self.blocked.lock().expect("throttle poisoned");
            if blocked.len() >= 10_000 {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(key.to_owned(), Instant::now() + wait);
        }
        if self.failures.len() >= 10_000 {
            self.failures.retain_recent();
        }
    }
}

/// Returns a user's profile fields with `id` set to the user name.
pub fn profile(user: &UserRecord) -> Value {
    let mut profile: Value = serde_json::from_str(&user.profile).unwrap_or_else(|_| json!({}));
    if let Value::Object(fields) = &mut profile {
        fields.insert("id".into(), json!(user.user_id));
    }
    profile
}

/// Creates a token and stores its hash; used by the hub and the CLI.
///
/// # Errors
///
/// Fails when the database cannot be written.
pub async fn issue_token(
    storage: &Storage,
    user_id: &str,
    kind: &str,
    label: Option<String>,
    expires_at: Option<i64>,
) -> Result<String, AuthError> {
    let (token_id, secret_part, credential) = secret::new_token();
    let hash = tokio::task::spawn_blocking(move || secret::hash(&secret_part))
        .await
        .expect("hashing does not panic");
    let mut transaction = Transaction::new();
    transaction.push(Write::InsertToken(TokenRecord {
        token_id,
        user_id: user_id.to_owned(),
        kind: kind.to_owned(),
        secret_hash: hash,
        label,
        created_at: now_millis(),
        expires_at,
        revoked_at: None,
    }));
    storage.commit(transaction).await?;
    Ok(credential)
}
