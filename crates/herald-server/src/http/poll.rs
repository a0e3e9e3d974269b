//! The polling fallback (SPEC §5): the same history the live path replays,
//! paged by cursor, with long polls and the seed application's aliases.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_protocol::{validate_channel, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::bearer;
use super::error::{ApiError, ErrorBody};
use super::extract::ChannelPath;
use super::poll_limit::PollGate;
use crate::auth::Identity;
use crate::hub::inbox_key;
use crate::node::{Node, PollPage, PollSince};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
const MAX_WAIT_SECS: u64 = 60;
/// The longest long poll, which the request timeout allows on top.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(MAX_WAIT_SECS);

/// The query of every poll.
// Documentation only: [`parse_params`] reads the query, so that each bad
// value gets its own 400 message. A test checks the bounds against the
// constants above.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct PollQuery {
    /// Where to start: a cursor (`epoch:offset`, from a message or a
    /// previous answer), a Unix time in milliseconds, or an RFC 3339 time.
    /// Absent: from the oldest message kept.
    since: Option<String>,
    /// At most this many messages (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Seconds to hold the request when there is nothing new (long poll).
    #[param(minimum = 0, maximum = 60)]
    wait: Option<f64>,
    /// Dev mode only, without a token: the user to poll as.
    user: Option<String>,
}

/// One message of a poll answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolledMessage {
    /// Its offset in the stream.
    pub offset: u64,
    /// `epoch:offset`: resumes right after this message.
    pub cursor: String,
    /// When it was published, Unix milliseconds.
    pub ts: u64,
    /// What was published: any JSON value.
    pub data: serde_json::Value,
}

/// A page of a channel's history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelPage {
    /// The channel polled.
    pub channel: String,
    /// Oldest first.
    pub messages: Vec<PolledMessage>,
    /// Poll again with `since` set to this: never skips or repeats a message.
    pub cursor: String,
    /// `false`: the cursor's epoch or offset is gone; refetch your state.
    pub recovered: bool,
    /// Whether more messages are waiting past this page.
    pub more: bool,
}

/// A page of the caller's notification inbox.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InboxPage {
    /// The caller.
    #[serde(rename = "userId")]
    pub user_id: String,
    /// Oldest first.
    pub messages: Vec<PolledMessage>,
    /// Poll again with `since` set to this: never skips or repeats a message.
    pub cursor: String,
    /// `false`: the cursor's epoch or offset is gone; refetch your state.
    pub recovered: bool,
    /// Whether more messages are waiting past this page.
    pub more: bool,
    /// Notifications kept after the caller's read cursor (SPEC §11).
    pub unread: u64,
}

/// The body of `POST /api/notifications/read`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadBody {
    /// `epoch:offset` of the newest notification read. Past the inbox's
    /// newest it is taken as the newest; of another epoch (the inbox's
    /// history was lost since) it changes nothing. Never moves the read
    /// cursor backwards.
    #[schema(example = "e7Hq2kLm:17")]
    pub cursor: String,
}

/// The caller's unread count.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Unread {
    /// Notifications kept after the caller's read cursor.
    pub unread: u64,
}

#[derive(Debug)]
struct PollParams {
    since: PollSince,
    limit: usize,
    wait: Duration,
    user: Option<String>,
}

/// Parses `since` (see [`herald_protocol::Since`]) into a 400 on failure.
fn parse_since(raw: &str) -> Result<PollSince, ApiError> {
    PollSince::parse(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn parse_params(query: Option<&str>) -> Result<PollParams, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|_| ApiError::bad_request("malformed query string"))?;
    let mut params = PollParams {
        since: PollSince::Oldest,
        limit: DEFAULT_LIMIT,
        wait: Duration::ZERO,
        user: None,
    };
    for (key, value) in pairs {
        match key.as_str() {
            "since" => params.since = parse_since(&value)?,
            "limit" => {
                params.limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be an integer from 1 to {MAX_LIMIT}"
                        ))
                    })?
            }
            "wait" => {
                let secs: f64 = value
                    .parse()
                    .ok()
                    .filter(|w: &f64| (0.0..=MAX_WAIT_SECS as f64).contains(w))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "wait must be a number of seconds from 0 to {MAX_WAIT_SECS}"
                        ))
                    })?;
                params.wait = Duration::from_secs_f64(secs);
            }
            "user" => params.user = Some(value),
            _ => {}
        }
    }
    Ok(params)
}

