//! SPEC §3: the WebSocket protocol, command by command, error by error.

use std::time::Duration;

use serde_json::{json, Value};

use crate::util::*;

fn assert_error(frame: &Value, id: Option<u64>, code: u16) {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], code, "{frame}");
    match id {
        Some(id) => assert_eq!(frame["id"], id, "{frame}"),
        None => assert!(frame.get("id").is_none(), "{frame}"),
    }
}

#[tokio::test]
async fn connect_with_token_reports_user_inbox_and_ping_interval() {
    let s = TestServer::start().await;
    let mut c = s.open().await;
    let reply = c.connect(Some(&token("user-123", 60))).await.unwrap();
    assert_eq!(reply["type"], "connected");
    assert_eq!(reply["user"], "user-123");
    assert_eq!(reply["ping_interval"], 25);
    assert!(reply["client"].as_str().is_some_and(|c| !c.is_empty()));
    let inbox = &reply["notifications"];
    assert!(inbox["cursor"].as_str().unwrap().ends_with(":0"), "{reply}");
    assert_eq!(inbox["recovered"], true);
}

#[tokio::test]
async fn bad_tokens_get_1001_or_1009_then_disconnect_4001() {
    let s = TestServer::start().await;
    let expired = token("u", -60);
    let cases: [(&str, u16); 4] = [
        ("garbage", 1001),
        ("a.b.c", 1001),
        (&expired, 1009),
        (API_KEY, 1001),
    ];
    for (bad, code) in cases {
        let mut c = s.open().await;
        let reply = c.connect(Some(bad)).await.unwrap();
        assert_error(&reply, Some(1), code);
        let (disconnect, close) = c.until_closed().await.unwrap();
        let disconnect = disconnect.expect("disconnect frame before close");
        assert_eq!(disconnect["code"], 4001);
        assert_eq!(disconnect["reconnect"], false);
        assert_eq!(close, Some(4001));
    }
}

#[tokio::test]
async fn token_is_required_unless_anonymous_is_allowed() {
    let s = TestServer::with(|c| c.auth.allow_anonymous = false).await;
    let mut c = s.open().await;
    assert_error(&c.connect(None).await.unwrap(), Some(1), 1001);
    assert_eq!(c.until_closed().await.unwrap().1, Some(4001));
    // Naming a user without a token is a dev-mode convenience only.
    let mut c = s.open().await;
    let reply = c
        .request(json!({"type": "connect", "user": "alice"}))
        .await
        .unwrap();
    assert_error(&reply, Some(1), 1001);
}

#[tokio::test]
async fn anonymous_clients_reach_public_namespaces_only() {
    let s = TestServer::start().await;
    let mut c = s.connected(None).await;
    assert_eq!(
        c.subscribe("chat:1", None).await.unwrap()["type"],
        "subscribed"
    );
    assert_error(&c.subscribe("venue:1", None).await.unwrap(), Some(3), 1002);
    assert_error(
        &c.subscribe("venue_updates", None).await.unwrap(),
        Some(4),
        1002,
    );
}

#[tokio::test]
async fn claim_namespaces_follow_the_channels_claim_and_admin_role() {
    let s = TestServer::start().await;
    let mut c = s.open().await;
    c.connect(Some(&token_with(
        "u1",
        60,
        None,
        // SPEC §4: `*` stands for whole trailing segments only.
        Some(vec!["priv:a:*", "priv:exact"]),
    )))
    .await
    .unwrap();
    assert_eq!(
        c.subscribe("priv:a:bc", None).await.unwrap()["type"],
        "subscribed"
    );
    assert_eq!(
        c.subscribe("priv:exact", None).await.unwrap()["type"],
        "subscribed"
    );
    assert_error(&c.subscribe("priv:b", None).await.unwrap(), Some(4), 1002);
    let mut admin = s.open().await;
    admin
        .connect(Some(&token_with("boss", 60, Some("admin"), None)))
        .await
        .unwrap();
    assert_eq!(
        admin.subscribe("priv:b", None).await.unwrap()["type"],
        "subscribed"
    );
}

