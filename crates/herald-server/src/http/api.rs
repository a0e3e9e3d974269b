//! The server API (API key): publish, notify, batch, status. `POST
//! /api/websocket` is the seed application's control endpoint, kept exactly.
//!
//! Publishes take an idempotency key (`Idempotency-Key` header, or
//! `idempotency_key` in the body or a batch item). Time is split honestly:
//! 408 only while the body is still arriving (nothing was published); once
//! the publish is handed to the engine, a timeout answers 503 "outcome
//! unknown, retry with the same key", never a silent 408.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::Json;
use herald_protocol::{CommandError, Cursor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::extract::{ChannelPath, SegmentPath};
use super::{bearer, json_body, json_bytes};
use crate::hub::INBOX_PREFIX;
use crate::idempotency::Receipt;
use crate::node::{Node, PublishItem};

/// Room for the envelope around `data` in single-publish bodies.
const ENVELOPE_SLACK: usize = 4096;

/// The idempotency key header of the single-publish endpoints.
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

pub(crate) fn require_api_key(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    match bearer(headers)? {
        Some(key) if node.auth.is_api_key(key) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("invalid API key")),
        None => Err(ApiError::unauthorized(
            "missing API key: send Authorization: Bearer <api_key>",
        )),
    }
}

/// One action of `/api/websocket` or `/api/batch`.
#[derive(Debug, Deserialize)]
struct Action {
    #[serde(default)]
    action: Option<Value>,
    #[serde(default)]
    channel: Option<Value>,
    #[serde(default, rename = "userId")]
    user_id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    idempotency_key: Option<Value>,
}

/// Makes `"data": null` count as present (plain `Option` would read it as absent).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

fn string_field(v: Option<Value>, name: &str) -> Result<String, CommandError> {
    match v {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(CommandError::bad_request(format!(
            "{name} must be a string"
        ))),
        None => Err(CommandError::bad_request(format!("missing field: {name}"))),
    }
}

impl Action {
    /// The item and its idempotency key, if it gives one.
    fn into_keyed(mut self) -> Result<(PublishItem, Option<String>), CommandError> {
        let key = match self.idempotency_key.take() {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k),
            Some(_) => {
                return Err(CommandError::bad_request(
                    "idempotency_key must be a string",
                ))
            }
        };
        Ok((self.into_item()?, key))
    }

    fn into_item(self) -> Result<PublishItem, CommandError> {
        let data = self
            .data
            .ok_or_else(|| CommandError::bad_request("missing field: data"))?
            .get()
            .to_owned();
        match string_field(self.action, "action")?.as_str() {
            "broadcast" => Ok(PublishItem::Broadcast {
                channel: string_field(self.channel, "channel")?,
                data,
            }),
            "notify" => Ok(PublishItem::Notify {
                user: string_field(self.user_id, "userId")?,
                data,
            }),
            other => {
                let shown: String = other.chars().take(32).collect();
                Err(CommandError::bad_request(format!(
                    "unknown action {shown:?}: use broadcast or notify"
                )))
            }
        }
    }
}

/// What a publish stored: a broadcast's channel or a notification's user,
/// with the message's offset and a cursor that resumes right after it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum Published {
    /// A message broadcast on a channel.
    #[schema(title = "PublishedToChannel")]
    Channel {
        /// Always `true`.
        ok: bool,
        /// The channel it went to.
        channel: String,
        /// Its offset in the channel's stream.
        offset: u64,
        /// `epoch:offset`: poll or subscribe with it to resume after this message.
        cursor: String,
    },
    /// A notification to one user's inbox.
    #[schema(title = "PublishedToUser")]
    User {
        /// Always `true`.
        ok: bool,
        /// The user it went to.
        #[serde(rename = "userId")]
        user_id: String,
        /// Its offset in the user's inbox.
        offset: u64,
        /// `epoch:offset` of the message in the inbox.
        cursor: String,
    },
}

fn published(p: &Receipt) -> Published {
    let cursor = Cursor::new(p.epoch.to_string(), p.offset).to_string();
    match p.stream.strip_prefix(INBOX_PREFIX) {
        Some(user) => Published::User {
            ok: true,
            user_id: user.to_owned(),
            offset: p.offset,
            cursor,
        },
        None => Published::Channel {
            ok: true,
            channel: p.stream.to_string(),
            offset: p.offset,
            cursor,
        },
    }
}