pub(crate) fn identity(
    node: &Node,
    headers: &HeaderMap,
    dev_user: Option<String>,
) -> Result<Identity, ApiError> {
    let config = node.config();
    match bearer(headers)? {
        Some(token) => node
            .auth
            .verify(token)
            .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())),
        None if config.dev => {
            if let Some(user) = &dev_user {
                herald_protocol::validate_user_id(user)?;
            }
            Ok(Identity::unverified(dev_user))
        }
        None if config.auth.allow_anonymous => Ok(Identity::unverified(None)),
        None => Err(ApiError::unauthorized(
            "a token is required: send Authorization: Bearer <JWT>",
        )),
    }
}

/// Reads a page; with `wait` and nothing new, holds the request until a
/// message arrives, `wait` passes or the server shuts down.
async fn long_poll(
    node: &Node,
    stream: &Arc<str>,
    params: &PollParams,
) -> Result<PollPage, ApiError> {
    let page = node.poll(stream, &params.since, params.limit).await?;
    if !page.messages.is_empty() || !page.recovered || params.wait.is_zero() {
        return Ok(page);
    }
    // Past the waiter bound, polls answer at once rather than pile up.
    let Ok(_permit) = node.long_polls.clone().try_acquire_owned() else {
        return Ok(page);
    };
    // The waiter leaves the hub when dropped, on every path out of here:
    // answered, timed out, or the client hung up and this future was dropped.
    let woken = node.hub.wait(stream);
    // With a remote fan-out (Redis) the waiter hears nothing until the
    // node's subscription is up; read only after that.
    node.listening(stream).await?;
    let page = node.poll(stream, &params.since, params.limit).await?;
    if !page.messages.is_empty() {
        return Ok(page);
    }
    let arrived = tokio::select! {
        fired = woken => fired,
        _ = tokio::time::sleep(params.wait) => false,
        _ = node.shutdown_token().cancelled() => false,
    };
    if !arrived {
        return Ok(page);
    }
    Ok(node.poll(stream, &params.since, params.limit).await?)
}

fn render(label: (&str, &str), page: &PollPage, unread: Option<u64>) -> Response {
    let mut body = String::with_capacity(
        128 + page
            .messages
            .iter()
            .map(|m| m.data.len() + 64)
            .sum::<usize>(),
    );
    body.push('{');
    body.push_str(&format!(
        "\"{}\":{},\"messages\":[",
        label.0,
        serde_json::to_string(label.1).unwrap_or_default()
    ));
    for (i, m) in page.messages.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            "{{\"offset\":{},\"cursor\":\"{}:{}\",\"ts\":{},\"data\":{}}}",
            m.offset, page.epoch, m.offset, m.ts, m.data
        ));
    }
    body.push_str(&format!(
        "],\"cursor\":\"{}\",\"recovered\":{},\"more\":{}",
        page.cursor, page.recovered, page.more
    ));
    if let Some(unread) = unread {
        body.push_str(&format!(",\"unread\":{unread}"));
    }
    body.push('}');
    json_no_store(body)
}

/// `body` (JSON text, already encoded) as a response nobody may cache: the
/// poll pages and presence answers.
pub(super) fn json_no_store(body: String) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn poll_channel(
    node: Arc<Node>,
    channel: String,
    headers: HeaderMap,
    query: Option<String>,
    gate: PollGate,
) -> Result<Response, ApiError> {
    validate_channel(&channel)?;
    let params = parse_params(query.as_deref())?;
    let who = identity(&node, &headers, params.user.clone())?;
    gate.admit(&who)?;
    node.authorize_subscribe(&who, None, &channel, crate::proxy::Transport::Polling)
        .await?;
    let stream: Arc<str> = channel.into();
    let page = long_poll(&node, &stream, &params).await?;
    Ok(render(("channel", &stream), &page, None))
}

