//! Operations endpoints (no auth): health, readiness, metrics, the demo page.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::node::Node;

/// The demo page, built from the SDK sources (clients/js) and embedded so
/// `cargo build` needs no Node.js.
const DEMO_PAGE: &str = include_str!("../../assets/realtime-demo.html");

/// `GET /health`: 200 while the process runs. `dev` tells the demo page
/// whether it may preset a dev-mode user (outside dev mode such a user is
/// refused with 1001, and the page connects anonymously instead).
pub(crate) async fn health(State(node): State<Arc<Node>>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "dev": node.config().dev}))
}

/// `GET /ready`: 200 when the engine is reachable, 503 otherwise.
pub(crate) async fn ready(State(node): State<Arc<Node>>) -> Response {
    if node.shutdown_token().is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        )
            .into_response();
    }
    if node.ready().await {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "engine unavailable"})),
        )
            .into_response()
    }
}

/// `GET /metrics`: Prometheus text format.
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
pub(crate) async fn demo() -> Html<&'static str> {
    Html(DEMO_PAGE)
}
