//! The HTTP surface (SPEC §5): server API, polling, operations, the demo page,
//! and the WebSocket upgrade, in one axum router.

pub(crate) mod api;
pub mod error;
pub(crate) mod ops;
pub(crate) mod poll;

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, Method};
use axum::routing::{get, post};
use axum::Router;
use herald_protocol::ErrorCode;
use tower_http::cors::{Any, CorsLayer};

use crate::node::Node;
use error::ApiError;

/// The whole router.
pub fn router(node: Arc<Node>) -> Router {
    // Browsers poll with a bearer token from other origins (the app's own
    // pages); tokens travel in headers, never cookies, so any origin may ask.
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::RETRY_AFTER]);
    Router::new()
        .route("/ws", get(crate::transport::ws::upgrade))
        .route("/api/websocket", get(api::status).post(api::control))
        .route(
            "/api/channels/{channel}/messages",
            get(poll::channel).post(api::publish_channel),
        )
        .route("/api/users/{user}/notifications", post(api::notify_user))
        .route("/api/batch", post(api::batch))
        .route("/api/venues/updates", get(poll::venue_updates))
        .route("/api/venues/{venue}/updates", get(poll::venue))
        .route("/api/venues/{venue}/vibe-checks", get(poll::vibe_checks))
        .route("/api/venues/{venue}/promotions", get(poll::promotions))
        .route("/api/notifications", get(poll::notifications))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/realtime-demo", get(ops::demo))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::BadRequest,
                "method not allowed",
            )
        })
        .layer(cors)
        .with_state(node)
}

/// The bearer credential of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, credential))
            if scheme.eq_ignore_ascii_case("bearer") && !credential.trim().is_empty() =>
        {
            Ok(Some(credential.trim()))
        }
        _ => Err(ApiError::unauthorized(
            "Authorization must be \"Bearer <credential>\"",
        )),
    }
}

/// Reads a JSON body: checks the content type and the size, then parses it.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadRequest,
            "Content-Type must be application/json",
        ));
    }
    let bytes: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::MessageTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!("body is not valid JSON for this endpoint: {e}"))
    })
}
