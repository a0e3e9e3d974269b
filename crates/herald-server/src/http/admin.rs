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
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::api::{require_api_key, status};
use super::error::ApiError;
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

/// `GET /api/admin/overview`: the status of `GET /api/websocket` (with the
/// cluster), readiness, and the counters of events an operator watches.
pub(crate) async fn overview(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let Json(mut body) = status(State(node.clone()), headers).await?;
    let m = &node.metrics;
    body["ready"] = json!(node.ready().await);
    body["events"] = json!({
        "slow_consumer_disconnects": m.slow_consumer_disconnects.get(),
        "messages_dropped": m.messages_dropped.get(),
        "rate_limited": m.rate_limited.get() + m.poll_rate_limited.get(),
        "engine_errors": m.engine_errors.get(),
    });
    Ok(Json(body))
}

/// `GET /api/admin/channels?limit=N`: channels with subscribers on this
/// node, most subscribers first.
pub(crate) async fn channels(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&node, &headers)?;
    let limit = limit(query.as_deref(), 100, MAX_LIST)?;
    let (total, list) = node.hub.busiest_channels(limit);
    let channels: Vec<Value> = list
        .into_iter()
        .map(|(channel, subscribers)| json!({"channel": &*channel, "subscribers": subscribers}))
        .collect();
    Ok(Json(json!({
        "node": node.stats().node,
        "total": total,
        "channels": channels,
    })))
}

/// `GET /api/admin/channels/{channel}?limit=N`: local subscribers, the
/// last offset and the newest N messages (default 20).
pub(crate) async fn channel(
    State(node): State<Arc<Node>>,
    ChannelPath(channel): ChannelPath,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
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
    let history: Vec<Value> = page
        .messages
        .iter()
        .map(|m| {
            let data = RawValue::from_string(m.data.to_string())
                .map(|raw| serde_json::to_value(raw).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            json!({"offset": m.offset, "ts": m.ts, "data": data})
        })
        .collect();
    Ok(Json(json!({
        "channel": channel,
        "subscribers": node.hub.subscriber_count(&channel),
        "epoch": &*page.epoch,
        "offset": page.top,
        "history": history,
    })))
}

/// `GET /api/admin/users/{userId}`: the user's sessions on this node with
/// their channels, and the position of their notification inbox.
pub(crate) async fn user(
    State(node): State<Arc<Node>>,
    SegmentPath(user): SegmentPath,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&node, &headers)?;
    validate_user_id(&user).map_err(|e| ApiError::bad_request(e.message))?;
    let sessions = node.users.sessions(&user);
    let ids: Vec<u64> = sessions.iter().map(|(id, _)| *id).collect();
    let mut channels = node.hub.channels_of(&ids, MAX_SESSION_CHANNELS);
    let connections: Vec<Value> = sessions
        .into_iter()
        .map(|(id, s)| {
            let subs: Vec<String> = channels
                .remove(&id)
                .unwrap_or_default()
                .iter()
                .map(|c| c.to_string())
                .collect();
            json!({"client": s.client, "connected_at": s.connected_at, "channels": subs})
        })
        .collect();
    let inbox = node
        .recent_history(&inbox_key(&user), 0)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(json!({
        "user": user,
        "online": !connections.is_empty(),
        "connections": connections,
        "notifications": {"epoch": &*inbox.epoch, "offset": inbox.top},
    })))
}

/// `POST /api/admin/users/{userId}/disconnect`: closes every session of the
/// user on this node with 4007 (no reconnect); answers how many.
pub(crate) async fn disconnect(
    State(node): State<Arc<Node>>,
    SegmentPath(user): SegmentPath,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&node, &headers)?;
    validate_user_id(&user).map_err(|e| ApiError::bad_request(e.message))?;
    let n = node.users.kick(&user, CloseCode::Operator);
    tracing::info!(user = %user, sessions = n, "disconnected by an operator");
    Ok(Json(json!({"ok": true, "user": user, "disconnected": n})))
}
