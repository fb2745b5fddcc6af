//! The browser UI: one page and its script and style, compiled into the
//! binary, so the hub serves them itself and needs no network.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// The browser UI.
#[utoipa::path(
    get,
    path = "/",
    tag = "ui",
    responses((status = 200, description = "The UI's page", body = String, content_type = "text/html"))
)]
pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX)
}

/// The UI's script.
#[utoipa::path(
    get,
    path = "/ui/app.js",
    tag = "ui",
    responses((status = 200, description = "JavaScript", body = String, content_type = "text/javascript"))
)]
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The UI's style sheet.
#[utoipa::path(
    get,
    path = "/ui/app.css",
    tag = "ui",
    responses((status = 200, description = "CSS", body = String, content_type = "text/css"))
)]
pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The assets change with the binary; always ask again.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
