//! The backend hooks that decide (SPEC §11 "Backend hooks"): the subscribe
//! proxy asks the application's backend whether a user may read a channel
//! of a `subscribe = "proxy"` namespace; the connect proxy ([`connect`])
//! asks who a `connect` without a token is.
//!
//! Fails closed: a backend that cannot be reached, is slow, answers 3xx or
//! 5xx, or answers garbage is an error (1011 / 503), never an allow. Every
//! request is bounded in time (`proxy.timeout`, the wait for a turn
//! included) and in number (`limits.proxy_concurrency`, shared by both
//! proxies); answers are read up to [`MAX_ANSWER_BYTES`].

mod cache;
pub(crate) mod connect;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_protocol::{CommandError, ErrorCode};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{watch, Semaphore};

use crate::auth::Identity;
use crate::config::{Config, SubscribeRule};
use crate::metrics::Metrics;
use crate::node::Node;

/// The largest answer read from the backend.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// The longest a decision is cached, whatever `ttl_s` says.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);

/// How the client reads the channel, as told to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A WebSocket subscribe (or a command on the socket, e.g. presence).
    WebSocket,
    /// An HTTP poll (or another HTTP read of the channel).
    Polling,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Polling => "polling",
        }
    }
}

/// A subscribe decision, or its absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Allow,
    Deny,
    /// No decision: an outage, never cached, never an allow.
    Unavailable,
}

/// Concurrent asks for one key, answered by one request.
struct Flight {
    id: u64,
    answer: watch::Receiver<Option<Answer>>,
}

/// The proxies' shared state: the request budget, the decision cache and
/// the requests in flight.
pub(crate) struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    subscribe_url: Option<String>,
    secret: Option<String>,
    timeout: Duration,
    cache_ttl: Duration,
    /// Requests in flight, both proxies together.
    permits: Semaphore,
    cache: Mutex<cache::Cache>,
    flights: Mutex<HashMap<Arc<str>, Flight>>,
    next_flight: AtomicU64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

/// What the backend said, before it is judged: its status and (for a 200)
/// its body. `None`: no answer in time, or a broken one.
pub(crate) type Reply = Option<(u16, Bytes)>;

impl Proxy {
    pub(crate) fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let p = &config.proxy;
        let l = &config.limits;
        Self {
            inner: Arc::new(Inner {
                subscribe_url: p.subscribe_url.clone(),
                secret: p.secret.clone(),
                timeout: p.timeout,
                cache_ttl: p.cache_ttl.min(MAX_CACHE_TTL),
                permits: Semaphore::new(l.proxy_concurrency.max(1)),
                cache: Mutex::new(cache::Cache::new(
                    l.proxy_cache_entries,
                    metrics.proxy_cache_entries.clone(),
                )),
                flights: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(0),
                metrics,
            }),
        }
    }

    /// One request to the backend (see [`ask`]).
    pub(crate) async fn ask(
        &self,
        http: &reqwest::Client,
        url: &str,
        body: &Value,
        within: Duration,
    ) -> Reply {
        ask(&self.inner, http, url, body, within).await
    }

    /// Asks whether `user` ("" when anonymous) may read `channel`: from
    /// the cache, else by joining the request in flight for the same
    /// (user, channel), else by starting one.
    async fn subscribe(
        &self,
        http: &reqwest::Client,
        user: &str,
        client: Option<&str>,
        channel: &str,
        transport: Transport,
    ) -> Answer {
        let inner = &self.inner;
        let Some(url) = inner.subscribe_url.clone() else {
            // Validation refuses a proxy namespace without a URL.
            return Answer::Unavailable;
        };
        // Channel names hold no newline, so this separates the two parts.
        let key: Arc<str> = format!("{user}\n{channel}").into();
        let mut answer = {
            let mut flights = inner.flights.lock();
            // Looked up under the flights lock: a flight caches its answer
            // before it leaves the map, so a caller finds one or the other.
            if let Some(allow) = inner.cache.lock().get(&key, Instant::now()) {
                inner.metrics.proxy_cache_hits.inc();
                return if allow { Answer::Allow } else { Answer::Deny };
            }
            // A flight whose task is gone without answering (dropped by a
            // runtime shutting down before it ran) is replaced, not joined.
            match flights.get(&key).filter(|f| f.answer.has_changed().is_ok()) {
                Some(flight) => flight.answer.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    let id = inner.next_flight.fetch_add(1, Ordering::Relaxed);
                    flights.insert(
                        key.clone(),
                        Flight {
                            id,
                            answer: rx.clone(),
                        },
                    );
                    let body = serde_json::json!({
                        "user": user,
                        "client": client,
                        "channel": channel,
                        "transport": transport.as_str(),
                    });
                    // Its own task: a caller that goes away (a closed socket,
                    // a dropped poll) must not cancel the answer the others
                    // wait for.
                    tokio::spawn(fly(inner.clone(), http.clone(), url, key, id, body, tx));
                    rx
                }
            }
        };
        let answer = match answer.wait_for(Option::is_some).await {
            Ok(a) => a.unwrap_or(Answer::Unavailable),
            // The flight ended without an answer (a runtime shutting down).
            Err(_) => Answer::Unavailable,
        };
        answer
    }
}

