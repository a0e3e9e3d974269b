//! The connect proxy: with `proxy.connect_url` set, a `connect` without a
//! token is authenticated by the application's backend, from the frame's
//! `data` and the upgrade request's cookie, origin and user-agent.
//!
//! The headers are kept only when `connect_url` is set, at most
//! [`MAX_HEADER_BYTES`] of them, only until `connect`, and never logged:
//! a cookie is a credential.

use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use herald_protocol::{validate_user_id, CommandError, ErrorCode};
use serde_json::{Map, Value};

use crate::auth::{Identity, MAX_INFO_BYTES};
use crate::config::Config;
use crate::node::Node;

/// The most header bytes kept per connection for the connect proxy. A
/// cookie that does not fit is dropped whole (a cut one would be garbage),
/// so the backend sees no session and denies.
pub(crate) const MAX_HEADER_BYTES: usize = 8 * 1024;

/// The upgrade request's headers the connect proxy forwards.
pub(crate) struct UpgradeHeaders {
    /// When the socket was accepted: `connect` must finish within
    /// `limits.connect_timeout` of it, the backend's answer included.
    at: Instant,
    fields: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for UpgradeHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: the values are credentials.
        let names: Vec<_> = self.fields.iter().map(|(n, _)| *n).collect();
        f.debug_struct("UpgradeHeaders")
            .field("names", &names)
            .finish_non_exhaustive()
    }
}

impl UpgradeHeaders {
    /// The forwarded headers of an upgrade, when `proxy.connect_url` is set.
    pub(crate) fn capture(config: &Config, headers: &HeaderMap) -> Option<Box<Self>> {
        config.proxy.connect_url.as_ref()?;
        let mut fields = Vec::new();
        let mut budget = MAX_HEADER_BYTES;
        // Cookie last: the small ones always fit.
        for (name, key) in [
            (header::ORIGIN, "origin"),
            (header::USER_AGENT, "user-agent"),
            (header::COOKIE, "cookie"),
        ] {
            // HTTP/1.1 sends one Cookie header; should there be several,
            // they are one list (RFC 6265 §5.4).
            let sep = if key == "cookie" { "; " } else { ", " };
            let mut value = String::new();
            for v in headers.get_all(&name) {
                let Ok(v) = v.to_str() else { continue };
                if !value.is_empty() {
                    value.push_str(sep);
                }
                value.push_str(v);
            }
            if value.is_empty() {
                continue;
            }
            if value.len() > budget {
                tracing::debug!(header = key, "upgrade header too large to forward; dropped");
                continue;
            }
            budget -= value.len();
            fields.push((key, value));
        }
        Some(Box::new(Self {
            at: Instant::now(),
            fields,
        }))
    }
}

/// How a proxied `connect` ends.
pub(crate) enum Connect {
    /// The backend named the client (or kept it anonymous).
    Identity(Identity),
    /// The backend said no: 1001, then 4001.
    Denied(CommandError),
    /// No decision (unreachable, slow, 5xx, garbage): 1011, then 4000, so
    /// clients retry instead of taking an outage for a sign-out.
    Unavailable(CommandError),
}

fn denied(message: &str) -> Connect {
    Connect::Denied(CommandError::new(ErrorCode::Unauthorized, message))
}

fn unavailable() -> Connect {
    Connect::Unavailable(CommandError::new(
        ErrorCode::Internal,
        "the application's backend could not authenticate this connection; try again",
    ))
}

impl Node {
    /// Asks `proxy.connect_url` who connection `client` is.
    pub(crate) async fn authenticate_connect(
        &self,
        client: &str,
        data: Option<&serde_json::value::RawValue>,
        upgrade: Option<&UpgradeHeaders>,
    ) -> Connect {
        let Some(url) = self.config.proxy.connect_url.clone() else {
            return unavailable();
        };
        let mut headers = Map::new();
        for (name, value) in upgrade.map(|u| u.fields.as_slice()).unwrap_or_default() {
            headers.insert((*name).to_owned(), Value::String(value.clone()));
        }
        let data = data
            .and_then(|d| serde_json::from_str::<Value>(d.get()).ok())
            .unwrap_or(Value::Null);
        let body = serde_json::json!({"client": client, "data": data, "headers": headers});
        // The connect deadline bounds the whole connect, the backend's turn
        // included; the session does not watch its timer meanwhile.
        let mut within = self.config.proxy.timeout;
        if let Some(u) = upgrade {
            let left = (u.at + self.config.limits.connect_timeout)
                .saturating_duration_since(Instant::now());
            within = within.min(left.max(Duration::from_millis(1)));
        }
        let reply = self
            .proxy
            .ask(&self.proxy_client, &url, &body, within)
            .await;
        let outcome = self.judge_connect(reply);
        let label = match outcome {
            Connect::Identity(_) => "allow",
            Connect::Denied(_) => "deny",
            Connect::Unavailable(_) => "error",
        };
        self.metrics
            .proxy_requests
            .get_or_create(&[("kind", "connect"), ("outcome", label)])
            .inc();
        outcome
    }

    fn judge_connect(&self, reply: super::Reply) -> Connect {
        let Some((status, body)) = reply else {
            return unavailable();
        };
        match status {
            200 => {}
            201..=299 | 400..=499 => {
                return denied("the application's backend refused this connection")
            }
            _ => return unavailable(),
        }
        let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(&body) else {
            return unavailable();
        };
        let user = match answer.get("user") {
            None | Some(Value::Null) => {
                return denied("the application's backend named no user");
            }
            Some(Value::String(u)) if u.is_empty() => None,
            Some(Value::String(u)) => {
                if validate_user_id(u).is_err() {
                    return denied("the application's backend named an invalid user id");
                }
                Some(u.clone())
            }
            Some(_) => return unavailable(),
        };
        if user.is_none() && !(self.config.dev || self.config.auth.allow_anonymous) {
            return denied("anonymous connections are not allowed");
        }
        let info = match answer.get("info") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => {
                let text = v.to_string();
                if text.len() > MAX_INFO_BYTES {
                    return denied("the application's backend gave an info larger than 1024 bytes");
                }
                Some(text.into())
            }
            Some(_) => return unavailable(),
        };
        Connect::Identity(Identity {
            user,
            info,
            ..Identity::default()
        })
    }
}
