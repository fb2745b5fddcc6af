//! Authentication at the HTTP edge: the [`Caller`] extractor, the session
//! routes the browser logs in and out with, and the access rules for
//! threads.

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use super::body::JsonBody;
use super::error::ApiError;
use super::schema::ErrorBody;
use crate::auth::{AuthError, Principal, SESSION_LENGTH};
use crate::storage::ThreadRecord;

/// Name of the browser session cookie.
pub const SESSION_COOKIE: &str = "taskhub_session";

/// The authenticated caller of a request.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let bearer = bearer(&parts.headers);
        let client = parts
            .extensions
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|ConnectInfo(address)| address.ip());
        let session = cookie(&parts.headers, SESSION_COOKIE);
        state
            .auth
            .authenticate(bearer.as_deref(), session.as_deref(), client)
            .await
            .map(Caller)
            .map_err(unauthorized)
    }
}

/// Turns an authentication failure into a 401 (or a 500 for a database
/// failure).
pub fn unauthorized(error: AuthError) -> ApiError {
    match error {
        AuthError::Storage(err) => ApiError::internal(&err),
        AuthError::Write(err) => ApiError::internal(&err),
        AuthError::TooManyAttempts(wait) => retry_later(
            wait,
            "too_many_failures",
            "too many failed logins or wrong tokens",
        ),
        other => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", other.to_string())
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")),
    }
}

/// Takes one request from the caller's rate budget, or returns a 429
/// error with a `Retry-After` header.
pub fn check_rate(state: &AppState, caller: &Principal) -> Result<(), ApiError> {
    state.auth.check_rate(caller).map_err(|wait| {
        tracing::warn!(user_id = %caller.user_id, retry_after_ms = wait.as_millis() as u64, "rate limit reached");
        retry_later(wait, "rate_limited", "too many starts and updates")
    })
}

/// Builds a 429 error that gives the wait in the message and in
/// `Retry-After`.
fn retry_later(wait: std::time::Duration, code: &'static str, what: &str) -> ApiError {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        code,
        format!("{what}; try again in {seconds} s"),
    )
    .with_header(
        header::RETRY_AFTER,
        HeaderValue::from_str(&seconds.to_string()).expect("digits are a valid header"),
    )
}

/// Returns whether `caller` may read and update `thread`: their own
/// threads, and the shared (`group` mode) threads of their groups. Dev
/// mode may access every thread.
pub fn can_access(caller: &Principal, thread: &ThreadRecord) -> bool {
    caller.is_dev()
        || thread.user_id.as_deref() == Some(caller.user_id.as_str())
        || (thread.mode == "group"
            && thread
                .group_id
                .as_deref()
                .is_some_and(|group| caller.in_group(group)))
}

/// Logs a rejected access and returns a 404 error for it, so ids of other
/// people's threads do not leak.
pub fn hidden(caller: &Principal, what: &str, id: &str) -> ApiError {
    tracing::warn!(user_id = %caller.user_id, resource = what, id, "access rejected");
    ApiError::not_found(format!("no {what} {id}"))
}

/// Body of `POST /api/session`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Login {
    /// The user name.
    pub user_id: String,
    /// The password.
    pub password: String,
}

/// Returns who the request acts for.
#[utoipa::path(
    get,
    path = "/api/session",
    tag = "session",
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "The caller", body = Principal),
        (status = 401, description = "Not logged in", body = ErrorBody),
    )
)]
pub async fn me(Caller(caller): Caller) -> Json<Principal> {
    Json(caller)
}

/// Logs in with a user name and password and sets the session cookie
/// (HttpOnly, SameSite=Strict, Secure).
#[utoipa::path(
    post,
    path = "/api/session",
    tag = "session",
    request_body = Login,
    responses(
        (status = 200, description = "Logged in; the cookie is set", body = Principal),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 401, description = "Wrong user name or password", body = ErrorBody),
        (status = 429, description = "Too many login attempts for the name or from the address; see Retry-After", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not `application/json`", body = ErrorBody),
        (status = 422, description = "Not a login", body = ErrorBody),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let invalid = |reason: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_login",
            format!("a login is {{\"userId\": \"...\", \"password\": \"...\"}}: {reason}"),
        )
    };
    if !body.is_object() {
        return Err(invalid(format!(
            "got {}",
            crate::engine::merge::json_kind(&body)
        )));
    }
    let login: Login = serde_json::from_value(body).map_err(|err| invalid(err.to_string()))?;
    if state.auth.is_dev() {
        return Ok(Json(crate::auth::Auth::dev_principal()).into_response());
    }
    let (credential, principal) = state
        .auth
        .login(&login.user_id, &login.password, client.ip())
        .await
        .map_err(unauthorized)?;
    let cookie = format!(
        "{SESSION_COOKIE}={credential}; Path=/; HttpOnly; SameSite=Strict{}; Max-Age={}",
        secure(&headers),
        SESSION_LENGTH.as_secs()
    );
    Ok((
        [(
            header::SET_COOKIE,
            HeaderValue::from_str(&cookie).expect("the cookie is ASCII"),
        )],
        Json(principal),
    )
        .into_response())
}

/// Logs out: ends the session and clears the cookie.
#[utoipa::path(
    delete,
    path = "/api/session",
    tag = "session",
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Not logged in", body = ErrorBody),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    if caller.via == "session" {
        state.auth.logout(&caller).await.map_err(unauthorized)?;
    }
    let cleared = format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict{}; Max-Age=0",
        secure(&headers)
    );
    Ok((
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            HeaderValue::from_str(&cleared).expect("the cookie is ASCII"),
        )],
    )
        .into_response())
}

/// The cookie's `Secure` attribute, set when the browser reached the hub
/// over HTTPS through a proxy (`X-Forwarded-Proto: https`) or on a
/// loopback host, which browsers treat as secure. A browser would drop a
/// `Secure` cookie sent over plain HTTP to any other host, so there the
/// attribute is left out. Put a TLS proxy in front of such a hub.
fn secure(headers: &HeaderMap) -> &'static str {
    let header = |name| {
        headers
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
    };
    let https =
        header("x-forwarded-proto").is_some_and(|proto| proto.eq_ignore_ascii_case("https"));
    let loopback = header("host").is_some_and(|host| {
        let name = host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        });
        name == "localhost"
            || name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if https || loopback { "; Secure" } else { "" }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}
