//! The occupancy and online webhooks (SPEC §11) against the real binary and
//! a stub receiver: `channel_occupied` / `channel_vacated` /
//! `user_online` / `user_offline` on one node, signed; a refused event
//! comes again under its id; a full queue counts what it drops; on two
//! nodes sharing Redis each transition is sent once per cluster; SIGTERM
//! delivers the last events before exit; a killed node's channels and users
//! are released by a survivor.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use herald_client::Client;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::redis::{one, redis_cli, until, LocalCluster, Prefix, SHARED_REDIS};
use crate::util::*;

const HOOK_SECRET: &str = "webhook-secret-0123456789";
const ALL: &str = r#"["channel_occupied", "channel_vacated", "user_online", "user_offline"]"#;

/// What the stub receiver saw: every attempt, in order of arrival.
#[derive(Default)]
struct Seen {
    attempts: std::sync::Mutex<Vec<Value>>,
    /// Answer 500 to this many attempts first.
    refuse: AtomicUsize,
    /// Hold each answer this long.
    delay: std::sync::Mutex<Duration>,
}

struct Receiver {
    url: String,
    seen: Arc<Seen>,
}

impl Receiver {
    async fn start() -> Self {
        let seen = Arc::new(Seen::default());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(take))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            seen,
        }
    }

    fn config(&self) -> String {
        format!(
            "[[webhooks]]\nurl = \"{}\"\nsecret = \"{HOOK_SECRET}\"\nevents = {ALL}\n",
            self.url
        )
    }

    fn attempts(&self) -> Vec<Value> {
        self.seen.attempts.lock().unwrap().clone()
    }

    /// Delivered events (deduplicated by id, as a receiver must), as
    /// `(event, data)`.
    fn events(&self) -> Vec<(String, Value)> {
        let mut ids = std::collections::HashSet::new();
        self.attempts()
            .into_iter()
            .filter(|a| a["ok"] == true && ids.insert(a["id"].as_str().unwrap().to_owned()))
            .map(|a| (a["event"].as_str().unwrap().to_owned(), a["data"].clone()))
            .collect()
    }

    fn count(&self, event: &str, data: &Value) -> usize {
        self.events()
            .iter()
            .filter(|(e, d)| e == event && d == data)
            .count()
    }

    async fn wait_for(&self, event: &str, data: Value) {
        until(Duration::from_secs(15), &format!("{event} {data}"), || {
            let n = self.count(event, &data);
            async move { n >= 1 }
        })
        .await;
    }
}

/// Checks the signature independently of the server's code, records the
/// attempt, and answers.
async fn take(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = headers
        .get("herald-signature")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut t = "";
    let mut v1 = "";
    for part in header.split(',') {
        if let Some(x) = part.strip_prefix("t=") {
            t = x;
        } else if let Some(x) = part.strip_prefix("v1=") {
            v1 = x;
        }
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&body);
    let expected = hex::encode(mac.finalize().into_bytes());
    assert_eq!(v1, expected, "Herald-Signature does not sign the body");
    let now = herald_server::auth::unix_now();
    let t: u64 = t.parse().unwrap();
    assert!(t.abs_diff(now) < 60, "signature time {t} far from {now}");
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["id"].as_str().is_some_and(|id| !id.is_empty()), "{v}");
    assert!(v["ts"].as_u64().is_some(), "{v}");
    let refuse = seen
        .refuse
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok();
    v["ok"] = json!(!refuse);
    seen.attempts.lock().unwrap().push(v);
    let delay = *seen.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    if refuse {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

const ROOM: &str = "[[namespaces]]\nname = \"room\"\nsubscribe = \"public\"\n";

fn single(dir: &std::path::Path, extra: &str) -> Proc {
    let config = write_config(dir, &format!("{extra}\n{ROOM}"));
    Proc::start(dir, &["--config", config.to_str().unwrap()])
}

/// A client of `user` (anonymous when `None`) on `ws`.
async fn client(ws: &str, user: Option<&str>) -> Client {
    let mut c = Client::open(ws).await.unwrap();
    let token = user.map(user_token);
    let connected = c.connect(token.as_deref()).await.unwrap();
    assert_eq!(connected["type"], "connected", "{connected}");
    c
}

async fn subscribe(c: &mut Client, channel: &str) {
    let reply = c.subscribe(channel, None).await.unwrap();
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

#[tokio::test]
async fn one_node_sends_occupied_vacated_online_offline_signed_and_in_order() {
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = single(dir.path(), &hook.config());
    let ws = server.ws_url();

    let mut ann = client(&ws, Some("ann")).await;
    hook.wait_for("user_online", json!({"userId": "ann"})).await;
    subscribe(&mut ann, "room:a").await;
    hook.wait_for("channel_occupied", json!({"channel": "room:a"}))
        .await;
    // An anonymous second subscriber: no user event, the channel stays occupied.
    let mut anon = client(&ws, None).await;
    subscribe(&mut anon, "room:a").await;
    ann.close().await;
    hook.wait_for("user_offline", json!({"userId": "ann"}))
        .await;
    anon.close().await;
    hook.wait_for("channel_vacated", json!({"channel": "room:a"}))
        .await;
    // A long poll is not a subscriber.
    let r = http()
        .get(format!(
            "{}/api/channels/room:b/messages?wait=1",
            server.origin
        ))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    let events = hook.events();
    assert_eq!(
        events,
        vec![
            ("user_online".into(), json!({"userId": "ann"})),
            ("channel_occupied".into(), json!({"channel": "room:a"})),
            ("user_offline".into(), json!({"userId": "ann"})),
            ("channel_vacated".into(), json!({"channel": "room:a"})),
        ]
    );
    let ids: std::collections::HashSet<String> = hook
        .attempts()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 4, "every event has its own id");
}

#[tokio::test]
async fn a_refused_event_comes_again_under_the_same_id() {
    let hook = Receiver::start().await;
    hook.seen.refuse.store(1, Ordering::Release);
    let dir = tempfile::tempdir().unwrap();
    let server = single(dir.path(), &hook.config());
    let _ann = client(&server.ws_url(), Some("ann")).await;
    hook.wait_for("user_online", json!({"userId": "ann"})).await;
    let attempts = hook.attempts();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["ok"], false);
    assert_eq!(attempts[1]["ok"], true);
    assert_eq!(attempts[0]["id"], attempts[1]["id"]);
    assert_eq!(attempts[0]["event"], "user_online");
}