#[tokio::test]
async fn commands_before_connect_get_1010_and_the_socket_stays_open() {
    let s = TestServer::start().await;
    let mut c = s.open().await;
    assert_error(&c.subscribe("chat:1", None).await.unwrap(), Some(1), 1010);
    assert_error(
        &c.request(json!({"type": "publish", "channel": "chat:1", "data": 1}))
            .await
            .unwrap(),
        Some(2),
        1010,
    );
    assert_eq!(c.connect(None).await.unwrap()["type"], "connected");
    assert_error(&c.connect(None).await.unwrap(), Some(4), 1000);
}

#[tokio::test]
async fn connect_timeout_closes_with_4001() {
    let s = TestServer::with(|c| c.limits.connect_timeout = Duration::from_millis(300)).await;
    let mut c = s.open().await;
    let (disconnect, code) = c.until_closed().await.unwrap();
    assert_eq!(disconnect.unwrap()["code"], 4001);
    assert_eq!(code, Some(4001));
}

#[tokio::test]
async fn subscribe_and_unsubscribe_with_their_errors() {
    let s = TestServer::start().await;
    let mut c = s.connected(Some("u1")).await;
    let sub = c.subscribe("venue:42", None).await.unwrap();
    assert_eq!(sub["type"], "subscribed");
    assert_eq!(sub["channel"], "venue:42");
    assert_eq!(
        (sub["recovered"].clone(), sub["missed"].clone()),
        (json!(true), json!(0))
    );
    assert!(sub["cursor"].as_str().unwrap().ends_with(":0"));
    assert_error(&c.subscribe("venue:42", None).await.unwrap(), Some(3), 1007);
    s.publish("venue:42", json!({"n": 1})).await;
    let push = c.next_push().await.unwrap();
    assert_eq!(push["channel"], "venue:42");
    assert_eq!(push["data"], json!({"n": 1}));
    assert_eq!(push["offset"], 1);
    let un = c
        .request(json!({"type": "unsubscribe", "channel": "venue:42"}))
        .await
        .unwrap();
    assert_eq!(
        un,
        json!({"type": "unsubscribed", "id": 4, "channel": "venue:42"})
    );
    assert_error(
        &c.request(json!({"type": "unsubscribe", "channel": "venue:42"}))
            .await
            .unwrap(),
        Some(5),
        1008,
    );
    s.publish("venue:42", json!({"n": 2})).await;
    s.publish("chat:other", json!({})).await;
    // Nothing arrives for a channel we left: the next reply is the pong.
    let pong = c.request(json!({"type": "ping"})).await.unwrap();
    assert_eq!(pong, json!({"type": "pong", "id": 6}));
    assert!(c.next_push().await.is_err(), "no push after unsubscribe");
}