/// A publish action, the body of `POST /api/websocket` and an item of
/// `POST /api/batch`.
// Documentation only: the handlers read actions field by field ([`Action`])
// so that each wrong field gets its own 400 message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum ActionBody {
    /// Publish `data` on `channel`.
    Broadcast {
        /// A channel name (SPEC §1).
        #[schema(pattern = r"^[A-Za-z0-9_\-.:@]{1,200}$")]
        channel: String,
        /// Any JSON value, at most `limits.max_message_bytes` encoded.
        data: Value,
        /// 1 to 200 printable ASCII characters, no spaces: within
        /// `limits.idempotency_window` the same key answers the original
        /// offset and stores nothing new.
        #[serde(default)]
        #[schema(pattern = r"^[!-~]{1,200}$")]
        idempotency_key: Option<String>,
    },
    /// Put `data` in user `userId`'s notification inbox.
    Notify {
        /// The user's id: 1 to 200 bytes, no control characters.
        #[serde(rename = "userId")]
        #[schema(min_length = 1, max_length = 200)]
        user_id: String,
        /// Any JSON value, at most `limits.max_message_bytes` encoded.
        data: Value,
        /// As for broadcast.
        #[serde(default)]
        #[schema(pattern = r"^[!-~]{1,200}$")]
        idempotency_key: Option<String>,
    },
}

/// The body of `POST /api/batch`.
// Documentation only: the handler counts items as it reads them (batch_body).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub(crate) struct BatchBody {
    /// At most `limits.max_batch_items` (default 1000) actions.
    items: Vec<ActionBody>,
}

/// The outcome of one batch item.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum BatchResult {
    /// Stored.
    Published(Published),
    /// Refused; the other items are unaffected.
    Failed {
        /// Always `false`.
        ok: bool,
        /// Why.
        error: ErrorDetail,
    },
}

/// The answer of `POST /api/batch`: one result per item, in order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct BatchResponse {
    /// One per item, in the items' order.
    pub results: Vec<BatchResult>,
}

/// The answer of `GET /api/websocket`: this node's counters, and the
/// cluster's when several nodes share the engine.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatusBody {
    #[serde(flatten)]
    stats: crate::node::Stats,
    /// With several nodes on one engine: `nodes`, `connections`,
    /// `subscriptions` and `members` (one report per node), or `error`
    /// when the engine could not list them.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<Value>,
}

