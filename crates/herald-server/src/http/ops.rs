//! Operations endpoints (no auth): health, readiness, metrics, the demo
//! page, the OpenAPI description.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ErrorBody;
use crate::node::Node;

/// The demo page, built from the SDK sources (clients/js) and embedded so
/// `cargo build` needs no Node.js.
const DEMO_PAGE: &str = include_str!("../../assets/realtime-demo.html");

/// The answer of `GET /health`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Health {
    /// Always `ok`.
    pub status: String,
    /// Whether the server runs in dev mode.
    pub dev: bool,
}

/// The answer of `GET /ready`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Readiness {
    /// `ready`, `shutting down` or `engine unavailable`.
    pub status: ReadyStatus,
}

/// Whether this node takes traffic.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub(crate) enum ReadyStatus {
    /// The engine is reachable.
    #[serde(rename = "ready")]
    Ready,
    /// The server is stopping.
    #[serde(rename = "shutting down")]
    ShuttingDown,
    /// The engine can't be reached.
    #[serde(rename = "engine unavailable")]
    EngineUnavailable,
}

/// `GET /health`: 200 while the process runs. `dev` tells the demo page
/// whether it may preset a dev-mode user (outside dev mode such a user is
/// refused with 1001, and the page connects anonymously instead).
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Liveness",
    responses(
        (status = 200, description = "The process runs", body = Health),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = ErrorBody),
    )
)]
pub(crate) async fn health(State(node): State<Arc<Node>>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        dev: node.config().dev,
    })
}

/// `GET /ready`: 200 when the engine is reachable, 503 otherwise.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    summary = "Readiness",
    responses(
        (status = 200, description = "The engine is reachable", body = Readiness),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = ErrorBody),
        (status = 503, description = "Shutting down, or the engine is unreachable", body = Readiness),
    )
)]
pub(crate) async fn ready(State(node): State<Arc<Node>>) -> Response {
    let status = if node.shutdown_token().is_cancelled() {
        ReadyStatus::ShuttingDown
    } else if node.ready().await {
        ReadyStatus::Ready
    } else {
        ReadyStatus::EngineUnavailable
    };
    let code = match status {
        ReadyStatus::Ready => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(Readiness { status })).into_response()
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses(
        (status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text"),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = ErrorBody),
    )
)]
pub(crate) async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.render_metrics(),
    )
        .into_response()
}

/// `GET /realtime-demo`
#[utoipa::path(
    get,
    path = "/realtime-demo",
    tag = "operations",
    summary = "The demo page",
    responses(
        (status = 200, description = "An HTML page using the SDK", body = String, content_type = "text/html"),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = ErrorBody),
    )
)]
pub(crate) async fn demo() -> Html<&'static str> {
    Html(DEMO_PAGE)
}

/// The OpenAPI description as served, rendered once when the router is built.
#[derive(Debug, Clone)]
pub(crate) struct OpenApiJson(pub(crate) Arc<str>);

/// `GET /api/openapi.json`: this API's OpenAPI 3.1 description, generated
/// from the router and the handlers' types (see `http::router`).
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operations",
    summary = "This OpenAPI description",
    responses(
        (status = 200, description = "OpenAPI 3.1", body = Object, content_type = "application/json"),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = ErrorBody),
    )
)]
pub(crate) async fn openapi(Extension(doc): Extension<OpenApiJson>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.to_string(),
    )
        .into_response()
}
