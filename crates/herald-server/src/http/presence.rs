//! Presence over HTTP (SPEC §11): who is in a channel, how many, and
//! whether a user is online. Cluster-wide on the redis engine.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use herald_protocol::{validate_channel, validate_user_id};
use serde::Serialize;
use utoipa::ToSchema;

use super::bearer;
use super::error::{ApiError, ErrorBody};
use super::extract::{ChannelPath, SegmentPath};
use super::poll_limit::PollGate;
use crate::node::Node;
use crate::presence::MAX_LISTED;

/// One client in a channel.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PresenceEntry {
    /// The client id (as told in `connected`).
    client: String,
    /// The user id; `""` for an anonymous client.
    user: String,
    /// The token's `info` claim (an object of at most 1 KiB), or null.
    #[schema(value_type = Option<Object>)]
    info: Option<serde_json::Value>,
}

/// The answer of `GET /api/channels/{channel}/presence`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PresenceBody {
    channel: String,
    /// At most 1000 entries.
    clients: Vec<PresenceEntry>,
    /// Distinct users subscribed (anonymous clients not counted); exact.
    users: u64,
    /// Clients subscribed; exact.
    total: u64,
}

/// The answer of `GET /api/channels/{channel}/presence/stats`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PresenceStatsBody {
    channel: String,
    /// Clients subscribed.
    clients: u64,
    /// Distinct users subscribed (anonymous clients not counted).
    users: u64,
}

/// The answer of `GET /api/users/{userId}/status`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserStatus {
    #[serde(rename = "userId")]
    user_id: String,
    /// Whether the user has a WebSocket connection open (polling clients
    /// are not counted).
    online: bool,
    /// WebSocket connections open.
    connections: u64,
}

/// An API key, or a client JWT (or none, where the namespace is public)
/// that may subscribe to `channel`; 1012 where presence is off.
async fn authorize(
    node: &Node,
    headers: &HeaderMap,
    channel: &str,
    gate: &PollGate,
) -> Result<(), ApiError> {
    validate_channel(channel)?;
    if let Some(credential) = bearer(headers)? {
        if node.auth.is_api_key(credential) {
            // The server API sees every channel; 1012 still applies.
            return Ok(node.presence_enabled(channel)?);
        }
    }
    let who = super::poll::identity(node, headers, None)?;
    gate.admit(&who)?;
    Ok(node
        .authorize_presence(&who, None, channel, crate::proxy::Transport::Polling)
        .await?)
}

/// `GET /api/channels/{channel}/presence`
#[utoipa::path(
    get,
    path = "/api/channels/{channel}/presence",
    tag = "presence",
    summary = "Who is subscribed to a channel (at most 1000 listed; counts exact)",
    security(("api_key" = []), ("client_jwt" = []), ()),
    params(("channel" = String, Path, description = "The channel (SPEC §1)", pattern = r"^[A-Za-z0-9_\-.:@]{1,200}$", example = "venue:42")),
    responses(
        (status = 200, description = "The channel's presence", body = PresenceBody, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "Invalid channel (1003)", body = ErrorBody),
        (status = 401, description = "No token where one is needed, bad token (1001), expired token (1009), malformed Authorization header", body = ErrorBody),
        (status = 403, description = "Not allowed to subscribe to this channel (1002); dev mode: not a local page", body = ErrorBody),
        (status = 404, description = "Presence is not enabled for this channel's namespace (1012)", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = ErrorBody),
        (status = 429, description = "Asking too fast (1005; the polling rate limit)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Engine unavailable (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn presence(
    State(node): State<Arc<Node>>,
    ChannelPath(channel): ChannelPath,
    headers: HeaderMap,
    gate: PollGate,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, &channel, &gate).await?;
    let s = node.presence_snapshot(&channel, MAX_LISTED).await?;
    // Entries are JSON already: written as they are, never re-parsed.
    Ok(super::poll::json_no_store(
        herald_protocol::encode_presence_frame(None, &channel, &s.clients, s.users, s.total)
            .replacen(r#""type":"presence","#, "", 1),
    ))
}

/// `GET /api/channels/{channel}/presence/stats`
#[utoipa::path(
    get,
    path = "/api/channels/{channel}/presence/stats",
    tag = "presence",
    summary = "How many clients and users are subscribed to a channel",
    security(("api_key" = []), ("client_jwt" = []), ()),
    params(("channel" = String, Path, description = "The channel (SPEC §1)", pattern = r"^[A-Za-z0-9_\-.:@]{1,200}$", example = "venue:42")),
    responses(
        (status = 200, description = "The channel's counts", body = PresenceStatsBody, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "Invalid channel (1003)", body = ErrorBody),
        (status = 401, description = "No token where one is needed, bad token (1001), expired token (1009), malformed Authorization header", body = ErrorBody),
        (status = 403, description = "Not allowed to subscribe to this channel (1002); dev mode: not a local page", body = ErrorBody),
        (status = 404, description = "Presence is not enabled for this channel's namespace (1012)", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = ErrorBody),
        (status = 429, description = "Asking too fast (1005; the polling rate limit)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Engine unavailable (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn presence_stats(
    State(node): State<Arc<Node>>,
    ChannelPath(channel): ChannelPath,
    headers: HeaderMap,
    gate: PollGate,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, &channel, &gate).await?;
    let s = node.presence_snapshot(&channel, 0).await?;
    let body = PresenceStatsBody {
        channel,
        clients: s.total,
        users: s.users,
    };
    Ok(super::poll::json_no_store(
        serde_json::to_string(&body).unwrap_or_default(),
    ))
}

/// `GET /api/users/{userId}/status`
#[utoipa::path(
    get,
    path = "/api/users/{user}/status",
    tag = "presence",
    summary = "Whether a user is online, and with how many WebSocket connections",
    security(("api_key" = [])),
    params(("user" = String, Path, description = "The user's id: 1 to 200 bytes, no control characters", min_length = 1, max_length = 200, example = "user-1")),
    responses(
        (status = 200, description = "The user's status", body = UserStatus),
        (status = 400, description = "Invalid user id (1000)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key, malformed Authorization header (1001)", body = ErrorBody),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = ErrorBody),
        (status = 503, description = "Engine unavailable (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn user_status(
    State(node): State<Arc<Node>>,
    SegmentPath(user): SegmentPath,
    headers: HeaderMap,
) -> Result<Json<UserStatus>, ApiError> {
    super::api::require_api_key(&node, &headers)?;
    validate_user_id(&user).map_err(|e| ApiError::bad_request(e.message))?;
    let connections = node.user_connections(&user).await?;
    Ok(Json(UserStatus {
        user_id: user,
        online: connections > 0,
        connections,
    }))
}