/// `GET /api/channels/{channel}/messages`
#[utoipa::path(
    get,
    path = "/api/channels/{channel}/messages",
    tag = "polling",
    summary = "Poll a channel's messages",
    security((), ("client_jwt" = [])),
    params(("channel" = String, Path, description = "The channel (SPEC §1)", pattern = r"^[A-Za-z0-9_\-.:@]{1,200}$", example = "venue:42"), PollQuery),
    responses(
        (status = 200, description = "A page of messages (empty when there are none)", body = ChannelPage, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "Bad query (1000), invalid channel (1003), malformed Authorization header (1001)", body = ErrorBody),
        (status = 401, description = "No token where one is needed, bad token (1001), expired token (1009)", body = ErrorBody),
        (status = 403, description = "Not allowed to read this channel (1002); dev mode: not a local page", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout (plus wait)", body = ErrorBody),
        (status = 429, description = "Polling too fast (1005)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Store unavailable (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn channel(
    State(node): State<Arc<Node>>,
    ChannelPath(channel): ChannelPath,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    gate: PollGate,
) -> Result<Response, ApiError> {
    poll_channel(node, channel, headers, q, gate).await
}

/// `GET /api/venues/updates` → `venue_updates`
#[utoipa::path(
    get,
    path = "/api/venues/updates",
    tag = "polling",
    summary = "Poll channel venue_updates",
    security((), ("client_jwt" = [])),
    params(PollQuery),
    responses(
        (status = 200, description = "A page of messages (empty when there are none)", body = ChannelPage, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "Bad query (1000), invalid channel (1003), malformed Authorization header (1001)", body = ErrorBody),
        (status = 401, description = "No token where one is needed, bad token (1001), expired token (1009)", body = ErrorBody),
        (status = 403, description = "Not allowed to read this channel (1002); dev mode: not a local page", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout (plus wait)", body = ErrorBody),
        (status = 429, description = "Polling too fast (1005)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Store unavailable (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn venue_updates(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    gate: PollGate,
) -> Result<Response, ApiError> {
    poll_channel(node, "venue_updates".into(), headers, q, gate).await
}

/// `GET /api/venues/{venueId}/updates` → `venue:{venueId}`
#[utoipa::path(
    get,
    path = "/api/venues/{venue}/updates",
    tag = "polling",
    summary = "Poll channel venue:{venue}",
    security((), ("client_jwt" = [])),
    params(("venue" = String, Path, description = "The venue id", pattern = r"^[A-Za-z0-9_\-.:@]{1,187}$", example = "42"), PollQuery),
    responses(
        (status = 200, description = "A page of messages (empty when there are none)", body = ChannelPage, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "Bad query (1000), invalid channel (1003), malformed Authorization header (1001)", body = ErrorBody),
        (status = 401, description = "No token where one is needed, bad token (1001), expired token (1009)", body = ErrorBody),
        (status = 403, description = "Not allowed to read this channel (1002); dev mode: not a local page", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout (plus wait)", body = ErrorBody),
        (status = 429, description = "Polling too fast (1005)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Store unavailable (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn venue(
    State(node): State<Arc<Node>>,
    ChannelPath(venue): ChannelPath,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    gate: PollGate,
) -> Result<Response, ApiError> {
    poll_channel(node, format!("venue:{venue}"), headers, q, gate).await
}

/// `GET /api/venues/{venueId}/vibe-checks` → `vibe_checks:{venueId}`
#[utoipa::path(
    get,
    path = "/api/venues/{venue}/vibe-checks",
    tag = "polling",
    summary = "Poll channel vibe_checks:{venue}",
    security((), ("client_jwt" = [])),
    params(("venue" = String, Path, description = "The venue id", pattern = r"^[A-Za-z0-9_\-.:@]{1,187}$", example = "42"), PollQuery),
    responses(
        (status = 200, description = "A page of messages (empty when there are none)", body = ChannelPage, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "Bad query (1000), invalid channel (1003), malformed Authorization header (1001)", body = ErrorBody),
        (status = 401, description = "No token where one is needed, bad token (1001), expired token (1009)", body = ErrorBody),
        (status = 403, description = "Not allowed to read this channel (1002); dev mode: not a local page", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout (plus wait)", body = ErrorBody),
        (status = 429, description = "Polling too fast (1005)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Store unavailable (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn vibe_checks(
    State(node): State<Arc<Node>>,
    ChannelPath(venue): ChannelPath,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    gate: PollGate,
) -> Result<Response, ApiError> {
    poll_channel(node, format!("vibe_checks:{venue}"), headers, q, gate).await
}

/// `GET /api/venues/{venueId}/promotions` → `promotions:{venueId}`
#[utoipa::path(
    get,
    path = "/api/venues/{venue}/promotions",
    tag = "polling",
    summary = "Poll channel promotions:{venue}",
    security((), ("client_jwt" = [])),
    params(("venue" = String, Path, description = "The venue id", pattern = r"^[A-Za-z0-9_\-.:@]{1,187}$", example = "42"), PollQuery),
    responses(
        (status = 200, description = "A page of messages (empty when there are none)", body = ChannelPage, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "Bad query (1000), invalid channel (1003), malformed Authorization header (1001)", body = ErrorBody),
        (status = 401, description = "No token where one is needed, bad token (1001), expired token (1009)", body = ErrorBody),
        (status = 403, description = "Not allowed to read this channel (1002); dev mode: not a local page", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout (plus wait)", body = ErrorBody),
        (status = 429, description = "Polling too fast (1005)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Store unavailable (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn promotions(
    State(node): State<Arc<Node>>,
    ChannelPath(venue): ChannelPath,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    gate: PollGate,
) -> Result<Response, ApiError> {
    poll_channel(node, format!("promotions:{venue}"), headers, q, gate).await
}

/// `GET /api/notifications`: the caller's own inbox, never anyone else's.
#[utoipa::path(
    get,
    path = "/api/notifications",
    tag = "polling",
    summary = "Poll the caller's notification inbox",
    security((), ("client_jwt" = [])),
    params(PollQuery),
    responses(
        (status = 200, description = "A page of messages (empty when there are none)", body = InboxPage, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "Bad query (1000), invalid channel (1003), malformed Authorization header (1001)", body = ErrorBody),
        (status = 401, description = "No token where one is needed, bad token (1001), expired token (1009)", body = ErrorBody),
        (status = 403, description = "Not allowed to read this channel (1002); dev mode: not a local page", body = ErrorBody),
        (status = 408, description = "Not answered within limits.request_timeout (plus wait)", body = ErrorBody),
        (status = 429, description = "Polling too fast (1005)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Store unavailable (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn notifications(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    gate: PollGate,
) -> Result<Response, ApiError> {
    let params = parse_params(q.as_deref())?;
    let who = identity(&node, &headers, params.user.clone())?;
    gate.admit(&who)?;
    let Some(user) = who.user else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "notifications need an authenticated user",
        ));
    };
    let stream = inbox_key(&user);
    let page = long_poll(&node, &stream, &params).await?;
    if let Some(last) = page.messages.last() {
        node.notifications_delivered(&stream, &page.epoch, last.offset);
    }
    let unread = node.unread(&user).await?;
    Ok(render(("userId", &user), &page, Some(unread)))
}

/// `POST /api/notifications/read`: moves the caller's read cursor.
#[utoipa::path(
    post,
    path = "/api/notifications/read",
    tag = "polling",
    summary = "Mark the caller's notifications read up to a cursor",
    security(("client_jwt" = [])),
    request_body(content = ReadBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The read cursor moved (or stayed); the unread count", body = Unread),
        (status = 400, description = "Malformed body or cursor (1000), malformed Authorization header (1001)", body = ErrorBody),
        (status = 401, description = "No token, bad token (1001), expired token (1009), or a token without a user", body = ErrorBody),
        (status = 403, description = "Dev mode: not a local page (1002)", body = ErrorBody),
        (status = 408, description = "Body not received, or not answered, within limits.request_timeout", body = ErrorBody),
        (status = 413, description = "Body too large (1006)", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 503, description = "Store unavailable (1011)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn mark_read(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<axum::Json<Unread>, ApiError> {
    let who = identity(&node, &headers, None)?;
    let Some(user) = who.user else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "marking notifications read needs an authenticated user",
        ));
    };
    let read: ReadBody = super::api::read_body(
        &headers,
        body,
        READ_BODY_BYTES,
        node.config().limits.request_timeout,
    )
    .await?;
    let cursor = herald_protocol::Cursor::parse(&read.cursor)
        .map_err(|_| ApiError::bad_request("cursor must be a cursor \"{epoch}:{offset}\""))?;
    let unread = node.mark_read(&user, &cursor).await?;
    Ok(axum::Json(Unread { unread }))
}

/// Largest body of `POST /api/notifications/read`: a cursor and some slack.
const READ_BODY_BYTES: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::Cursor;

    #[test]
    fn since_accepts_cursor_millis_and_rfc3339() {
        assert_eq!(
            parse_since("e7Hq:17").unwrap(),
            PollSince::Cursor(Cursor::new("e7Hq", 17))
        );
        assert_eq!(
            parse_since("1764100000123").unwrap(),
            PollSince::Time(1764100000123)
        );
        assert_eq!(
            parse_since("1970-01-01T00:00:01Z").unwrap(),
            PollSince::Time(1000)
        );
        assert_eq!(
            parse_since("1970-01-01T01:00:01.5+01:00").unwrap(),
            PollSince::Time(1500)
        );
        assert_eq!(parse_since("").unwrap(), PollSince::Oldest);
        for bad in ["yesterday", "e7Hq:", "-5", "1.5", "2026-13-01T00:00:00Z"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_match_their_documented_types() {
        use crate::engine::StoredMessage;
        let page = PollPage {
            epoch: "e7Hq".into(),
            messages: vec![StoredMessage {
                offset: 3,
                ts: 1764100000123,
                data: r#"{"a":[1,"x\"y"]}"#.into(),
            }],
            cursor: Cursor::new("e7Hq", 3),
            recovered: true,
            more: false,
        };
        let body = |r: Response| async move {
            let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap();
            String::from_utf8(bytes.to_vec()).unwrap()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let channel: ChannelPage =
            serde_json::from_str(&rt.block_on(body(render(("channel", "c\"1"), &page, None))))
                .unwrap();
        assert_eq!(channel.channel, "c\"1");
        assert_eq!(channel.messages[0].cursor, "e7Hq:3");
        assert_eq!(channel.messages[0].data["a"][1], "x\"y");
        let inbox: InboxPage =
            serde_json::from_str(&rt.block_on(body(render(("userId", "u1"), &page, Some(3)))))
                .unwrap();
        assert_eq!(
            (inbox.user_id.as_str(), inbox.cursor.as_str()),
            ("u1", "e7Hq:3")
        );
        assert_eq!(inbox.unread, 3);
    }

    #[test]
    fn documented_bounds_are_the_real_ones() {
        let params = serde_json::to_value(PollQuery::into_params(|| None)).unwrap();
        let bound = |name: &str, key: &str| {
            params
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .map(|p| p["schema"][key].as_f64().unwrap())
                .unwrap()
        };
        assert_eq!(bound("limit", "maximum"), MAX_LIMIT as f64);
        assert_eq!(bound("wait", "maximum"), MAX_WAIT_SECS as f64);
        assert_eq!(bound("limit", "minimum"), 1.0);
    }

    #[test]
    fn limit_and_wait_are_bounded() {
        assert!(parse_params(Some("limit=0")).is_err());
        assert!(parse_params(Some("limit=1001")).is_err());
        assert!(parse_params(Some("wait=61")).is_err());
        assert!(parse_params(Some("wait=-1")).is_err());
        let p = parse_params(Some("since=2999-01-01T00:00:00%2B02:00")).unwrap();
        assert_eq!(p.since, PollSince::Time(32472136800000));
        let p = parse_params(Some("limit=5&wait=2&unknown=1")).unwrap();
        assert_eq!((p.limit, p.wait), (5, Duration::from_secs(2)));
    }
}
