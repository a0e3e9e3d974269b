//! `notification_undelivered` (SPEC §11) against the real binary: a stub
//! backend (axum on loopback) records the webhook bodies. A notification
//! nobody saw fires once with its data; one pushed to a live socket, polled,
//! or replayed on a resume with `notifications_since` never does; pending
//! ones survive SIGTERM and `kill -9` on the embedded engine; two nodes on
//! Redis fire once between them.
//!
//! "Never fires" is checked with a fence: a later notification to a user
//! nobody watches is due after the one under test, and claims go in due
//! order, so once the fence's event arrives the other was decided.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_client::Client;
use serde_json::{json, Value};

use crate::read_state::notify;
use crate::redis::{one, until, Prefix, SHARED_REDIS};
use crate::util::*;

const HOOK_SECRET: &str = "undelivered-hook-secret-0123";

/// A webhook receiver: every body it got, and whether it was signed.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(Value, bool)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Self {
        let got: Arc<Mutex<Vec<(Value, bool)>>> = Arc::default();
        let seen = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let seen = seen.clone();
                async move {
                    let signed = headers
                        .get("herald-signature")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with("t=") && v.contains(",v1="));
                    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    seen.lock().unwrap().push((body, signed));
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, got, task }
    }

    /// Events about `user`.
    fn events_for(&self, user: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(b, _)| b["data"]["userId"] == user)
            .map(|(b, _)| b.clone())
            .collect()
    }

    /// Waits (bounded) until `user` has an event; returns them all.
    async fn wait_for(&self, user: &str, within: Duration) -> Vec<Value> {
        until(
            within,
            &format!("notification_undelivered for {user}"),
            || {
                let n = self.events_for(user).len();
                async move { n > 0 }
            },
        )
        .await;
        self.events_for(user)
    }

    /// Publishes a fence notification through `origin` and waits for its
    /// event: everything due before it was decided by then.
    async fn fence(&self, http: &reqwest::Client, origin: &str, user: &str) {
        notify(http, origin, user, json!({"fence": true})).await;
        self.wait_for(user, Duration::from_secs(10)).await;
    }
}

/// The `[notifications]` and `[[webhooks]]` lines for the hook.
fn hook_lines(after: &str, url: &str) -> String {
    format!(
        "[notifications]\nundelivered_after = \"{after}\"\n[[webhooks]]\nurl = \"{url}\"\nevents = [\"notification_undelivered\"]\nsecret = \"{HOOK_SECRET}\"\n"
    )
}

fn embedded(dir: &std::path::Path, after: &str, url: &str) -> String {
    write_config(dir, &hook_lines(after, url))
        .to_str()
        .unwrap()
        .to_owned()
}

async fn connect_user(ws: &str, user: &str, since: Option<&str>) -> (Client, Value) {
    let mut c = Client::open(ws).await.unwrap();
    let mut frame = json!({"type": "connect", "token": user_token(user)});
    if let Some(since) = since {
        frame["notifications_since"] = json!(since);
    }
    let connected = c.request(frame).await.unwrap();
    assert_eq!(connected["type"], "connected", "{connected}");
    (c, connected)
}

/// `E:N` → `E:0`.
fn start_of(cursor: &str) -> String {
    let (epoch, _) = cursor.split_once(':').unwrap();
    format!("{epoch}:0")
}

#[tokio::test]
async fn an_unseen_notification_fires_once_with_its_data() {
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = embedded(dir.path(), "300ms", &hook.url);
    let server = Proc::start(dir.path(), &["--config", &config]);
    let http = http();
    let cursor = notify(&http, &server.origin, "lonely", json!({"text": "hi"})).await;
    let events = hook.wait_for("lonely", Duration::from_secs(10)).await;
    let (epoch, offset) = cursor.split_once(':').unwrap();
    assert_eq!(offset, "1");
    let event = &events[0];
    assert_eq!(event["event"], "notification_undelivered");
    assert_eq!(event["id"], format!("undelivered:lonely:{epoch}:1"));
    assert_eq!(
        event["data"],
        json!({"userId": "lonely", "offset": 1, "cursor": cursor, "data": {"text": "hi"}})
    );
    assert!(hook.got.lock().unwrap().iter().all(|(_, signed)| *signed));
    hook.fence(&http, &server.origin, "fence1").await;
    assert_eq!(hook.events_for("lonely").len(), 1, "fired once");
    assert_eq!(
        metric(&http, &server.origin, "herald_undelivered_fired_total").await,
        2.0
    );
    assert_eq!(
        metric(&http, &server.origin, "herald_undelivered_pending").await,
        0.0
    );
}

#[tokio::test]
async fn pushed_polled_or_resumed_notifications_never_fire_a_plain_connect_does() {
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = embedded(dir.path(), "1s", &hook.url);
    let server = Proc::start(dir.path(), &["--config", &config]);
    let ws = server.ws_url();
    let http = http();

    // Pushed to a live socket.
    let (mut live, _) = connect_user(&ws, "live", None).await;
    notify(&http, &server.origin, "live", json!({"n": 1})).await;
    let push = tokio::time::timeout(Duration::from_secs(5), live.next_push())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(push["type"], "notification", "{push}");

    // Fetched by the poll.
    notify(&http, &server.origin, "poller", json!({"n": 2})).await;
    let page: Value = http
        .get(format!("{}/api/notifications", server.origin))
        .bearer_auth(user_token("poller"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");

    // Replayed on a resume with notifications_since.
    let cursor = notify(&http, &server.origin, "resumer", json!({"n": 3})).await;
    let (mut resumed, connected) = connect_user(&ws, "resumer", Some(&start_of(&cursor))).await;
    assert_eq!(connected["notifications"]["missed"], 1, "{connected}");
    let replayed = tokio::time::timeout(Duration::from_secs(5), resumed.next_push())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replayed["cursor"], cursor.as_str());

    // A connect without notifications_since showed the client nothing.
    notify(&http, &server.origin, "plain", json!({"n": 4})).await;
    let (_plain, _) = connect_user(&ws, "plain", None).await;

    let plain = hook.wait_for("plain", Duration::from_secs(10)).await;
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0]["data"]["data"], json!({"n": 4}));
    hook.fence(&http, &server.origin, "fence2").await;
    for user in ["live", "poller", "resumer"] {
        assert!(
            hook.events_for(user).is_empty(),
            "{user} was delivered: {:?}",
            hook.events_for(user)
        );
    }
    assert_eq!(hook.events_for("plain").len(), 1);
}