#[tokio::test]
async fn a_full_webhook_queue_drops_events_and_counts_them() {
    let hook = Receiver::start().await;
    // The first delivery holds its queue place while the others arrive.
    *hook.seen.delay.lock().unwrap() = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let server = single(
        dir.path(),
        &format!("{}\n[limits]\nwebhook_queue = 1\n", hook.config()),
    );
    let http = http();
    let name = "herald_webhooks_dropped_total{reason=\"overflow\"}";
    let mut clients = Vec::new();
    for user in ["u1", "u2", "u3", "u4"] {
        clients.push(client(&server.ws_url(), Some(user)).await);
    }
    until(Duration::from_secs(15), "overflow counted", || {
        let (http, origin) = (http.clone(), server.origin.clone());
        async move {
            let text = scrape(&http, &origin).await;
            text.lines()
                .any(|l| l.starts_with(name) && !l.ends_with(" 0"))
        }
    })
    .await;
    assert!(
        hook.attempts().len() < 4,
        "events past the queue are not sent"
    );
}

#[tokio::test]
async fn sigterm_delivers_the_last_vacated_and_offline_before_exit() {
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = single(dir.path(), &hook.config());
    let mut ann = client(&server.ws_url(), Some("ann")).await;
    subscribe(&mut ann, "room:t").await;
    hook.wait_for("channel_occupied", json!({"channel": "room:t"}))
        .await;
    hook.wait_for("user_online", json!({"userId": "ann"})).await;
    // The last two events are refused once: shutdown must wait for their
    // retries (a second later), not cut them off.
    hook.seen.refuse.store(2, Ordering::Release);
    server.signal("-TERM");
    let exit = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(20));
        (status, server)
    });
    let _ = ann.until_closed().await;
    // Gone at once, so the node's exit is not held by a close handshake.
    drop(ann);
    let (status, _server) = exit.await.unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        hook.count("channel_vacated", &json!({"channel": "room:t"})),
        1
    );
    assert_eq!(hook.count("user_offline", &json!({"userId": "ann"})), 1);
    let refused = hook.attempts().iter().filter(|a| a["ok"] == false).count();
    assert_eq!(refused, 2, "{:?}", hook.attempts());
}

/// A node of the redis engine sending every event to `hook`.
fn redis_node(
    dir: &std::path::Path,
    name: &str,
    engine: &str,
    prefix: &str,
    hook: &Receiver,
) -> Proc {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "listen = \"127.0.0.1:0\"\n{}\n[presence]\nttl = \"2s\"\n[auth]\nhmac_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\nallow_anonymous = true\n[engine]\nkind = \"redis\"\n{}\nredis_prefix = \"{prefix}\"\n{ROOM}",
        hook.config(),
        engine,
    );
    std::fs::write(&path, text).unwrap();
    Proc::start(dir, &["--config", path.to_str().unwrap()])
}

#[tokio::test]
async fn two_nodes_send_each_transition_once_per_cluster() {
    let prefix = Prefix::new();
    let dir = tempfile::tempdir().unwrap();
    once_per_cluster(dir.path(), &one(SHARED_REDIS), 6379, &prefix.0).await;
}

#[tokio::test]
async fn two_nodes_on_a_redis_cluster_send_each_transition_once() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path());
    let port = cluster.masters[0].port;
    once_per_cluster(dir.path(), &cluster.engine(), port, "herald").await;
}

