//! The polling fallback (SPEC §5): the same history the live path replays,
//! paged by cursor, with long polls and the seed application's aliases.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_protocol::{validate_channel, ErrorCode};

use super::bearer;
use super::error::ApiError;
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

fn identity(
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

fn render(label: (&str, &str), page: &PollPage) -> Response {
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
        "],\"cursor\":\"{}\",\"recovered\":{},\"more\":{}}}",
        page.cursor, page.recovered, page.more
    ));
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
    node.check_subscribe(&who, &channel)?;
    let stream: Arc<str> = channel.into();
    let page = long_poll(&node, &stream, &params).await?;
    Ok(render(("channel", &stream), &page))
}

/// `GET /api/channels/{channel}/messages`
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
pub(crate) async fn venue_updates(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    gate: PollGate,
) -> Result<Response, ApiError> {
    poll_channel(node, "venue_updates".into(), headers, q, gate).await
}

/// `GET /api/venues/{venueId}/updates` → `venue:{venueId}`
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
    Ok(render(("userId", &user), &page))
}

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
