//! The admin API (API key) behind the `/admin` dashboard (SPEC §5
//! "Administration"): what this node serves now, a channel's recent
//! history, a user's sessions, and disconnecting a user (close 4007).
//!
//! Lists are of this node: with the redis engine each node answers for the
//! sessions it holds (`cluster` in the overview gives every node's totals).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use herald_protocol::{validate_channel, validate_user_id, CloseCode, ErrorCode};
use serde::Serialize;
use utoipa::ToSchema;

use super::api::{require_api_key, status, StatusBody};
use super::error::{ApiError, ErrorBody};
use super::extract::{ChannelPath, SegmentPath};
use crate::hub::inbox_key;
use crate::node::Node;

/// The dashboard page, built from clients/js/src/admin and embedded so
/// `cargo build` needs no Node.js.
const ADMIN_PAGE: &str = include_str!("../../assets/admin.html");

/// Channels listed at most.
const MAX_LIST: usize = 1000;
/// History messages shown at most.
const MAX_RECENT: usize = 100;
/// Channels listed per session at most.
const MAX_SESSION_CHANNELS: usize = 100;

/// `GET /admin`: the page; it asks for the API key itself and keeps it in
/// session storage, so the page needs none and no key is ever in a URL.
#[utoipa::path(
    get,
    path = "/admin",
    tag = "admin",
    summary = "The admin dashboard page (it signs in with an API key itself)",
    responses(
        (status = 200, description = "An HTML page", body = String, content_type = "text/html"),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = ErrorBody),
    )
)]
pub(crate) async fn page() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(ADMIN_PAGE),
    )
        .into_response()
}

/// `?limit=N` (1..=max), or `default`.
fn limit(query: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|_| ApiError::bad_request("malformed query string"))?;
    match pairs.iter().find(|(k, _)| k == "limit") {
        None => Ok(default),
        Some((_, v)) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit must be a whole number from 1 to {max}"
            ))),
        },
    }
}

/// Counters of the events an operator watches (they only grow).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventCounts {
    /// Connections closed with 4003 (their queue overflowed).
    slow_consumer_disconnects: u64,
    /// Deliveries not queued because a connection's queue was full.
    messages_dropped: u64,
    /// Commands and polls refused as rate limited (1005 / 429).
    rate_limited: u64,
    /// Engine failures (503 / 1011).
    engine_errors: u64,
}

/// The answer of `GET /api/admin/overview`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Overview {
    #[serde(flatten)]
    status: StatusBody,
    /// Whether the engine answers (as `/ready`).
    ready: bool,
    events: EventCounts,
}

/// `GET /api/admin/overview`: the status of `GET /api/websocket` (with the
/// cluster), readiness, and the counters of events an operator watches.
#[utoipa::path(
    get,
    path = "/api/admin/overview",
    tag = "admin",
    summary = "This node's status, readiness and event counters",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The overview", body = Overview),
        (status = 400, description = "Malformed Authorization header", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (1001)", body = ErrorBody),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = ErrorBody),
    )
)]
pub(crate) async fn overview(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Json<Overview>, ApiError> {
    let Json(status) = status(State(node.clone()), headers).await?;
    let m = &node.metrics;
    Ok(Json(Overview {
        status,
        ready: node.ready().await,
        events: EventCounts {
            slow_consumer_disconnects: m.slow_consumer_disconnects.get(),
            messages_dropped: m.messages_dropped.get(),
            rate_limited: m.rate_limited.get() + m.poll_rate_limited.get(),
            engine_errors: m.engine_errors.get(),
        },
    }))
}

/// A channel and its subscribers on this node.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChannelCount {
    #[schema(example = "venue:42")]
    channel: String,
    subscribers: usize,
}

/// The answer of `GET /api/admin/channels`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChannelList {
    /// The node that answered.
    node: String,
    /// Channels with subscribers on this node.
    total: usize,
    /// At most `limit` of them, most subscribers first.
    channels: Vec<ChannelCount>,
}

/// `GET /api/admin/channels?limit=N`: channels with subscribers on this
/// node, most subscribers first.
#[utoipa::path(
    get,
    path = "/api/admin/channels",
    tag = "admin",
    summary = "Channels with subscribers on this node, busiest first",
    security(("api_key" = [])),
    params(("limit" = Option<usize>, Query, description = "At most this many (1 to 1000, default 100)", minimum = 1, maximum = 1000)),
    responses(
        (status = 200, description = "The channels", body = ChannelList),
        (status = 400, description = "Malformed query or Authorization header (1000)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (1001)", body = ErrorBody),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = ErrorBody),
    )
)]
pub(crate) async fn channels(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<ChannelList>, ApiError> {
    require_api_key(&node, &headers)?;
    let limit = limit(query.as_deref(), 100, MAX_LIST)?;
    let (total, list) = node.hub.busiest_channels(limit);
    Ok(Json(ChannelList {
        node: node.stats().node,
        total,
        channels: list
            .into_iter()
            .map(|(channel, subscribers)| ChannelCount {
                channel: channel.to_string(),
                subscribers,
            })
            .collect(),
    }))
}

/// One stored message.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AdminMessage {
    offset: u64,
    /// Publish time, Unix ms.
    ts: u64,
    /// The message as published: any JSON value.
    #[schema(value_type = serde_json::Value)]
    data: Box<serde_json::value::RawValue>,
}

/// The answer of `GET /api/admin/channels/{channel}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChannelDetail {
    channel: String,
    /// Its subscribers on this node.
    subscribers: usize,
    epoch: String,
    /// The last offset (0 when nothing was published).
    offset: u64,
    /// The newest messages, oldest first.
    history: Vec<AdminMessage>,
}

