//! The backend hooks that decide (SPEC §11 "Backend hooks") against the
//! real binary and a stub backend (axum on loopback) that records what it
//! is asked: the subscribe proxy (allow, deny, cache, outages, polls, the
//! request budget and shared requests) and the connect proxy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use herald_client::Client;
use serde_json::{json, Value};

use crate::redis::free_port;
use crate::util::*;

const PROXY_SECRET: &str = "proxy-secret-0123456789";

/// What the stub answers: a status, a body, after a delay.
#[derive(Clone)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    delay: Duration,
}

fn answer(status: u16, body: Value) -> Answer {
    Answer {
        status,
        body: body.to_string().into_bytes(),
        delay: Duration::ZERO,
    }
}

type Decide = dyn Fn(&str, &Value) -> Answer + Send + Sync;

/// One request the stub got.
#[derive(Debug, Clone)]
struct Asked {
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Value,
}

struct StubState {
    decide: Box<Decide>,
    asked: Mutex<Vec<Asked>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A stub backend on 127.0.0.1; dropped with the test's runtime.
#[derive(Clone)]
struct Stub {
    url: String,
    state: Arc<StubState>,
}

impl Stub {
    async fn start(decide: impl Fn(&str, &Value) -> Answer + Send + Sync + 'static) -> Self {
        let state = Arc::new(StubState {
            decide: Box::new(decide),
            asked: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    fn asked(&self) -> Vec<Asked> {
        self.state.asked.lock().unwrap().clone()
    }

    /// Requests asked about `channel`.
    fn asked_for(&self, channel: &str) -> usize {
        self.asked()
            .iter()
            .filter(|a| a.body["channel"] == channel)
            .count()
    }

    fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

async fn handle(
    State(state): State<Arc<StubState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Vec<u8>) {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.asked.lock().unwrap().push(Asked {
        path: uri.path().to_owned(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: body.clone(),
    });
    let a = (state.decide)(uri.path(), &body);
    tokio::time::sleep(a.delay).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    (StatusCode::from_u16(a.status).unwrap(), a.body)
}

/// A memory-engine server with the proxy pointed at `base` and `proxy`
/// namespaces `vip` and `room` (`room` keeps presence, clients publish).
fn start(dir: &std::path::Path, base: &str, extra_proxy: &str, extra: &str) -> Proc {
    let text = format!(
        "listen = \"127.0.0.1:0\"\n{extra}\n\
         [auth]\nhmac_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\nallow_anonymous = true\n\
         [engine]\nkind = \"memory\"\n\
         [proxy]\nsubscribe_url = \"{base}/subscribe\"\nsecret = \"{PROXY_SECRET}\"\n{extra_proxy}\n\
         [[namespaces]]\nname = \"vip\"\nsubscribe = \"proxy\"\n\
         [[namespaces]]\nname = \"room\"\nsubscribe = \"proxy\"\npresence = true\nclient_publish = true\n"
    );
    let path = dir.join("herald.toml");
    std::fs::write(&path, text).unwrap();
    Proc::start(dir, &["--config", path.to_str().unwrap()])
}

async fn connect(ws: &str, user: &str) -> (Client, String) {
    let mut c = Client::open(ws).await.unwrap();
    let connected = c.connect(Some(&user_token(user))).await.unwrap();
    assert_eq!(connected["type"], "connected", "{connected}");
    let client = connected["client"].as_str().unwrap().to_owned();
    (c, client)
}

/// The error code of a reply (0 when it is not an error).
fn code(reply: &Value) -> u64 {
    if reply["type"] == "error" {
        reply["code"].as_u64().unwrap()
    } else {
        0
    }
}

/// Allows `vip:open*`, denies the rest with `allow:false`; `vip:short` for
/// one second, `vip:never` not cached (`ttl_s: 0`).
fn policy(_: &str, body: &Value) -> Answer {
    let channel = body["channel"].as_str().unwrap_or_default();
    match channel {
        "vip:short" => answer(200, json!({"allow": true, "ttl_s": 1})),
        "vip:never" => answer(200, json!({"allow": true, "ttl_s": 0})),
        c if c.starts_with("vip:open") || c.starts_with("room:") => {
            answer(200, json!({"allow": true}))
        }
        "vip:forbidden" => answer(403, json!({"error": "no"})),
        _ => answer(200, json!({"allow": false})),
    }
}

#[tokio::test]
async fn subscribe_asks_the_backend_exactly_as_specified_and_caches_its_decisions() {
    let stub = Stub::start(policy).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &stub.url, "", "");
    let ws = server.ws_url();

    let (mut alice, alice_id) = connect(&ws, "alice").await;
    let r = alice.subscribe("vip:open", None).await.unwrap();
    assert_eq!(r["type"], "subscribed", "{r}");
    let asked = stub.asked();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].path, "/subscribe");
    assert_eq!(
        asked[0].authorization.as_deref(),
        Some(format!("Bearer {PROXY_SECRET}").as_str())
    );
    assert_eq!(asked[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(
        asked[0].body,
        json!({"user": "alice", "client": alice_id, "channel": "vip:open", "transport": "websocket"})
    );

    // Denied: by allow:false and by a 4xx; both 1002.
    for channel in ["vip:closed", "vip:forbidden"] {
        let r = alice.subscribe(channel, None).await.unwrap();
        assert_eq!(code(&r), 1002, "{channel}: {r}");
    }
    assert_eq!(stub.asked().len(), 3);

    // Cached, allows and denials alike: another connection of alice is
    // answered without asking again.
    let (mut again, _) = connect(&ws, "alice").await;
    assert_eq!(
        again.subscribe("vip:open", None).await.unwrap()["type"],
        "subscribed"
    );
    assert_eq!(
        code(&again.subscribe("vip:closed", None).await.unwrap()),
        1002
    );
    assert_eq!(
        code(&again.subscribe("vip:forbidden", None).await.unwrap()),
        1002
    );
    assert_eq!(
        stub.asked().len(),
        3,
        "cached decisions are not asked again"
    );
    // Per user: bob is asked about.
    let (mut bob, _) = connect(&ws, "bob").await;
    assert_eq!(
        bob.subscribe("vip:open", None).await.unwrap()["type"],
        "subscribed"
    );
    assert_eq!(stub.asked_for("vip:open"), 2);

    // ttl_s 0: never cached.
    for c in [&mut alice, &mut again] {
        assert_eq!(
            c.subscribe("vip:never", None).await.unwrap()["type"],
            "subscribed"
        );
    }
    assert_eq!(stub.asked_for("vip:never"), 2);

    // ttl_s 1: remembered for a second, then asked again.
    assert_eq!(
        alice.subscribe("vip:short", None).await.unwrap()["type"],
        "subscribed"
    );
    assert_eq!(
        again.subscribe("vip:short", None).await.unwrap()["type"],
        "subscribed"
    );
    assert_eq!(stub.asked_for("vip:short"), 1);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    while stub.asked_for("vip:short") < 2 {
        assert!(Instant::now() < deadline, "ttl_s 1 was never asked again");
        // A new connection each time: the same one would be 1007.
        let (mut c, _) = connect(&ws, "alice").await;
        assert_eq!(
            c.subscribe("vip:short", None).await.unwrap()["type"],
            "subscribed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "asked again too soon"
    );

    // An admin token subscribes anywhere without asking.
    let admin = herald_server::auth::sign_hs256(
        SECRET,
        &herald_server::auth::Claims {
            sub: "root".into(),
            exp: Some(herald_server::auth::unix_now() + 3600),
            iat: None,
            role: Some("admin".into()),
            channels: None,
        },
    )
    .unwrap();
    let before = stub.asked().len();
    let mut root = Client::open(&ws).await.unwrap();
    assert_eq!(
        root.connect(Some(&admin)).await.unwrap()["type"],
        "connected"
    );
    assert_eq!(
        root.subscribe("vip:admin-only", None).await.unwrap()["type"],
        "subscribed"
    );
    assert_eq!(stub.asked().len(), before);

    // Anonymous: asked with user "".
    let mut anon = Client::open(&ws).await.unwrap();
    let connected = anon.connect(None).await.unwrap();
    let r = anon.subscribe("vip:open-anon", None).await.unwrap();
    assert_eq!(r["type"], "subscribed", "{r}");
    let last = stub.asked().last().unwrap().body.clone();
    assert_eq!(
        last,
        json!({"user": "", "client": connected["client"], "channel": "vip:open-anon", "transport": "websocket"})
    );

    let http = http();
    let metrics = scrape(&http, &server.origin).await;
    assert!(
        metric_in(
            &metrics,
            "herald_proxy_requests_total{kind=\"subscribe\",outcome=\"allow\"}"
        ) >= 4.0
    );
    assert!(metric_in(&metrics, "herald_proxy_cache_hits_total") >= 3.0);
    assert!(metric_in(&metrics, "herald_proxy_cache_entries") >= 1.0);
}

/// A poll of `channel` as `user`: status, Retry-After, body.
async fn poll(
    http: &reqwest::Client,
    origin: &str,
    channel: &str,
    user: &str,
) -> (u16, Option<String>, Value) {
    let r = http
        .get(format!("{origin}/api/channels/{channel}/messages"))
        .bearer_auth(user_token(user))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn polls_and_presence_of_a_proxy_channel_are_asked_too() {
    let stub = Stub::start(policy).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &stub.url, "", "");
    let http = http();

    let (status, _, body) = poll(&http, &server.origin, "vip:open", "dana").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        stub.asked()[0].body,
        json!({"user": "dana", "client": null, "channel": "vip:open", "transport": "polling"})
    );
    let (status, _, body) = poll(&http, &server.origin, "vip:closed", "dana").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], 1002);

    // HTTP presence asks as a poll; the API key does not ask.
    let presence = |channel: &str, bearer: String| {
        http.get(format!("{}/api/channels/{channel}/presence", server.origin))
            .bearer_auth(bearer)
            .send()
    };
    assert_eq!(
        presence("room:1", user_token("dana"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(stub.asked_for("room:1"), 1);
    assert_eq!(
        presence("room:x", API_KEY.into()).await.unwrap().status(),
        200
    );
    assert_eq!(stub.asked_for("room:x"), 0);
    // On the socket: presence and client publish ask (then hit the cache).
    let (mut c, _) = connect(&server.ws_url(), "erin").await;
    let r = c
        .request(json!({"type": "presence", "channel": "room:2"}))
        .await
        .unwrap();
    assert_eq!(r["type"], "presence", "{r}");
    let r = c
        .request(json!({"type": "publish", "channel": "room:2", "data": {"hi": 1}}))
        .await
        .unwrap();
    assert_eq!(r["type"], "published", "{r}");
    assert_eq!(stub.asked_for("room:2"), 1);
    let r = c
        .request(json!({"type": "presence", "channel": "vip:closed"}))
        .await
        .unwrap();
    assert_eq!(code(&r), 1002, "{r}");
}

#[tokio::test]
async fn a_backend_that_is_down_is_1011_and_503_never_an_allow() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: connection refused.
    let base = format!("http://127.0.0.1:{}", free_port());
    let server = start(dir.path(), &base, "", "");
    let (mut c, _) = connect(&server.ws_url(), "frank").await;
    for _ in 0..2 {
        let r = c.subscribe("vip:open", None).await.unwrap();
        assert_eq!(code(&r), 1011, "{r}");
    }
    let http = http();
    let (status, retry, body) = poll(&http, &server.origin, "vip:open", "frank").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], 1011);
    assert_eq!(retry.as_deref(), Some("1"));
    let m = scrape(&http, &server.origin).await;
    assert_eq!(
        metric_in(
            &m,
            "herald_proxy_requests_total{kind=\"subscribe\",outcome=\"error\"}"
        ),
        3.0,
        "outages are never cached"
    );
    assert_eq!(
        metric_in(
            &m,
            "herald_proxy_requests_total{kind=\"subscribe\",outcome=\"allow\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn slow_garbage_oversized_and_5xx_answers_are_1011_never_an_allow() {
    let stub = Stub::start(|_, body| {
        let mut allow = answer(200, json!({"allow": true}));
        match body["channel"].as_str().unwrap_or_default() {
            "vip:slow" => {
                allow.delay = Duration::from_secs(5);
                allow
            }
            "vip:garbage" => Answer {
                body: b"<html>allow</html>".to_vec(),
                ..allow
            },
            "vip:array" => answer(200, json!([true])),
            "vip:stringly" => answer(200, json!({"allow": "true"})),
            "vip:huge" => answer(200, json!({"allow": true, "pad": "x".repeat(17 * 1024)})),
            "vip:error" => answer(500, json!({"allow": true})),
            "vip:unavailable" => answer(503, json!({"allow": true})),
            "vip:moved" => answer(302, json!({"allow": true})),
            _ => allow,
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &stub.url, "timeout = \"300ms\"", "");
    let (mut c, _) = connect(&server.ws_url(), "gina").await;
    let started = Instant::now();
    let r = c.subscribe("vip:slow", None).await.unwrap();
    assert_eq!(code(&r), 1011, "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "proxy.timeout not kept"
    );
    for channel in [
        "vip:garbage",
        "vip:array",
        "vip:stringly",
        "vip:huge",
        "vip:error",
        "vip:unavailable",
        "vip:moved",
    ] {
        for round in 0..2 {
            let r = c.subscribe(channel, None).await.unwrap();
            assert_eq!(code(&r), 1011, "{channel}: {r}");
            assert_eq!(stub.asked_for(channel), round + 1, "{channel}: not cached");
        }
    }
    // The socket is fine, and a good answer still allows.
    assert_eq!(
        c.subscribe("vip:fine", None).await.unwrap()["type"],
        "subscribed"
    );
}

/// Sends `subscribe` for each of `channels` without waiting, then reads
/// every reply; their types by channel.
async fn subscribe_all(c: &mut Client, channels: &[String]) -> HashMap<String, Value> {
    for (i, channel) in channels.iter().enumerate() {
        c.send(&json!({"type": "subscribe", "id": 1000 + i, "channel": channel}))
            .await
            .unwrap();
    }
    let mut replies = HashMap::new();
    while replies.len() < channels.len() {
        let f = c.next_frame().await.unwrap();
        if let Some(id) = f["id"].as_u64().filter(|id| *id >= 1000) {
            replies.insert(channels[(id - 1000) as usize].clone(), f);
        }
    }
    replies
}

#[tokio::test]
async fn a_burst_of_subscribes_shares_requests_and_keeps_to_proxy_concurrency() {
    let stub = Stub::start(|_, _| Answer {
        delay: Duration::from_millis(100),
        ..answer(200, json!({"allow": true}))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &stub.url,
        "timeout = \"30s\"",
        "[limits]\nproxy_concurrency = 4\ncommands_per_second = 1000\nburst = 1000",
    );
    let ws = server.ws_url();

    // 30 connections of one user, 10 channels each, all at once: 300
    // subscribes, 10 (user, channel) keys, 10 requests.
    let channels: Vec<String> = (0..10).map(|i| format!("vip:shared-{i}")).collect();
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let (ws, channels) = (ws.clone(), channels.clone());
        tasks.push(tokio::spawn(async move {
            let (mut c, _) = connect(&ws, "hank").await;
            let replies = subscribe_all(&mut c, &channels).await;
            assert!(replies.values().all(|r| r["type"] == "subscribed"));
            c
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(stub.asked().len(), 10, "one request per (user, channel)");
    assert!(
        stub.max_in_flight() <= 4,
        "max in flight {}",
        stub.max_in_flight()
    );

    // 40 users, 5 channels each, every key new: 200 requests, never more
    // than limits.proxy_concurrency at once.
    let mut tasks = Vec::new();
    for u in 0..40 {
        let ws = ws.clone();
        tasks.push(tokio::spawn(async move {
            let (mut c, _) = connect(&ws, &format!("user-{u}")).await;
            let channels: Vec<String> = (0..5).map(|i| format!("vip:own-{u}-{i}")).collect();
            let replies = subscribe_all(&mut c, &channels).await;
            assert!(replies.values().all(|r| r["type"] == "subscribed"));
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(stub.asked().len(), 210);
    let max = stub.max_in_flight();
    assert!(max <= 4, "max in flight {max} > proxy_concurrency");
    assert!(
        max >= 2,
        "the requests never overlapped ({max}): the test proves nothing"
    );
}

/// Answers the connect proxy: `sid=good` is carol, `sid=anon` anonymous,
/// `sid=slow` too late, `sid=broken` a 500, anything else a 401.
fn connect_policy(path: &str, body: &Value) -> Answer {
    if path == "/subscribe" {
        return answer(200, json!({"allow": true}));
    }
    let cookie = body["headers"]["cookie"].as_str().unwrap_or_default();
    match cookie {
        "sid=good" => answer(200, json!({"user": "carol", "info": {"name": "Carol"}})),
        "sid=anon" => answer(200, json!({"user": ""})),
        "sid=garbage" => answer(200, json!("carol")),
        "sid=bigger" => answer(
            200,
            json!({"user": "carol", "info": {"pad": "x".repeat(2000)}}),
        ),
        "sid=slow" => Answer {
            delay: Duration::from_secs(5),
            ..answer(200, json!({"user": "carol"}))
        },
        "sid=broken" => answer(500, json!({"user": "carol"})),
        _ => answer(401, json!({"error": "no session"})),
    }
}

fn start_connect(dir: &std::path::Path, stub: &Stub) -> Proc {
    start(
        dir,
        &stub.url,
        &format!(
            "connect_url = \"{}/connect\"\ntimeout = \"500ms\"",
            stub.url
        ),
        "",
    )
}

async fn open_with_cookie(ws: &str, cookie: &str) -> Client {
    Client::open_with_headers(
        ws,
        &[
            ("cookie", cookie),
            ("origin", "https://app.example.com"),
            ("user-agent", "proxy-test/1.0"),
        ],
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_cookie_connect_is_authenticated_by_the_backend() {
    let stub = Stub::start(connect_policy).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_connect(dir.path(), &stub);
    let ws = server.ws_url();

    let mut c = open_with_cookie(&ws, "sid=good").await;
    let connected = c
        .request(json!({"type": "connect", "data": {"app": "web", "n": [1, 2]}}))
        .await
        .unwrap();
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_eq!(connected["user"], "carol");
    assert!(connected["notifications"].is_object(), "{connected}");
    let asked = stub.asked();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].path, "/connect");
    assert_eq!(
        asked[0].authorization.as_deref(),
        Some(format!("Bearer {PROXY_SECRET}").as_str())
    );
    assert_eq!(
        asked[0].body,
        json!({
            "client": connected["client"],
            "data": {"app": "web", "n": [1, 2]},
            "headers": {
                "cookie": "sid=good",
                "origin": "https://app.example.com",
                "user-agent": "proxy-test/1.0",
            },
        })
    );

    // The socket is carol's: her notifications arrive, the subscribe proxy
    // is asked as her.
    let http = http();
    let r = http
        .post(format!("{}/api/users/carol/notifications", server.origin))
        .bearer_auth(API_KEY)
        .json(&json!({"hello": "carol"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pushed = c.next_push().await.unwrap();
    assert_eq!(pushed["type"], "notification");
    assert_eq!(pushed["data"], json!({"hello": "carol"}));
    assert_eq!(
        c.subscribe("vip:x", None).await.unwrap()["type"],
        "subscribed"
    );
    assert_eq!(stub.asked().last().unwrap().body["user"], "carol");
    // Her presence entry carries the backend's info.
    let r = c.subscribe("room:9", None).await.unwrap();
    assert_eq!(r["type"], "subscribed", "{r}");
    let p = c
        .request(json!({"type": "presence", "channel": "room:9"}))
        .await
        .unwrap();
    assert_eq!(p["clients"][0]["info"], json!({"name": "Carol"}), "{p}");

    // An upgrade with more headers than the accept loop parses goes through
    // hyper: its headers are forwarded the same.
    let pads: Vec<(String, String)> = (0..60)
        .map(|i| (format!("x-pad-{i}"), "1".into()))
        .collect();
    let mut headers: Vec<(&str, &str)> =
        pads.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    headers.push(("cookie", "sid=good"));
    headers.push(("user-agent", "proxy-test/2.0"));
    let mut slow_path = Client::open_with_headers(&ws, &headers).await.unwrap();
    let r = slow_path.connect(None).await.unwrap();
    assert_eq!(r["user"], "carol", "{r}");
    assert_eq!(
        stub.asked().last().unwrap().body["headers"],
        json!({"cookie": "sid=good", "user-agent": "proxy-test/2.0"})
    );

    // Without data: null is forwarded; without headers: none.
    let before = stub.asked().len();
    let mut bare = Client::open(&ws).await.unwrap();
    let (d, code) = {
        bare.send(&json!({"type": "connect", "id": 1}))
            .await
            .unwrap();
        bare.until_closed().await.unwrap()
    };
    assert_eq!(d.unwrap()["code"], 4001);
    assert_eq!(code, Some(4001));
    let asked = stub.asked();
    assert_eq!(asked.len(), before + 1);
    assert_eq!(asked[before].body["data"], Value::Null);
    assert_eq!(asked[before].body["headers"], json!({}));

    // A connect with a token is not asked about.
    let before = stub.asked().len();
    let mut t = open_with_cookie(&ws, "sid=good").await;
    let r = t.connect(Some(&user_token("ivy"))).await.unwrap();
    assert_eq!(r["user"], "ivy");
    assert_eq!(stub.asked().len(), before);

    // {"user":""} stays anonymous (allowed here).
    let mut a = open_with_cookie(&ws, "sid=anon").await;
    let r = a.connect(None).await.unwrap();
    assert_eq!(r["type"], "connected", "{r}");
    assert!(r.get("user").is_none() || r["user"].is_null(), "{r}");
}

/// Connects with `cookie` and reads what follows: the error, the
/// `disconnect` and the close code.
async fn refused(ws: &str, cookie: &str) -> (Value, Value, Option<u16>) {
    let mut c = open_with_cookie(ws, cookie).await;
    let error = c.connect(None).await.unwrap();
    let (disconnect, code) = c.until_closed().await.unwrap();
    (error, disconnect.unwrap_or(Value::Null), code)
}

#[tokio::test]
async fn a_connect_the_backend_denies_is_4001_and_one_it_cannot_answer_is_4000() {
    let stub = Stub::start(connect_policy).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_connect(dir.path(), &stub);
    let ws = server.ws_url();

    for cookie in ["sid=bad", "sid=bigger"] {
        let (error, disconnect, close) = refused(&ws, cookie).await;
        assert_eq!(error["code"], 1001, "{cookie}: {error}");
        assert_eq!(disconnect["code"], 4001, "{cookie}: {disconnect}");
        assert_eq!(disconnect["reconnect"], false);
        assert_eq!(close, Some(4001));
    }
    // A cookie past the 8 KiB the server keeps is left out whole (the
    // others still go): the backend sees no session.
    let big = format!("sid=good; pad={}", "x".repeat(9 * 1024));
    let (error, disconnect, close) = refused(&ws, &big).await;
    assert_eq!(error["code"], 1001, "{error}");
    assert_eq!(
        (disconnect["code"].as_u64(), close),
        (Some(4001), Some(4001))
    );
    assert_eq!(
        stub.asked().last().unwrap().body["headers"],
        json!({"origin": "https://app.example.com", "user-agent": "proxy-test/1.0"})
    );

    let started = Instant::now();
    for cookie in ["sid=slow", "sid=broken", "sid=garbage"] {
        let (error, disconnect, close) = refused(&ws, cookie).await;
        assert_eq!(error["code"], 1011, "{cookie}: {error}");
        assert_eq!(disconnect["code"], 4000, "{cookie}: {disconnect}");
        assert_eq!(disconnect["reconnect"], true);
        assert_eq!(close, Some(4000));
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "proxy.timeout not kept"
    );
    let m = scrape(&http(), &server.origin).await;
    assert_eq!(
        metric_in(
            &m,
            "herald_proxy_requests_total{kind=\"connect\",outcome=\"deny\"}"
        ),
        3.0
    );
    assert_eq!(
        metric_in(
            &m,
            "herald_proxy_requests_total{kind=\"connect\",outcome=\"error\"}"
        ),
        3.0
    );
    drop(server);

    // The backend down entirely: 1011, then 4000.
    let dir = tempfile::tempdir().unwrap();
    let base = format!("http://127.0.0.1:{}", free_port());
    let server = start(
        dir.path(),
        &base,
        &format!("connect_url = \"{base}/connect\""),
        "",
    );
    let (error, disconnect, close) = refused(&server.ws_url(), "sid=good").await;
    assert_eq!(error["code"], 1011, "{error}");
    assert_eq!(disconnect["code"], 4000);
    assert_eq!(close, Some(4000));
}

#[tokio::test]
async fn an_anonymous_answer_is_denied_where_anonymous_connections_are_not_allowed() {
    let stub = Stub::start(connect_policy).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[auth]\nhmac_secret = \"{SECRET}\"\n[engine]\nkind = \"memory\"\n\
         [proxy]\nconnect_url = \"{}/connect\"\n",
        stub.url
    );
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, text).unwrap();
    let server = Proc::start(dir.path(), &["--config", path.to_str().unwrap()]);
    let (error, disconnect, close) = refused(&server.ws_url(), "sid=anon").await;
    assert_eq!(error["code"], 1001, "{error}");
    assert_eq!(disconnect["code"], 4001);
    assert_eq!(close, Some(4001));
    // A named user is fine there.
    let mut c = open_with_cookie(&server.ws_url(), "sid=good").await;
    assert_eq!(c.connect(None).await.unwrap()["user"], "carol");
}