/// Takes the flight out of the map however it ends.
struct Landing {
    inner: Arc<Inner>,
    key: Arc<str>,
    id: u64,
}

impl Drop for Landing {
    fn drop(&mut self) {
        let mut flights = self.inner.flights.lock();
        if flights.get(&self.key).is_some_and(|f| f.id == self.id) {
            flights.remove(&self.key);
        }
    }
}

/// One subscribe request, answered to every caller waiting on `tx`.
async fn fly(
    inner: Arc<Inner>,
    http: reqwest::Client,
    url: String,
    key: Arc<str>,
    id: u64,
    body: Value,
    tx: watch::Sender<Option<Answer>>,
) {
    let landing = Landing {
        inner: inner.clone(),
        key: key.clone(),
        id,
    };
    let reply = ask(&inner, &http, &url, &body, inner.timeout).await;
    let (answer, ttl) = judge_subscribe(reply, inner.cache_ttl);
    let outcome = match answer {
        Answer::Allow => "allow",
        Answer::Deny => "deny",
        Answer::Unavailable => "error",
    };
    inner
        .metrics
        .proxy_requests
        .get_or_create(&[("kind", "subscribe"), ("outcome", outcome)])
        .inc();
    if answer != Answer::Unavailable {
        inner
            .cache
            .lock()
            .insert(key, answer == Answer::Allow, ttl, Instant::now());
    }
    drop(landing);
    let _ = tx.send(Some(answer));
}

/// POSTs `body` to `url` with the secret, waiting for a turn under
/// `limits.proxy_concurrency`, all within `within`. The body is read only
/// for a 200 (the one status whose body means something), up to
/// [`MAX_ANSWER_BYTES`].
async fn ask(
    inner: &Inner,
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    within: Duration,
) -> Reply {
    let request = async {
        let _permit = inner.permits.acquire().await.ok()?;
        let mut req = http.post(url).json(body);
        if let Some(secret) = &inner.secret {
            req = req.bearer_auth(secret);
        }
        let response = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                // Never the body: it carries cookies.
                tracing::warn!(url, error = %e, "backend hook unreachable");
                return None;
            }
        };
        let status = response.status().as_u16();
        if status != 200 {
            return Some((status, Bytes::new()));
        }
        match crate::outbound::read_capped(response, MAX_ANSWER_BYTES).await {
            Ok(body) => Some((status, body)),
            Err(e) => {
                tracing::warn!(url, error = %e, "backend hook answer unreadable");
                None
            }
        }
    };
    match tokio::time::timeout(within, request).await {
        Ok(reply) => reply,
        Err(_) => {
            tracing::warn!(url, timeout = ?within, "backend hook did not answer in time");
            None
        }
    }
}