/// `GET /api/websocket`: status (the seed's `getStats`).
#[utoipa::path(
    get,
    path = "/api/websocket",
    tag = "server",
    summary = "This node's status (and the cluster's)",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Counters", body = StatusBody),
        (status = 400, description = "Malformed Authorization header", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (1001)", body = ErrorBody),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout", body = ErrorBody),
    )
)]
pub(crate) async fn status(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Json<StatusBody>, ApiError> {
    require_api_key(&node, &headers)?;
    // Several nodes on one engine: the whole cluster too (metrics stay per node).
    let cluster = match node.cluster().await {
        Ok(Some(nodes)) => {
            let total = |f: fn(&crate::engine::NodeReport) -> u64| nodes.iter().map(f).sum::<u64>();
            Some(json!({
                "nodes": nodes.len(),
                "connections": total(|n| n.connections),
                "subscriptions": total(|n| n.subscriptions),
                "members": nodes,
            }))
        }
        Ok(None) => None,
        Err(e) => Some(json!({"error": e.to_string()})),
    };
    Ok(Json(StatusBody {
        stats: node.stats(),
        cluster,
    }))
}

/// `POST /api/websocket`: `{"action":"broadcast"|"notify", …}`.
#[utoipa::path(
    post,
    path = "/api/websocket",
    tag = "server",
    summary = "Broadcast or notify (the seed application's control endpoint)",
    security(("api_key" = [])),
    params(IdempotencyKey),
    request_body(content = ActionBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored", body = Published),
        (status = 400, description = "Malformed body or header (1000), invalid channel (1003)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (1001)", body = ErrorBody),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Body not received in time: nothing was published", body = ErrorBody),
        (status = 413, description = "Message too large (1006)", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 429, description = "Rate limited (1005)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Store unavailable, or the outcome is unknown: retry with the same idempotency key (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn control(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Published>, ApiError> {
    publish_single(&node, &headers, body, Action::into_keyed).await
}

/// `POST /api/channels/{channel}/messages`: the body is the data.
#[utoipa::path(
    post,
    path = "/api/channels/{channel}/messages",
    tag = "server",
    summary = "Publish a message on a channel",
    security(("api_key" = [])),
    params(("channel" = String, Path, description = "The channel (SPEC §1)", pattern = r"^[A-Za-z0-9_\-.:@]{1,200}$", example = "venue:42"), IdempotencyKey),
    request_body(content = Value, content_type = "application/json", description = "The message: any JSON value"),
    responses(
        (status = 200, description = "Stored", body = Published),
        (status = 400, description = "Malformed body or header (1000), invalid channel (1003)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (1001)", body = ErrorBody),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Body not received in time: nothing was published", body = ErrorBody),
        (status = 413, description = "Message too large (1006)", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 429, description = "Rate limited (1005)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Store unavailable, or the outcome is unknown: retry with the same idempotency key (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn publish_channel(
    State(node): State<Arc<Node>>,
    ChannelPath(channel): ChannelPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Published>, ApiError> {
    publish_single(&node, &headers, body, |data: Box<RawValue>| {
        Ok((
            PublishItem::Broadcast {
                channel,
                data: data.get().to_owned(),
            },
            None,
        ))
    })
    .await
}

/// `POST /api/users/{userId}/notifications`: the body is the data.
#[utoipa::path(
    post,
    path = "/api/users/{user}/notifications",
    tag = "server",
    summary = "Notify a user (their inbox)",
    security(("api_key" = [])),
    params(("user" = String, Path, description = "The user's id: 1 to 200 bytes, no control characters", min_length = 1, max_length = 200, example = "user-1"), IdempotencyKey),
    request_body(content = Value, content_type = "application/json", description = "The notification: any JSON value"),
    responses(
        (status = 200, description = "Stored", body = Published),
        (status = 400, description = "Malformed body, header or user id (1000)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (1001)", body = ErrorBody),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Body not received in time: nothing was published", body = ErrorBody),
        (status = 413, description = "Message too large (1006)", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 429, description = "Rate limited (1005)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Store unavailable, or the outcome is unknown: retry with the same idempotency key (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn notify_user(
    State(node): State<Arc<Node>>,
    SegmentPath(user): SegmentPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Published>, ApiError> {
    publish_single(&node, &headers, body, |data: Box<RawValue>| {
        Ok((
            PublishItem::Notify {
                user,
                data: data.get().to_owned(),
            },
            None,
        ))
    })
    .await
}

/// The shared path of the single-publish endpoints: API key, bounded JSON
/// body, `to_item` turns the body into what to publish (and the body's own
/// idempotency key, if it can carry one).
async fn publish_single<B: serde::de::DeserializeOwned>(
    node: &Node,
    headers: &HeaderMap,
    body: Body,
    to_item: impl FnOnce(B) -> Result<(PublishItem, Option<String>), CommandError>,
) -> Result<Json<Published>, ApiError> {
    require_api_key(node, headers)?;
    let header_key = idempotency_header(headers)?;
    let limits = &node.config().limits;
    let parsed: B = read_body(
        headers,
        body,
        limits.max_message_bytes + ENVELOPE_SLACK,
        limits.request_timeout,
    )
    .await?;
    let (item, body_key) = to_item(parsed)?;
    let key = match (header_key, body_key) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::bad_request(
                "the Idempotency-Key header and idempotency_key differ; send one",
            ))
        }
        (h, b) => h.or(b),
    };
    let publish = node.publish_keyed(item, key.as_deref());
    match tokio::time::timeout(limits.request_timeout, publish).await {
        Ok(receipt) => Ok(Json(published(&receipt?))),
        Err(_) => Err(ApiError::outcome_unknown(limits.request_timeout)),
    }
}

/// The `Idempotency-Key` header of the single publishes (documentation).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct IdempotencyKey {
    /// Within `limits.idempotency_window` the same key answers the original
    /// offset and cursor and stores nothing new. 1 to 200 printable ASCII
    /// characters, no spaces; if the body has `idempotency_key` too, the two must be equal.
    #[serde(rename = "Idempotency-Key")]
    #[param(pattern = r"^[!-~]{1,200}$")]
    idempotency_key: Option<String>,
}

/// The `Idempotency-Key` header, if sent.
fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get(&IDEMPOTENCY_KEY)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be printable ASCII"))
        })
        .transpose()
}

/// Reads a JSON body within `timeout`: a body still arriving then gets 408,
/// and since nothing was handed to the engine yet, nothing was published.
pub(crate) async fn read_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<T, ApiError> {
    tokio::time::timeout(timeout, json_body(headers, body, limit))
        .await
        .unwrap_or_else(|_| Err(body_timeout(timeout)))
}

/// 408: the body did not arrive within `timeout`, so nothing was published.
fn body_timeout(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        herald_protocol::ErrorCode::BadRequest,
        format!(
            "request body not received within {} (limits.request_timeout); nothing was published",
            humantime::format_duration(timeout)
        ),
    )
}

