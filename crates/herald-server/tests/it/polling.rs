//! SPEC §5 polling fallback: cursors, times, limits, long polls, the seed's
//! aliases, and who may read what.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::*;

fn offsets(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn polling_pages_by_cursor_without_skip_or_repeat() {
    let s = TestServer::start().await;
    let t = token("u", 60);
    let (status, empty) = s.get("/api/channels/venue:5/messages", Some(&t)).await;
    assert_eq!(status, 200);
    assert_eq!(offsets(&empty), Vec::<u64>::new());
    assert_eq!(
        (empty["recovered"].clone(), empty["more"].clone()),
        (json!(true), json!(false))
    );
    let start = empty["cursor"].as_str().unwrap().to_owned();
    assert!(start.ends_with(":0"));
    for i in 1..=25 {
        s.publish("venue:5", json!({"i": i})).await;
    }
    let mut cursor = start;
    let mut seen = Vec::new();
    loop {
        let (status, page) = s
            .get(
                &format!("/api/channels/venue:5/messages?since={cursor}&limit=10"),
                Some(&t),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["channel"], "venue:5");
        assert_eq!(page["recovered"], true);
        let got = offsets(&page);
        assert!(got.len() <= 10);
        for m in page["messages"].as_array().unwrap() {
            assert_eq!(m["data"]["i"], m["offset"]);
            assert!(m["ts"].as_u64().unwrap() > 1_700_000_000_000);
        }
        seen.extend(got);
        cursor = page["cursor"].as_str().unwrap().to_owned();
        if page["more"] == false {
            break;
        }
    }
    assert_eq!(seen, (1..=25).collect::<Vec<u64>>());
    assert!(cursor.ends_with(":25"));
}

#[tokio::test]
async fn since_accepts_unix_millis_and_rfc3339() {
    let s = TestServer::start().await;
    let t = token("u", 60);
    s.publish("venue_updates", json!("old")).await;
    let (_, page) = s.get("/api/venues/updates", Some(&t)).await;
    let old_ts = page["messages"][0]["ts"].as_u64().unwrap();
    // Make sure the next message has a later ts than `old_ts`.
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.publish("venue_updates", json!("new")).await;
    let (_, page) = s
        .get(&format!("/api/venues/updates?since={old_ts}"), Some(&t))
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["messages"][0]["data"], "new");
    assert_eq!(page["recovered"], true);
    let (_, page) = s
        .get("/api/venues/updates?since=2000-01-01T00:00:00Z", Some(&t))
        .await;
    assert_eq!(offsets(&page), vec![1, 2]);
    let (_, page) = s
        .get(
            "/api/venues/updates?since=2999-01-01T00:00:00%2B02:00",
            Some(&t),
        )
        .await;
    assert_eq!(offsets(&page), Vec::<u64>::new());
    for bad in [
        "since=yesterday",
        "since=e:",
        "limit=0",
        "limit=5000",
        "wait=99",
        "limit=ten",
    ] {
        let (status, body) = s.get(&format!("/api/venues/updates?{bad}"), Some(&t)).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (400, json!(1000)),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn seed_aliases_read_their_channels() {
    let s = TestServer::start().await;
    let t = token("u", 60);
    for (channel, path) in [
        ("venue_updates", "/api/venues/updates"),
        ("venue:42", "/api/venues/42/updates"),
        ("vibe_checks:42", "/api/venues/42/vibe-checks"),
        ("promotions:42", "/api/venues/42/promotions"),
    ] {
        s.publish(channel, json!({"on": channel})).await;
        let (status, page) = s.get(path, Some(&t)).await;
        assert_eq!(status, 200, "{path}: {page}");
        assert_eq!(page["channel"], channel);
        assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{path}");
        assert_eq!(page["messages"][0]["data"]["on"], channel);
    }
    let (status, body) = s.get("/api/venues/bad%20id/updates", Some(&t)).await;
    assert_eq!((status, body["error"]["code"].clone()), (400, json!(1003)));
}

#[tokio::test]
async fn notifications_poll_only_the_callers_inbox() {
    let s = TestServer::start().await;
    s.notify("alice", json!({"for": "alice"})).await;
    s.notify("bob", json!({"for": "bob"})).await;
    let (status, page) = s.get("/api/notifications", Some(&token("alice", 60))).await;
    assert_eq!(status, 200);
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    assert_eq!(page["messages"][0]["data"]["for"], "alice");
    let (status, _) = s.get("/api/notifications", None).await;
    assert_eq!(status, 401, "anonymous clients have no inbox");
    let (status, body) = s
        .get("/api/notifications", Some(&token("alice", -60)))
        .await;
    assert_eq!((status, body["error"]["code"].clone()), (401, json!(1009)));
    // The dev-mode `user` parameter means nothing outside dev mode.
    let (status, _) = s.get("/api/notifications?user=alice", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn anonymous_polling_reaches_public_namespaces_only() {
    let s = TestServer::start().await;
    s.publish("chat:1", json!(1)).await;
    let (status, _) = s.get("/api/channels/chat:1/messages", None).await;
    assert_eq!(status, 200);
    let (status, body) = s.get("/api/venues/updates", None).await;
    assert_eq!((status, body["error"]["code"].clone()), (403, json!(1002)));
    let s2 = TestServer::with(|c| c.auth.allow_anonymous = false).await;
    let (status, _) = s2.get("/api/channels/chat:1/messages", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn long_poll_returns_when_a_message_arrives() {
    let s = TestServer::start().await;
    let t = token("u", 60);
    let (_, page) = s.get("/api/venues/3/updates", Some(&t)).await;
    let cursor = page["cursor"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let poll = {
        let http = s.http.clone();
        let url = s.url(&format!("/api/venues/3/updates?since={cursor}&wait=20"));
        let t = t.clone();
        tokio::spawn(async move {
            http.get(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    // Publish only once the poll is held (the waiter is registered).
    let node = s.node.clone();
    assert!(eventually(Duration::from_secs(5), || node.long_polls_held() == 1).await);
    s.publish("venue:3", json!({"live": true})).await;
    let page = poll.await.unwrap();
    assert_eq!(page["messages"][0]["data"], json!({"live": true}));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn long_poll_times_out_empty() {
    let s = TestServer::start().await;
    let started = Instant::now();
    let (status, page) = s
        .get("/api/channels/chat:quiet/messages?wait=0.5", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(offsets(&page), Vec::<u64>::new());
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert!(page["cursor"].as_str().unwrap().ends_with(":0"));
}

#[tokio::test]
async fn a_poll_from_a_foreign_epoch_is_not_recovered() {
    let s = TestServer::start().await;
    s.publish("chat:e", json!(1)).await;
    let (_, page) = s
        .get("/api/channels/chat:e/messages?since=zzzz:5", None)
        .await;
    assert_eq!(page["recovered"], false);
    assert_eq!(offsets(&page), vec![1]);
}
