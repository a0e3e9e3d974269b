//! Read state (SPEC §11) against the real binary on the embedded engine: an
//! `ack` moves the unread count and never moves the read cursor backwards,
//! `connected.notifications` and `GET /api/notifications` carry `unread`,
//! `POST /api/notifications/read` needs a user's JWT, and the read cursor
//! survives a restart. The two-node Redis test is in `redis.rs`.

use std::time::Duration;

use herald_client::Client;
use serde_json::{json, Value};

use crate::util::*;

/// Notifies `user` through `origin`; the notification's cursor.
pub async fn notify(http: &reqwest::Client, origin: &str, user: &str, data: Value) -> String {
    let r = http
        .post(format!("{origin}/api/users/{user}/notifications"))
        .bearer_auth(API_KEY)
        .json(&data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["cursor"].as_str().unwrap().to_owned()
}

/// Connects `user` to `ws`; the `connected` frame's `notifications`.
pub async fn connect(ws: &str, user: &str) -> (Client, Value) {
    let mut c = Client::open(ws).await.unwrap();
    let connected = c.connect(Some(&user_token(user))).await.unwrap();
    assert_eq!(connected["type"], "connected", "{connected}");
    (c, connected["notifications"].clone())
}

/// Sends `ack` with `cursor`; the reply.
pub async fn ack(c: &mut Client, cursor: &str) -> Value {
    c.request(json!({"type": "ack", "cursor": cursor}))
        .await
        .unwrap()
}

/// `POST /api/notifications/read` with `token`: status and body.
pub async fn mark_read(
    http: &reqwest::Client,
    origin: &str,
    token: Option<&str>,
    cursor: &str,
) -> (u16, Value) {
    let mut r = http
        .post(format!("{origin}/api/notifications/read"))
        .json(&json!({ "cursor": cursor }));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The `unread` of the notifications poll of `user` on `origin`.
pub async fn polled_unread(http: &reqwest::Client, origin: &str, user: &str) -> u64 {
    let r = http
        .get(format!("{origin}/api/notifications"))
        .bearer_auth(user_token(user))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["unread"].as_u64().unwrap()
}

#[tokio::test]
async fn ack_moves_unread_forward_only_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let config = config.to_str().unwrap().to_owned();
    let mut server = Proc::start(dir.path(), &["--config", &config]);
    let http = crate::util::http();
    let mut cursors = Vec::new();
    for i in 0..3 {
        cursors.push(notify(&http, &server.origin, "u1", json!({ "i": i })).await);
    }
    let (mut c, state) = connect(&server.ws_url(), "u1").await;
    assert_eq!(state["unread"], 3, "{state}");
    assert_eq!(polled_unread(&http, &server.origin, "u1").await, 3);

    let reply = ack(&mut c, &cursors[1]).await;
    assert_eq!(reply["type"], "acked", "{reply}");
    assert_eq!(reply["unread"], 1, "{reply}");
    // Never backwards.
    let reply = ack(&mut c, &cursors[0]).await;
    assert_eq!(reply["unread"], 1, "{reply}");
    // A cursor of another epoch changes nothing.
    let reply = ack(&mut c, "zzzzzzzz:3").await;
    assert_eq!(reply["unread"], 1, "{reply}");
    // A malformed or missing cursor is 1000.
    let reply = c
        .request(json!({"type": "ack", "cursor": "nope"}))
        .await
        .unwrap();
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_u64()),
        (Some("error"), Some(1000)),
        "{reply}"
    );
    assert_eq!(polled_unread(&http, &server.origin, "u1").await, 1);
    // Another user's count is theirs.
    assert_eq!(polled_unread(&http, &server.origin, "u2").await, 0);
    drop(c);

    server.signal("-TERM");
    assert!(server.wait_exit(Duration::from_secs(15)).success());
    let server = Proc::start(dir.path(), &["--config", &config]);
    let (mut c, state) = connect(&server.ws_url(), "u1").await;
    assert_eq!(
        state["unread"], 1,
        "the read cursor survives a restart: {state}"
    );
    assert_eq!(polled_unread(&http, &server.origin, "u1").await, 1);
    notify(&http, &server.origin, "u1", json!("new")).await;
    assert_eq!(polled_unread(&http, &server.origin, "u1").await, 2);

    // Past the newest: clamped to it.
    let epoch = cursors[0].split(':').next().unwrap();
    let reply = ack(&mut c, &format!("{epoch}:99")).await;
    assert_eq!(reply["unread"], 0, "{reply}");
    notify(&http, &server.origin, "u1", json!("newer")).await;
    let (_c2, state) = connect(&server.ws_url(), "u1").await;
    assert_eq!(state["unread"], 1, "{state}");
}

#[tokio::test]
async fn http_read_needs_a_user_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let server = Proc::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let http = crate::util::http();
    let mut cursors = Vec::new();
    for i in 0..4 {
        cursors.push(notify(&http, &server.origin, "u1", json!({ "i": i })).await);
    }
    let (status, _) = mark_read(&http, &server.origin, None, &cursors[0]).await;
    assert_eq!(status, 401);
    let (status, _) = mark_read(&http, &server.origin, Some("not-a-jwt"), &cursors[0]).await;
    assert_eq!(status, 401);
    let token = user_token("u1");
    let (status, body) = mark_read(&http, &server.origin, Some(&token), &cursors[2]).await;
    assert_eq!((status, body["unread"].as_u64()), (200, Some(1)), "{body}");
    let (status, body) = mark_read(&http, &server.origin, Some(&token), &cursors[0]).await;
    assert_eq!(
        (status, body["unread"].as_u64()),
        (200, Some(1)),
        "never backwards: {body}"
    );
    let (status, body) = mark_read(&http, &server.origin, Some(&token), "bad").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(polled_unread(&http, &server.origin, "u1").await, 1);
    let (_c, state) = connect(&server.ws_url(), "u1").await;
    assert_eq!(state["unread"], 1, "{state}");
}
