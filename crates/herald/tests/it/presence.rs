//! Presence (SPEC §11) against the real binary: entries come and go with
//! subscriptions on every path out, `join` / `leave` reach the others but
//! never the client itself, the commands' permission rules (1002, 1012),
//! and the HTTP endpoints. The two-node Redis tests are in `redis.rs`.

use std::time::{Duration, Instant};

use herald_client::Client;
use serde_json::{json, Value};

use crate::util::*;

/// `room` pushes join/leave, `quiet` keeps presence only, `plain` neither,
/// `priv` needs a `channels` claim.
pub const NAMESPACES: &str = r#"
[[namespaces]]
name = "room"
subscribe = "public"
join_leave = true

[[namespaces]]
name = "quiet"
subscribe = "public"
presence = true

[[namespaces]]
name = "plain"
subscribe = "public"

[[namespaces]]
name = "priv"
subscribe = "claim"
presence = true
"#;

/// A token for `user` whose `info` claim is `info`.
pub fn token_with_info(user: &str, info: Value) -> String {
    let claims = json!({
        "sub": user,
        "exp": herald_server::auth::unix_now() + 3600,
        "info": info,
    });
    herald_server::auth::sign_hs256_json(SECRET, &claims).unwrap()
}

fn start(extra: &str) -> (tempfile::TempDir, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{extra}\n{NAMESPACES}"));
    let server = Proc::start(dir.path(), &["--config", config.to_str().unwrap()]);
    (dir, server)
}

/// A client of `user` (info `{"name": user}`) connected to `ws`; its client id.
pub async fn client(ws: &str, user: &str) -> (Client, String) {
    let mut c = Client::open(ws).await.unwrap();
    let connected = c
        .connect(Some(&token_with_info(user, json!({ "name": user }))))
        .await
        .unwrap();
    assert_eq!(connected["type"], "connected", "{connected}");
    let id = connected["client"].as_str().unwrap().to_owned();
    (c, id)
}

