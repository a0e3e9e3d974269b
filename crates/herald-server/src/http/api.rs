//! The server API (API key): publish, notify, batch, status. `POST
//! /api/websocket` is the seed application's control endpoint, kept exactly.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use herald_protocol::{CommandError, Cursor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{ChannelPath, SegmentPath};
use super::{bearer, json_body, json_bytes};
use crate::engine::Publication;
use crate::hub::INBOX_PREFIX;
use crate::node::{Node, PublishItem};

/// Room for the envelope around `data` in single-publish bodies.
const ENVELOPE_SLACK: usize = 4096;

fn require_api_key(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
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

fn published(p: &Publication) -> Value {
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
    Ok(Json(serde_json::to_value(node.stats()).unwrap_or_default()))
}

/// `POST /api/websocket`: `{"action":"broadcast"|"notify", …}`.
pub(crate) async fn control(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    publish_single(&node, &headers, body, |action: Action| action.into_item()).await
}

/// `POST /api/channels/{channel}/messages`: the body is the data.
pub(crate) async fn publish_channel(
    State(node): State<Arc<Node>>,
    ChannelPath(channel): ChannelPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    publish_single(&node, &headers, body, |data: Box<RawValue>| {
        Ok(PublishItem::Broadcast {
            channel,
            data: data.get().to_owned(),
        })
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
        Ok(PublishItem::Notify {
            user,
            data: data.get().to_owned(),
        })
    })
    .await
}

/// The shared path of the single-publish endpoints: API key, bounded JSON
/// body, `to_item` turns the body into what to publish.
async fn publish_single<B: serde::de::DeserializeOwned>(
    node: &Node,
    headers: &HeaderMap,
    body: Body,
    to_item: impl FnOnce(B) -> Result<PublishItem, CommandError>,
) -> Result<Json<Value>, ApiError> {
    require_api_key(node, headers)?;
    let limit = node.config().limits.max_message_bytes + ENVELOPE_SLACK;
    let parsed: B = json_body(headers, body, limit).await?;
    let item = to_item(parsed)?;
    Ok(Json(published(&node.publish_one(item).await?)))
}

/// `POST /api/batch`: many actions, one durable commit, one result each.
pub(crate) async fn batch(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&node, &headers)?;
    let limits = &node.config().limits;
    let bytes = json_bytes(&headers, body, limits.max_body_bytes).await?;
    let items = super::batch_body::parse(&bytes, limits.max_batch_items)?;
    drop(bytes);
    let mut parsed: Vec<Result<PublishItem, CommandError>> = Vec::with_capacity(items.len());
    for raw in &items {
        parsed.push(
            serde_json::from_str::<Action>(raw.get())
                .map_err(|_| {
                    CommandError::bad_request(
                        "item must be an object with action, channel or userId, and data",
                    )
                })
                .and_then(Action::into_item),
        );
    }
    let valid: Vec<PublishItem> = parsed
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let mut outcomes = node.publish_many(valid).await?.into_iter();
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