#[tokio::test]
async fn pending_notifications_survive_sigterm_and_kill_9() {
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = embedded(dir.path(), "3s", &hook.url);
    let http = http();

    let mut server = Proc::start(dir.path(), &["--config", &config]);
    notify(
        &http,
        &server.origin,
        "termed",
        json!({"before": "sigterm"}),
    )
    .await;
    server.signal("-TERM");
    server.wait_exit(Duration::from_secs(20));
    assert!(
        hook.events_for("termed").is_empty(),
        "fired before it was due"
    );

    let mut server = Proc::start(dir.path(), &["--config", &config]);
    notify(
        &http,
        &server.origin,
        "killed",
        json!({"before": "kill -9"}),
    )
    .await;
    server.signal("-9");
    server.wait_exit(Duration::from_secs(10));

    let server = Proc::start(dir.path(), &["--config", &config]);
    let termed = hook.wait_for("termed", Duration::from_secs(10)).await;
    assert_eq!(termed[0]["data"]["data"], json!({"before": "sigterm"}));
    let killed = hook.wait_for("killed", Duration::from_secs(10)).await;
    assert_eq!(killed[0]["data"]["data"], json!({"before": "kill -9"}));
    hook.fence(&http, &server.origin, "fence3").await;
    assert_eq!(hook.events_for("termed").len(), 1);
    assert_eq!(hook.events_for("killed").len(), 1);
}

/// A node of the redis engine with the hook on.
fn redis_node(dir: &std::path::Path, name: &str, prefix: &str, url: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "listen = \"127.0.0.1:0\"\n{}[auth]\nhmac_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\n[engine]\nkind = \"redis\"\n{}\nredis_prefix = \"{prefix}\"\n",
        hook_lines("1s", url),
        one(SHARED_REDIS)
    );
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn two_redis_nodes_fire_once_and_a_delivery_on_either_counts() {
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = Prefix::new();
    let a = redis_node(dir.path(), "a", &prefix.0, &hook.url);
    let b = redis_node(dir.path(), "b", &prefix.0, &hook.url);
    let a = Proc::start(dir.path(), &["--config", &a]);
    let b = Proc::start(dir.path(), &["--config", &b]);
    let http = http();

    // Delivered on B's socket, published on A.
    let (mut on_b, _) = connect_user(&b.ws_url(), "seen-on-b", None).await;
    notify(&http, &a.origin, "seen-on-b", json!({"n": 1})).await;
    let push = tokio::time::timeout(Duration::from_secs(5), on_b.next_push())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(push["type"], "notification", "{push}");

    // Nobody anywhere: both nodes' timers race for it.
    let cursor = notify(&http, &a.origin, "nobody", json!({"n": 2})).await;
    let events = hook.wait_for("nobody", Duration::from_secs(10)).await;
    assert_eq!(events[0]["data"]["cursor"], cursor.as_str());

    hook.fence(&http, &a.origin, "fence4").await;
    assert_eq!(hook.events_for("nobody").len(), 1, "once per cluster");
    assert!(hook.events_for("seen-on-b").is_empty());
    let fired = metric(&http, &a.origin, "herald_undelivered_fired_total").await
        + metric(&http, &b.origin, "herald_undelivered_fired_total").await;
    assert_eq!(fired, 2.0, "nobody and the fence, once each");
}

#[tokio::test]
async fn past_undelivered_pending_notifications_are_delivered_but_not_watched() {
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}[limits]\nundelivered_pending = 1\n",
        hook_lines("1s", &hook.url)
    );
    let config = write_config(dir.path(), &extra);
    let config = config.to_str().unwrap().to_owned();
    let server = Proc::start(dir.path(), &["--config", &config]);
    let http = http();
    notify(&http, &server.origin, "first", json!({"n": 1})).await;
    notify(&http, &server.origin, "second", json!({"n": 2})).await;
    assert_eq!(
        metric(&http, &server.origin, "herald_undelivered_pending").await,
        1.0
    );
    assert_eq!(
        metric(&http, &server.origin, "herald_undelivered_untracked_total").await,
        1.0
    );
    // The second is kept in the inbox all the same.
    let page: Value = http
        .get(format!("{}/api/notifications", server.origin))
        .bearer_auth(user_token("second"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"][0]["data"], json!({"n": 2}), "{page}");
    hook.wait_for("first", Duration::from_secs(10)).await;
    // Room again: a later one is watched, and its event fences the second.
    hook.fence(&http, &server.origin, "third").await;
    assert!(hook.events_for("second").is_empty());
    assert_eq!(
        metric(&http, &server.origin, "herald_undelivered_pending").await,
        0.0
    );
}