pub async fn subscribe(c: &mut Client, channel: &str) {
    let reply = c.subscribe(channel, None).await.unwrap();
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

/// The next frame of type `kind`, skipping others.
pub async fn next_of(c: &mut Client, kind: &str) -> Value {
    loop {
        let f = c.next_frame().await.unwrap();
        if f["type"] == kind {
            return f;
        }
    }
}

pub async fn presence(c: &mut Client, channel: &str) -> Value {
    c.request(json!({"type": "presence", "channel": channel}))
        .await
        .unwrap()
}

pub fn clients_of(reply: &Value) -> Vec<String> {
    let mut ids: Vec<String> = reply["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["client"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

pub async fn get(http: &reqwest::Client, url: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut r = http.get(url).timeout(Duration::from_secs(10));
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls the HTTP presence of `channel` until `total` is `n`.
pub async fn until_total(http: &reqwest::Client, origin: &str, channel: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(
            http,
            &format!("{origin}/api/channels/{channel}/presence"),
            Some(API_KEY),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if body["total"] == n {
            return body;
        }
        assert!(Instant::now() < deadline, "total never became {n}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn entries_follow_subscriptions_and_join_leave_reach_the_others_only() {
    let (_dir, server) = start("");
    let ws = server.ws_url();
    let http = crate::util::http();
    let (mut ann, ann_id) = client(&ws, "ann").await;
    subscribe(&mut ann, "room:1").await;
    let (mut bob, bob_id) = client(&ws, "bob").await;
    subscribe(&mut bob, "room:1").await;

    let join = next_of(&mut ann, "join").await;
    assert_eq!(
        join,
        json!({"type":"join","channel":"room:1","info":{"client":bob_id,"user":"bob","info":{"name":"bob"}}})
    );
    // Bob's own join never reaches Bob: a marker published after it comes first.
    let reply = presence(&mut bob, "room:1").await;
    assert_eq!(reply["type"], "presence");
    assert_eq!(
        (reply["total"].as_u64(), reply["users"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        clients_of(&reply),
        sorted(vec![ann_id.clone(), bob_id.clone()])
    );
    let marker = http
        .post(format!("{}/api/channels/room:1/messages", server.origin))
        .bearer_auth(API_KEY)
        .json(&json!("marker"))
        .send()
        .await
        .unwrap();
    assert_eq!(marker.status(), 200);
    loop {
        let f = bob.next_frame().await.unwrap();
        assert!(
            f["type"] != "join" && f["type"] != "leave",
            "echoed to self: {f}"
        );
        if f["type"] == "message" {
            break;
        }
    }
    let stats = bob
        .request(json!({"type":"presence_stats","channel":"room:1"}))
        .await
        .unwrap();
    assert_eq!(stats["type"], "presence_stats");
    assert_eq!(
        (stats["clients"].as_u64(), stats["users"].as_u64()),
        (Some(2), Some(2))
    );

    // A second connection of Ann: three clients, two users.
    let (mut ann2, ann2_id) = client(&ws, "ann").await;
    subscribe(&mut ann2, "room:1").await;
    assert_eq!(next_of(&mut bob, "join").await["info"]["client"], ann2_id);
    let body = until_total(&http, &server.origin, "room:1", 3).await;
    assert_eq!(body["users"], 2, "{body}");
    assert_eq!(body["channel"], "room:1");
    assert!(body.get("type").is_none(), "{body}");

    // Unsubscribe: the entry goes, the others hear it.
    let reply = ann2
        .request(json!({"type":"unsubscribe","channel":"room:1"}))
        .await
        .unwrap();
    assert_eq!(reply["type"], "unsubscribed");
    let leave = next_of(&mut bob, "leave").await;
    assert_eq!(leave["info"]["client"], ann2_id);
    assert_eq!(next_of(&mut ann, "leave").await["info"]["client"], ann2_id);
    assert_eq!(
        clients_of(&presence(&mut ann, "room:1").await),
        sorted(vec![ann_id.clone(), bob_id.clone()])
    );

    // Polite close.
    ann2.close().await;
    // Abrupt: the socket just vanishes (no close frame).
    drop(bob);
    let leave = next_of(&mut ann, "leave").await;
    assert_eq!(leave["info"]["client"], bob_id);
    assert_eq!(leave["info"]["user"], "bob");
    let reply = presence(&mut ann, "room:1").await;
    assert_eq!(clients_of(&reply), vec![ann_id.clone()]);
    assert_eq!(reply["users"], 1);

    // The online status counts WebSocket connections.
    let (status, body) = get(
        &http,
        &format!("{}/api/users/ann/status", server.origin),
        Some(API_KEY),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"userId":"ann","online":true,"connections":1}));
    let (_, body) = get(
        &http,
        &format!("{}/api/users/bob/status", server.origin),
        Some(API_KEY),
    )
    .await;
    assert_eq!(body, json!({"userId":"bob","online":false,"connections":0}));
    let (status, _) = get(
        &http,
        &format!("{}/api/users/ann/status", server.origin),
        Some(&user_token("ann")),
    )
    .await;
    assert_eq!(status, 401, "a client JWT is not an API key");
}

#[tokio::test]
async fn presence_commands_follow_the_subscribe_rules_and_say_1012_where_off() {
    let (_dir, server) = start("");
    let ws = server.ws_url();
    let http = crate::util::http();
    let (mut ann, _) = client(&ws, "ann").await;
    let off = presence(&mut ann, "plain:1").await;
    assert_eq!(
        (off["type"].as_str(), off["code"].as_u64()),
        (Some("error"), Some(1012)),
        "{off}"
    );
    let off = ann
        .request(json!({"type":"presence_stats","channel":"plain:1"}))
        .await
        .unwrap();
    assert_eq!(off["code"], 1012, "{off}");
    let denied = presence(&mut ann, "priv:1").await;
    assert_eq!(denied["code"], 1002, "{denied}");
    let quiet = presence(&mut ann, "quiet:1").await;
    assert_eq!(
        (
            quiet["total"].as_u64(),
            quiet["clients"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
    // Before connect: 1010, as for every command.
    let mut early = Client::open(&ws).await.unwrap();
    let r = presence(&mut early, "room:1").await;
    assert_eq!(r["code"], 1010, "{r}");

    // Presence without join/leave: entries, but no pushes.
    subscribe(&mut ann, "quiet:1").await;
    let (mut bob, bob_id) = client(&ws, "bob").await;
    subscribe(&mut bob, "quiet:1").await;
    let reply = presence(&mut ann, "quiet:1").await;
    assert_eq!(reply["total"], 2);
    assert!(clients_of(&reply).contains(&bob_id));

    // HTTP: API key, a JWT that may subscribe, anonymous where public.
    let url = |path: &str| format!("{}/api/channels/{path}", server.origin);
    let (status, body) = get(&http, &url("quiet:1/presence"), Some(&user_token("carl"))).await;
    assert_eq!((status, body["total"].as_u64()), (200, Some(2)), "{body}");
    let (status, body) = get(&http, &url("quiet:1/presence/stats"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"channel":"quiet:1","clients":2,"users":2}));
    let (status, body) = get(&http, &url("plain:1/presence"), Some(API_KEY)).await;
    assert_eq!(
        (status, body["error"]["code"].as_u64()),
        (404, Some(1012)),
        "{body}"
    );
    let (status, body) = get(&http, &url("priv:1/presence"), Some(&user_token("carl"))).await;
    assert_eq!(
        (status, body["error"]["code"].as_u64()),
        (403, Some(1002)),
        "{body}"
    );
    let (status, body) = get(&http, &url("priv:1/presence/stats"), Some(API_KEY)).await;
    assert_eq!(
        (status, body["clients"].as_u64()),
        (200, Some(0)),
        "the API key sees every channel: {body}"
    );
    let (status, _) = get(&http, &url("quiet:1/presence"), Some("not-a-token")).await;
    assert_eq!(status, 401);

    // An info claim over 1 KiB: the token is refused (1001), not trimmed.
    let mut big = Client::open(&ws).await.unwrap();
    let r = big
        .connect(Some(&token_with_info(
            "dan",
            json!({"x": "y".repeat(1100)}),
        )))
        .await
        .unwrap();
    assert_eq!(r["code"], 1001, "{r}");
}

/// A subscriber closed as a slow consumer (4003) leaves presence too.
#[tokio::test]
async fn a_slow_consumer_close_removes_its_entry() {
    let (_dir, server) = start(
        "[limits]\noutbound_queue = 2\nmax_message_bytes = 1000\noutbound_queue_bytes = 2024\nmax_page_bytes = 1000\n",
    );
    let ws = server.ws_url();
    let http = crate::util::http();
    let (mut ann, _) = client(&ws, "ann").await;
    subscribe(&mut ann, "room:1").await;
    let (mut slow, slow_id) = client(&ws, "slow").await;
    subscribe(&mut slow, "room:1").await;
    subscribe(&mut slow, "plain:flood").await;
    assert_eq!(next_of(&mut ann, "join").await["info"]["client"], slow_id);
    // A burst the slow client's two-frame queue cannot take in one go.
    let items: Vec<Value> = (0..500)
        .map(|i| json!({"action":"broadcast","channel":"plain:flood","data":i}))
        .collect();
    let r = http
        .post(format!("{}/api/batch", server.origin))
        .bearer_auth(API_KEY)
        .json(&json!({ "items": items }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let leave = next_of(&mut ann, "leave").await;
    assert_eq!(leave["info"]["client"], slow_id);
    let (disconnect, _) = slow.until_closed().await.unwrap();
    assert_eq!(disconnect.map(|d| d["code"].clone()), Some(json!(4003)));
    assert_eq!(
        until_total(&http, &server.origin, "room:1", 1).await["users"],
        1
    );
}

/// Many entries, then every client gone abruptly: the gauge and the
/// channel's presence come back to nothing.
#[tokio::test]
async fn the_entry_gauge_comes_back_to_zero_when_everyone_leaves() {
    let (_dir, server) = start("");
    let ws = server.ws_url();
    let http = crate::util::http();
    let mut all = Vec::new();
    for i in 0..40 {
        let (mut c, _) = client(&ws, &format!("u{}", i % 10)).await;
        subscribe(&mut c, "quiet:many").await;
        subscribe(&mut c, &format!("quiet:own{i}")).await;
        all.push(c);
    }
    let body = until_total(&http, &server.origin, "quiet:many", 40).await;
    assert_eq!(body["users"], 10, "{body}");
    assert_eq!(gauge(&http, &server.origin).await, 80);
    drop(all);
    until_total(&http, &server.origin, "quiet:many", 0).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge(&http, &server.origin).await != 0 {
        assert!(
            Instant::now() < deadline,
            "herald_presence_entries stays above 0"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn gauge(http: &reqwest::Client, origin: &str) -> u64 {
    metric(http, origin, "herald_presence_entries").await as u64
}

/// A client that goes silent is closed for its heartbeat (4002) and leaves.
#[tokio::test]
async fn a_heartbeat_timeout_removes_its_entry() {
    let (_dir, server) =
        start("[heartbeat]\nping_interval = \"300ms\"\npong_timeout = \"300ms\"\n");
    let ws = server.ws_url();
    let http = crate::util::http();
    let (mut ann, _) = client(&ws, "ann").await;
    subscribe(&mut ann, "room:1").await;
    let (mut mute, mute_id) = client(&ws, "mute").await;
    mute.auto_pong = false;
    subscribe(&mut mute, "room:1").await;
    assert_eq!(next_of(&mut ann, "join").await["info"]["client"], mute_id);
    // Ann answers pings while she waits; the mute client sends nothing.
    let leave = next_of(&mut ann, "leave").await;
    assert_eq!(leave["info"]["client"], mute_id);
    let (disconnect, _) = mute.until_closed().await.unwrap();
    assert_eq!(disconnect.map(|d| d["code"].clone()), Some(json!(4002)));
    assert_eq!(
        until_total(&http, &server.origin, "room:1", 1).await["users"],
        1
    );
}
