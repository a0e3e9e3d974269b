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
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::error::ApiError;
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

fn published(p: &Receipt) -> Value {
    let cursor = Cursor::new(p.epoch.to_string(), p.offset).to_string();
    match p.stream.strip_prefix(INBOX_PREFIX) {
        Some(user) => json!({"ok": true, "userId": user, "offset": p.offset, "cursor": cursor}),
        None => json!({"ok": true, "channel": &*p.stream, "offset": p.offset, "cursor": cursor}),
    }
}

/// `GET /api/websocket`: status (the seed's `getStats`).
pub(crate) async fn status(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&node, &headers)?;
    let mut status = serde_json::to_value(node.stats()).unwrap_or_default();
    // Several nodes on one engine: the whole cluster too (metrics stay per node).
    match node.cluster().await {
        Ok(Some(nodes)) => {
            let total = |f: fn(&crate::engine::NodeReport) -> u64| nodes.iter().map(f).sum::<u64>();
            status["cluster"] = json!({
                "nodes": nodes.len(),
                "connections": total(|n| n.connections),
                "subscriptions": total(|n| n.subscriptions),
                "members": nodes,
            });
        }
        Ok(None) => {}
        Err(e) => status["cluster"] = json!({"error": e.to_string()}),
    }
    Ok(Json(status))
}

/// `POST /api/websocket`: `{"action":"broadcast"|"notify", …}`.
pub(crate) async fn control(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    publish_single(&node, &headers, body, Action::into_keyed).await
}

/// `POST /api/channels/{channel}/messages`: the body is the data.
pub(crate) async fn publish_channel(
    State(node): State<Arc<Node>>,
    ChannelPath(channel): ChannelPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
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
pub(crate) async fn notify_user(
    State(node): State<Arc<Node>>,
    SegmentPath(user): SegmentPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
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
) -> Result<Json<Value>, ApiError> {
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
async fn read_body<T: serde::de::DeserializeOwned>(
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
pub(crate) async fn batch(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
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
    let results: Vec<Value> = parsed
        .into_iter()
        .map(|p| {
            let outcome = match p {
                Ok(_) => outcomes
                    .next()
                    .unwrap_or_else(|| Err(CommandError::bad_request("not processed"))),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(publication) => published(&publication),
                Err(e) => {
                    json!({"ok": false, "error": {"code": e.code.as_u16(), "message": e.message}})
                }
            }
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}