/// What a subscribe reply means, and how long to remember it.
fn judge_subscribe(reply: Reply, default_ttl: Duration) -> (Answer, Duration) {
    let Some((status, body)) = reply else {
        return (Answer::Unavailable, Duration::ZERO);
    };
    match status {
        200 => {
            let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(&body) else {
                return (Answer::Unavailable, Duration::ZERO);
            };
            let allow = match answer.get("allow") {
                Some(Value::Bool(allow)) => *allow,
                _ => return (Answer::Unavailable, Duration::ZERO),
            };
            let ttl = match answer.get("ttl_s") {
                None | Some(Value::Null) => default_ttl,
                Some(v) => match v.as_u64() {
                    Some(s) => Duration::from_secs(s.min(MAX_CACHE_TTL.as_secs())),
                    None => return (Answer::Unavailable, Duration::ZERO),
                },
            };
            (if allow { Answer::Allow } else { Answer::Deny }, ttl)
        }
        201..=299 | 400..=499 => (Answer::Deny, default_ttl),
        _ => (Answer::Unavailable, Duration::ZERO),
    }
}

impl Node {
    /// Whether `who` may subscribe to (or poll, or ask the presence of)
    /// `channel`: [`Node::check_subscribe`], and for a namespace with
    /// `subscribe = "proxy"` the backend's answer. `client` is the
    /// connection's id (`None` for HTTP). 1002 when denied; 1011 when the
    /// backend gave no decision.
    pub async fn authorize_subscribe(
        &self,
        who: &Identity,
        client: Option<&str>,
        channel: &str,
        transport: Transport,
    ) -> Result<(), CommandError> {
        if self.config.dev || self.namespace(channel).subscribe != SubscribeRule::Proxy {
            return self.check_subscribe(who, channel);
        }
        // Admin tokens read everything, as with `claim`.
        if who.admin && who.user.is_some() {
            return Ok(());
        }
        let user = who.user.as_deref().unwrap_or("");
        match self
            .proxy
            .subscribe(&self.proxy_client, user, client, channel, transport)
            .await
        {
            Answer::Allow => Ok(()),
            Answer::Deny => Err(CommandError::new(
                ErrorCode::PermissionDenied,
                format!("permission denied for channel {channel}"),
            )),
            Answer::Unavailable => Err(CommandError::new(
                ErrorCode::Internal,
                "the application's backend gave no decision for this channel; try again",
            )),
        }
    }

    /// Whether `who` may publish to `channel` from a client connection:
    /// the namespace must allow it, and `who` must be allowed to read it.
    pub async fn authorize_client_publish(
        &self,
        who: &Identity,
        client: Option<&str>,
        channel: &str,
    ) -> Result<(), CommandError> {
        if !self.config.dev && !self.namespace(channel).client_publish {
            return Err(CommandError::new(
                ErrorCode::PermissionDenied,
                format!("clients may not publish to channel {channel}"),
            ));
        }
        self.authorize_subscribe(who, client, channel, Transport::WebSocket)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(60);

    fn judge(status: u16, body: &str) -> (Answer, Duration) {
        judge_subscribe(Some((status, Bytes::from(body.to_owned()))), D)
    }

    #[test]
    fn only_a_200_with_allow_true_allows() {
        assert_eq!(judge(200, r#"{"allow":true}"#), (Answer::Allow, D));
        assert_eq!(
            judge(200, r#"{"allow":true,"ttl_s":5}"#),
            (Answer::Allow, Duration::from_secs(5))
        );
        assert_eq!(
            judge(200, r#"{"allow":true,"ttl_s":1e12}"#).0,
            Answer::Unavailable
        );
        assert_eq!(
            judge(200, r#"{"allow":true,"ttl_s":99999999999}"#),
            (Answer::Allow, MAX_CACHE_TTL)
        );
        assert_eq!(judge(200, r#"{"allow":false}"#).0, Answer::Deny);
        assert_eq!(judge(204, "").0, Answer::Deny);
        assert_eq!(judge(403, "").0, Answer::Deny);
        for (status, body) in [
            (200, "allow"),
            (200, "[true]"),
            (200, r#"{"allow":"true"}"#),
            (200, r#"{"allow":true,"ttl_s":-1}"#),
            (200, "{}"),
            (302, ""),
            (500, ""),
            (503, ""),
        ] {
            assert_eq!(
                judge(status, body).0,
                Answer::Unavailable,
                "{status} {body}"
            );
        }
        assert_eq!(judge_subscribe(None, D).0, Answer::Unavailable);
    }
}