/// `POST /api/batch`: many actions, one durable commit, one result each.
#[utoipa::path(
    post,
    path = "/api/batch",
    tag = "server",
    summary = "Many broadcasts and notifications in one durable commit",
    security(("api_key" = [])),
    request_body(content = BatchBody, content_type = "application/json"),
    responses(
        (status = 200, description = "One result per item, in order (a bad item fails alone)", body = BatchResponse),
        (status = 400, description = "Not {\"items\":[…]}, or an Idempotency-Key header (1000)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key (1001)", body = ErrorBody),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Body not received in time: nothing was published", body = ErrorBody),
        (status = 413, description = "Body over limits.max_body_bytes, or more than limits.max_batch_items items (1006)", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 503, description = "Store unavailable, or the outcome is unknown: retry with the same idempotency keys (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn batch(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BatchResponse>, ApiError> {
    require_api_key(&node, &headers)?;
    if headers.contains_key(&IDEMPOTENCY_KEY) {
        // One key for many items has no single original to answer with;
        // refusing beats silently publishing without the protection asked for.
        return Err(ApiError::bad_request(
            "a batch takes idempotency_key per item, not an Idempotency-Key header",
        ));
    }
    let limits = &node.config().limits;
    let bytes = tokio::time::timeout(
        limits.request_timeout,
        json_bytes(&headers, body, limits.max_body_bytes),
    )
    .await
    .unwrap_or_else(|_| Err(body_timeout(limits.request_timeout)))?;
    let items = super::batch_body::parse(&bytes, limits.max_batch_items)?;
    drop(bytes);
    let mut parsed: Vec<Result<(PublishItem, Option<String>), CommandError>> =
        Vec::with_capacity(items.len());
    for raw in &items {
        parsed.push(
            serde_json::from_str::<Action>(raw.get())
                .map_err(|_| {
                    CommandError::bad_request(
                        "item must be an object with action, channel or userId, and data",
                    )
                })
                .and_then(Action::into_keyed),
        );
    }
    let valid: Vec<(PublishItem, Option<String>)> = parsed
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let publish = node.publish_many_keyed(valid);
    let mut outcomes = match tokio::time::timeout(limits.request_timeout, publish).await {
        Ok(outcomes) => outcomes?.into_iter(),
        Err(_) => return Err(ApiError::outcome_unknown(limits.request_timeout)),
    };
    let results: Vec<BatchResult> = parsed
        .into_iter()
        .map(|p| {
            let outcome = match p {
                Ok(_) => outcomes
                    .next()
                    .unwrap_or_else(|| Err(CommandError::bad_request("not processed"))),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(publication) => BatchResult::Published(published(&publication)),
                Err(e) => BatchResult::Failed {
                    ok: false,
                    error: ErrorDetail {
                        code: e.code.as_u16(),
                        message: e.message,
                    },
                },
            }
        })
        .collect();
    Ok(Json(BatchResponse { results }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The described action ([`ActionBody`]) accepts what the handlers'
    /// own reading ([`Action`]) accepts, and refuses what it refuses.
    #[test]
    fn the_described_action_is_the_one_read() {
        let cases = [
            r#"{"action":"broadcast","channel":"c","data":{"x":1}}"#,
            r#"{"action":"broadcast","channel":"c","data":null}"#,
            r#"{"action":"broadcast","channel":"c","data":1,"idempotency_key":"k"}"#,
            r#"{"action":"broadcast","channel":"c","data":1,"idempotency_key":null}"#,
            r#"{"action":"notify","userId":"u","data":"hi"}"#,
            r#"{"action":"notify","userId":"u","data":[],"extra":1}"#,
            r#"{"action":"broadcast","channel":"c"}"#,
            r#"{"action":"broadcast","data":1}"#,
            r#"{"action":"notify","channel":"c","data":1}"#,
            r#"{"action":"shout","channel":"c","data":1}"#,
            r#"{"channel":"c","data":1}"#,
            r#"{"action":"broadcast","channel":7,"data":1}"#,
            r#"{"action":"notify","userId":"u","data":1,"idempotency_key":5}"#,
            r#"{"action":1,"channel":"c","data":1}"#,
        ];
        for case in cases {
            let read = serde_json::from_str::<Action>(case)
                .ok()
                .and_then(|a| a.into_keyed().ok())
                .is_some();
            let described = serde_json::from_str::<ActionBody>(case).is_ok();
            assert_eq!(read, described, "{case}");
        }
    }
}