/// `GET /api/admin/channels/{channel}?limit=N`: local subscribers, the
/// last offset and the newest N messages (default 20).
#[utoipa::path(
    get,
    path = "/api/admin/channels/{channel}",
    tag = "admin",
    summary = "A channel: subscribers here, last offset, recent history",
    security(("api_key" = [])),
    params(
        ("channel" = String, Path, description = "The channel (SPEC §1)", pattern = r"^[A-Za-z0-9_\-.:@]{1,200}$", example = "venue:42"),
        ("limit" = Option<usize>, Query, description = "Messages of history (1 to 100, default 20)", minimum = 1, maximum = 100),
    ),
    responses(
        (status = 200, description = "The channel", body = ChannelDetail),
        (status = 400, description = "Malformed query or header (1000), invalid channel (1003)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (1001)", body = ErrorBody),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = ErrorBody),
        (status = 503, description = "Engine unavailable (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn channel(
    State(node): State<Arc<Node>>,
    ChannelPath(channel): ChannelPath,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<ChannelDetail>, ApiError> {
    require_api_key(&node, &headers)?;
    validate_channel(&channel).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidChannel,
            e.message,
        )
    })?;
    let n = limit(query.as_deref(), 20, MAX_RECENT)?;
    let page = node
        .recent_history(&channel, n)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let history = page
        .messages
        .iter()
        .filter_map(|m| {
            Some(AdminMessage {
                offset: m.offset,
                ts: m.ts,
                data: serde_json::value::RawValue::from_string(m.data.to_string()).ok()?,
            })
        })
        .collect();
    Ok(Json(ChannelDetail {
        subscribers: node.hub.subscriber_count(&channel),
        channel,
        epoch: page.epoch.to_string(),
        offset: page.top,
        history,
    }))
}

/// One session of a user on this node.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SessionInfo {
    /// The `client` id the session was told in `connected`.
    client: String,
    /// When it connected, Unix ms.
    connected_at: u64,
    /// Its channels (at most 100).
    channels: Vec<String>,
}

/// Where a user's notification inbox stands.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InboxPosition {
    epoch: String,
    /// The last notification's offset (0 when none was sent).
    offset: u64,
}

/// The answer of `GET /api/admin/users/{userId}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserDetail {
    user: String,
    /// Whether the user has a session on this node.
    online: bool,
    connections: Vec<SessionInfo>,
    notifications: InboxPosition,
}

/// `GET /api/admin/users/{userId}`: the user's sessions on this node with
/// their channels, and the position of their notification inbox.
#[utoipa::path(
    get,
    path = "/api/admin/users/{user}",
    tag = "admin",
    summary = "A user's sessions on this node and their inbox position",
    security(("api_key" = [])),
    params(("user" = String, Path, description = "The user's id: 1 to 200 bytes, no control characters", min_length = 1, max_length = 200, example = "user-1")),
    responses(
        (status = 200, description = "The user", body = UserDetail),
        (status = 400, description = "Invalid user id or malformed header (1000)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (1001)", body = ErrorBody),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = ErrorBody),
        (status = 503, description = "Engine unavailable (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn user(
    State(node): State<Arc<Node>>,
    SegmentPath(user): SegmentPath,
    headers: HeaderMap,
) -> Result<Json<UserDetail>, ApiError> {
    require_api_key(&node, &headers)?;
    validate_user_id(&user).map_err(|e| ApiError::bad_request(e.message))?;
    let sessions = node.users.sessions(&user);
    let ids: Vec<u64> = sessions.iter().map(|(id, _)| *id).collect();
    let mut channels = node.hub.channels_of(&ids, MAX_SESSION_CHANNELS);
    let connections: Vec<SessionInfo> = sessions
        .into_iter()
        .map(|(id, s)| SessionInfo {
            client: s.client,
            connected_at: s.connected_at,
            channels: channels
                .remove(&id)
                .unwrap_or_default()
                .iter()
                .map(|c| c.to_string())
                .collect(),
        })
        .collect();
    let inbox = node
        .recent_history(&inbox_key(&user), 0)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(UserDetail {
        user,
        online: !connections.is_empty(),
        connections,
        notifications: InboxPosition {
            epoch: inbox.epoch.to_string(),
            offset: inbox.top,
        },
    }))
}

/// The answer of `POST /api/admin/users/{userId}/disconnect`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Disconnected {
    ok: bool,
    user: String,
    /// Sessions closed on this node.
    disconnected: usize,
}

/// `POST /api/admin/users/{userId}/disconnect`: closes every session of the
/// user on this node with 4007 (no reconnect); answers how many.
#[utoipa::path(
    post,
    path = "/api/admin/users/{user}/disconnect",
    tag = "admin",
    summary = "Close the user's sessions on this node (close 4007, no reconnect)",
    security(("api_key" = [])),
    params(("user" = String, Path, description = "The user's id: 1 to 200 bytes, no control characters", min_length = 1, max_length = 200, example = "user-1")),
    responses(
        (status = 200, description = "How many sessions were closed", body = Disconnected),
        (status = 400, description = "Invalid user id or malformed header (1000)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (1001)", body = ErrorBody),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = ErrorBody),
    )
)]
pub(crate) async fn disconnect(
    State(node): State<Arc<Node>>,
    SegmentPath(user): SegmentPath,
    headers: HeaderMap,
) -> Result<Json<Disconnected>, ApiError> {
    require_api_key(&node, &headers)?;
    validate_user_id(&user).map_err(|e| ApiError::bad_request(e.message))?;
    let n = node.users.kick(&user, CloseCode::Operator);
    tracing::info!(user = %user, sessions = n, "disconnected by an operator");
    Ok(Json(Disconnected {
        ok: true,
        user,
        disconnected: n,
    }))
}