/// Waits until `n` nodes hold `key` in Redis (any master of a cluster at
/// `port`). Each node records its holding shortly after the change, so a
/// test that wants "the last one left" must let the others record theirs.
async fn held_by(port: u16, key: String, n: usize) {
    until(
        Duration::from_secs(15),
        &format!("{n} nodes in {key}"),
        || {
            let out = redis_cli(port, &["-c", "SCARD", &key]);
            async move { out.trim() == n.to_string() }
        },
    )
    .await;
}

async fn once_per_cluster(dir: &std::path::Path, engine: &str, port: u16, prefix: &str) {
    let hook = Receiver::start().await;
    let a = redis_node(dir, "a", engine, prefix, &hook);
    let b = redis_node(dir, "b", engine, prefix, &hook);
    let room = json!({"channel": "room:x"});
    let ann = json!({"userId": "ann"});

    let mut on_a = client(&a.ws_url(), Some("ann")).await;
    subscribe(&mut on_a, "room:x").await;
    let mut on_b = client(&b.ws_url(), Some("ann")).await;
    subscribe(&mut on_b, "room:x").await;
    hook.wait_for("channel_occupied", room.clone()).await;
    hook.wait_for("user_online", ann.clone()).await;
    held_by(port, format!("{prefix}:oc:{{room:x}}"), 2).await;
    held_by(port, format!("{prefix}:ou:{{ann}}"), 2).await;
    on_a.close().await;
    // Still held on b: a grace period shows nothing is sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        hook.count("channel_vacated", &room),
        0,
        "{:?}\n{}\n{}",
        hook.attempts(),
        a.stderr(),
        b.stderr()
    );
    assert_eq!(hook.count("user_offline", &ann), 0);
    on_b.close().await;
    hook.wait_for("channel_vacated", room.clone()).await;
    hook.wait_for("user_offline", ann.clone()).await;
    // Bounded extra wait: no second event arrives from the other node.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (event, data) in [
        ("channel_occupied", &room),
        ("channel_vacated", &room),
        ("user_online", &ann),
        ("user_offline", &ann),
    ] {
        assert_eq!(hook.count(event, data), 1, "{event}: {:?}", hook.events());
    }
    // Receivers can deduplicate by id: cluster-decided ids name the event.
    assert!(hook.attempts().iter().all(|a| a["id"]
        .as_str()
        .unwrap()
        .starts_with(a["event"].as_str().unwrap())));
    drop((a, b));
}

#[tokio::test]
async fn a_killed_nodes_channels_and_users_are_released_by_a_survivor() {
    let prefix = Prefix::new();
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let engine = one(SHARED_REDIS);
    let mut a = redis_node(dir.path(), "a", &engine, &prefix.0, &hook);
    let _b = redis_node(dir.path(), "b", &engine, &prefix.0, &hook);
    let room = json!({"channel": "room:k"});
    let ann = json!({"userId": "ann"});
    let mut c = client(&a.ws_url(), Some("ann")).await;
    subscribe(&mut c, "room:k").await;
    hook.wait_for("channel_occupied", room.clone()).await;
    hook.wait_for("user_online", ann.clone()).await;
    a.signal("-KILL");
    a.wait_exit(Duration::from_secs(10));
    // presence.ttl is 2s: b claims a and releases what it held.
    hook.wait_for("channel_vacated", room.clone()).await;
    hook.wait_for("user_offline", ann.clone()).await;
    drop(c);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hook.count("channel_vacated", &room), 1);
    assert_eq!(hook.count("user_offline", &ann), 1);
}

#[tokio::test]
async fn a_node_stopped_with_sigterm_vacates_what_only_it_held_in_the_cluster() {
    let prefix = Prefix::new();
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let engine = one(SHARED_REDIS);
    let mut a = redis_node(dir.path(), "a", &engine, &prefix.0, &hook);
    let b = redis_node(dir.path(), "b", &engine, &prefix.0, &hook);
    let (only_a, both) = (json!({"channel": "room:s1"}), json!({"channel": "room:s2"}));
    let mut on_a = client(&a.ws_url(), None).await;
    subscribe(&mut on_a, "room:s1").await;
    subscribe(&mut on_a, "room:s2").await;
    let mut on_b = client(&b.ws_url(), None).await;
    subscribe(&mut on_b, "room:s2").await;
    hook.wait_for("channel_occupied", only_a.clone()).await;
    hook.wait_for("channel_occupied", both.clone()).await;
    held_by(6379, format!("{}:oc:{{room:s2}}", prefix.0), 2).await;
    a.signal("-TERM");
    let _ = on_a.until_closed().await;
    drop(on_a);
    let status = tokio::task::spawn_blocking(move || a.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    // Delivered before a exited.
    assert_eq!(hook.count("channel_vacated", &only_a), 1);
    // A bounded wait shows b still holds the other.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hook.count("channel_vacated", &both), 0);
    // a left the store: only b's index of what it holds is there.
    let indexes = redis_cli(
        6379,
        &["--scan", "--pattern", &format!("{}:oi:*", prefix.0)],
    );
    assert_eq!(indexes.lines().count(), 1, "{indexes}");
    drop((on_b, b));
}