#[tokio::test]
async fn malformed_commands_get_1000_or_1003_and_the_connection_stays() {
    let s = TestServer::start().await;
    let mut c = s.connected(None).await;
    let cases: [(&str, Option<u64>, u16); 9] = [
        ("not json", None, 1000),
        ("[1,2,3]", None, 1000),
        (r#"{"type":"bogus","id":5}"#, Some(5), 1000),
        (r#"{"type":"subscribe","id":6}"#, Some(6), 1000),
        (
            r#"{"type":"subscribe","id":7,"channel":"../etc/passwd"}"#,
            Some(7),
            1003,
        ),
        (
            r#"{"type":"subscribe","id":8,"channel":"a b"}"#,
            Some(8),
            1003,
        ),
        (
            r#"{"type":"subscribe","id":9,"channel":"chat:1","since":"nope"}"#,
            Some(9),
            1000,
        ),
        (r#"{"type":"ping","id":-4}"#, None, 1000),
        (r#"{"type":"ping","id":9007199254740992}"#, None, 1000),
    ];
    for (text, id, code) in cases {
        c.send_text(text).await.unwrap();
        assert_error(&c.next_frame().await.unwrap(), id, code);
    }
    c.send_binary(vec![1, 2, 3]).await.unwrap();
    assert_error(&c.next_frame().await.unwrap(), None, 1000);
    let long = format!(
        r#"{{"type":"subscribe","id":10,"channel":"{}"}}"#,
        "a".repeat(201)
    );
    c.send_text(&long).await.unwrap();
    assert_error(&c.next_frame().await.unwrap(), Some(10), 1003);
    assert_eq!(
        c.subscribe("chat:1", None).await.unwrap()["type"],
        "subscribed"
    );
}

#[tokio::test]
async fn ping_before_connect_is_refused_with_1010() {
    let s = TestServer::start().await;
    let mut c = s.open().await;
    c.send(&json!({"type": "ping", "id": 3})).await.unwrap();
    assert_error(&c.next_frame().await.unwrap(), Some(3), 1010);
    // The connection stays and connects normally afterwards.
    assert_eq!(c.connect(None).await.unwrap()["type"], "connected");
    assert_eq!(
        c.request(json!({"type": "ping"})).await.unwrap()["type"],
        "pong"
    );
}

#[tokio::test]
async fn ping_with_id_gets_pong_with_that_id() {
    let s = TestServer::start().await;
    let mut c = s.connected(None).await;
    c.send(&json!({"type": "ping", "id": 9007199254740991u64}))
        .await
        .unwrap();
    assert_eq!(
        c.next_frame().await.unwrap(),
        json!({"type": "pong", "id": 9007199254740991u64})
    );
}

#[tokio::test]
async fn client_publish_only_where_the_namespace_allows() {
    let s = TestServer::start().await;
    let mut c = s.connected(Some("u1")).await;
    c.subscribe("chat:9", None).await.unwrap();
    let reply = c
        .request(json!({"type": "publish", "channel": "chat:9", "data": {"text": "hi"}}))
        .await
        .unwrap();
    assert_eq!(
        reply,
        json!({"type": "published", "id": 3, "channel": "chat:9", "offset": 1})
    );
    let push = c.next_push().await.unwrap();
    assert_eq!(push["data"], json!({"text": "hi"}));
    let denied = c
        .request(json!({"type": "publish", "channel": "venue:1", "data": 1}))
        .await
        .unwrap();
    assert_error(&denied, Some(4), 1002);
}

#[tokio::test]
async fn oversized_publish_gets_1006() {
    let s = TestServer::with(|c| c.limits.max_message_bytes = 100).await;
    let mut c = s.connected(None).await;
    let big = "x".repeat(200);
    let reply = c
        .request(json!({"type": "publish", "channel": "chat:1", "data": big}))
        .await
        .unwrap();
    assert_error(&reply, Some(2), 1006);
    let ok = c
        .request(json!({"type": "publish", "channel": "chat:1", "data": "small"}))
        .await
        .unwrap();
    assert_eq!(ok["type"], "published");
}

#[tokio::test]
async fn frames_over_max_frame_bytes_close_with_1009() {
    let s = TestServer::with(|c| c.limits.max_frame_bytes = 1024).await;
    let mut c = s.connected(None).await;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(2000));
    c.send_text(&big).await.unwrap();
    let (disconnect, code) = c.until_closed().await.unwrap();
    assert_eq!(code, Some(1009));
    if let Some(d) = disconnect {
        assert_eq!(d["code"], 1009);
        assert_eq!(d["reconnect"], false);
    }
}

#[tokio::test]
async fn subscriptions_per_connection_are_limited_with_1004() {
    let s = TestServer::with(|c| c.limits.max_subscriptions_per_connection = 2).await;
    let mut c = s.connected(Some("u1")).await;
    c.subscribe("chat:1", None).await.unwrap();
    c.subscribe("chat:2", None).await.unwrap();
    assert_error(&c.subscribe("chat:3", None).await.unwrap(), Some(4), 1004);
    c.request(json!({"type": "unsubscribe", "channel": "chat:1"}))
        .await
        .unwrap();
    assert_eq!(
        c.subscribe("chat:3", None).await.unwrap()["type"],
        "subscribed"
    );
}

#[tokio::test]
async fn connections_per_user_and_in_total_are_limited() {
    let s = TestServer::with(|c| {
        c.limits.max_connections_per_user = 2;
        c.limits.max_connections = 3;
    })
    .await;
    let _a = s.connected(Some("u1")).await;
    let _b = s.connected(Some("u1")).await;
    let mut third = s.open().await;
    assert_error(
        &third.connect(Some(&token("u1", 60))).await.unwrap(),
        Some(1),
        1004,
    );
    let (disconnect, code) = third.until_closed().await.unwrap();
    assert_eq!(disconnect.unwrap()["reconnect"], true);
    assert_eq!(code, Some(4006));
    let _c = s.connected(Some("u2")).await;
    let mut fourth = s.open().await;
    assert_error(&fourth.connect(None).await.unwrap(), Some(1), 1004);
    assert_eq!(fourth.until_closed().await.unwrap().1, Some(4006));
    // Slots are given back when connections close.
    drop(_a);
    assert!(eventually(Duration::from_secs(5), || s.node.stats().connections == 2).await);
    let _d = s.connected(Some("u1")).await;
}

#[tokio::test]
async fn server_pings_and_closes_silent_clients_with_4002() {
    let s = TestServer::with(|c| {
        c.heartbeat.ping_interval = Duration::from_millis(200);
        c.heartbeat.pong_timeout = Duration::from_millis(200);
    })
    .await;
    let mut silent = s.connected(None).await;
    silent.auto_pong = false;
    let mut lively = s.connected(None).await;
    // A client that answers pings outlives several timeouts: it reads (and
    // auto-answers pings) for a while; nothing but pings arrives.
    let lively = tokio::spawn(async move {
        lively.timeout = Duration::from_millis(1500);
        assert!(matches!(
            lively.next_frame().await,
            Err(herald_client::Error::Timeout(_))
        ));
        lively.timeout = Duration::from_secs(5);
        lively.request(json!({"type": "ping"})).await.unwrap()
    });
    let first = silent.next_frame().await.unwrap();
    assert_eq!(first, json!({"type": "ping"}));
    let (disconnect, code) = silent.until_closed().await.unwrap();
    assert_eq!(disconnect.unwrap()["code"], 4002);
    assert_eq!(code, Some(4002));
    assert_eq!(lively.await.unwrap()["type"], "pong");
}

#[tokio::test]
async fn refresh_extends_the_session_and_refuses_another_user() {
    let s = TestServer::start().await;
    let mut c = s.open().await;
    c.connect(Some(&token("u1", 60))).await.unwrap();
    let ok = c
        .request(json!({"type": "refresh", "token": token("u1", 3600)}))
        .await
        .unwrap();
    assert_eq!(ok, json!({"type": "refreshed", "id": 2}));
    let other = c
        .request(json!({"type": "refresh", "token": token("u2", 3600)}))
        .await
        .unwrap();
    assert_error(&other, Some(3), 1002);
    let bad = c
        .request(json!({"type": "refresh", "token": "junk"}))
        .await
        .unwrap();
    assert_error(&bad, Some(4), 1001);
}

#[tokio::test]
async fn an_expiring_token_gets_1009_then_4005_without_refresh() {
    let s = TestServer::with(|c| c.auth.refresh_grace = Duration::from_millis(300)).await;
    let mut c = s.open().await;
    c.connect(Some(&token("u1", 1))).await.unwrap();
    let warning = c.next_frame().await.unwrap();
    assert_error(&warning, None, 1009);
    let (disconnect, code) = c.until_closed().await.unwrap();
    assert_eq!(disconnect.unwrap()["code"], 4005);
    assert_eq!(code, Some(4005));
}

#[tokio::test]
async fn refreshing_after_the_warning_keeps_the_connection() {
    let s = TestServer::with(|c| c.auth.refresh_grace = Duration::from_millis(500)).await;
    let mut c = s.open().await;
    c.connect(Some(&token("u1", 1))).await.unwrap();
    assert_error(&c.next_frame().await.unwrap(), None, 1009);
    let ok = c
        .request(json!({"type": "refresh", "token": token("u1", 3600)}))
        .await
        .unwrap();
    assert_eq!(ok["type"], "refreshed");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        c.request(json!({"type": "ping"})).await.unwrap()["type"],
        "pong"
    );
}

#[tokio::test]
async fn floods_get_1005_then_close_4004() {
    let s = TestServer::with(|c| {
        c.limits.commands_per_second = 1;
        c.limits.burst = 5;
        c.limits.abuse_threshold = 10;
    })
    .await;
    let mut c = s.connected(None).await;
    for i in 0..40 {
        c.send(&json!({"type": "ping", "id": i})).await.unwrap();
    }
    let mut pongs = 0;
    let mut limited = 0;
    let disconnect = loop {
        match c.next_event().await.unwrap() {
            herald_client::Event::Frame(f) if f["type"] == "pong" => pongs += 1,
            herald_client::Event::Frame(f) if f["type"] == "error" => {
                assert_eq!(f["code"], 1005);
                limited += 1;
            }
            herald_client::Event::Frame(f) if f["type"] == "disconnect" => break f,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(disconnect["code"], 4004);
    assert!(pongs <= 6, "burst of 5 (plus refill), got {pongs}");
    assert!(limited >= 9, "{limited}");
}
