//! Idempotent publishing (SPEC §5, issue 15.9): a key repeated within
//! `limits.idempotency_window` answers the original offset and cursor and
//! stores nothing new, whether the original is done or still in flight; and
//! a publish the store is slow to confirm answers 503 "outcome unknown", after
//! which a retry with the same key answers the original.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use herald_server::config::EngineKind;

use crate::util::*;

/// POSTs `body` to `path` with the API key and, if given, an `Idempotency-Key`.
async fn post(s: &TestServer, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = s.http.post(s.url(path)).bearer_auth(API_KEY).json(body);
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The offsets kept in `channel`'s history.
async fn offsets(s: &TestServer, channel: &str) -> Vec<u64> {
    let (status, page) = s
        .get(&format!("/api/channels/{channel}/messages"), None)
        .await;
    assert_eq!(status, 200, "{page}");
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_same_key_twice_answers_the_original_and_stores_once() {
    let s = TestServer::start().await;
    // Header on the REST endpoint.
    let first = post(
        &s,
        "/api/channels/chat:1/messages",
        Some("k-1"),
        &json!({"n": 1}),
    )
    .await;
    let again = post(
        &s,
        "/api/channels/chat:1/messages",
        Some("k-1"),
        &json!({"n": 1}),
    )
    .await;
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(first, again);
    // Body field on the seed's control endpoint, same key space per stream.
    let control = json!({"action": "broadcast", "channel": "chat:1", "data": {"n": 2}, "idempotency_key": "k-2"});
    let a = post(&s, "/api/websocket", None, &control).await;
    let b = post(&s, "/api/websocket", None, &control).await;
    assert_eq!((a.0, a.1["offset"].as_u64()), (200, Some(2)), "{}", a.1);
    assert_eq!(a, b);
    // Header on the control endpoint answers as the REST one did for k-1.
    let c = post(
        &s,
        "/api/websocket",
        Some("k-1"),
        &json!({"action": "broadcast", "channel": "chat:1", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(c.1["cursor"], first.1["cursor"]);
    assert_eq!(offsets(&s, "chat:1").await, vec![1, 2]);

    // Notifies, both ways.
    let n1 = post(
        &s,
        "/api/users/u%201/notifications",
        Some("n-1"),
        &json!({"hi": 1}),
    )
    .await;
    let n2 = post(
        &s,
        "/api/users/u%201/notifications",
        Some("n-1"),
        &json!({"hi": 1}),
    )
    .await;
    assert_eq!(
        (n1.0, n1.1["userId"].as_str()),
        (200, Some("u 1")),
        "{}",
        n1.1
    );
    assert_eq!(n1, n2);
    let notify = json!({"action": "notify", "userId": "u 1", "data": {}, "idempotency_key": "n-2"});
    let n3 = post(&s, "/api/websocket", None, &notify).await;
    assert_eq!(n3, post(&s, "/api/websocket", None, &notify).await);
    assert_eq!(n3.1["offset"], 2);

    // A key is per stream, and different keys are different publishes.
    let other = post(&s, "/api/channels/chat:2/messages", Some("k-1"), &json!({})).await;
    assert_eq!(other.1["offset"], 1);
    let k3 = post(&s, "/api/channels/chat:1/messages", Some("k-3"), &json!({})).await;
    assert_eq!(k3.1["offset"], 3);
    // Header and body disagreeing is refused, not guessed at.
    let both = post(&s, "/api/websocket", Some("k-9"), &control).await;
    assert_eq!(
        (both.0, both.1["error"]["code"].as_u64()),
        (400, Some(1000))
    );
    assert_eq!(offsets(&s, "chat:1").await, vec![1, 2, 3]);
    s.stop().await;
}

#[tokio::test]
async fn concurrent_duplicates_publish_once() {
    let s = Arc::new(TestServer::start().await);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            post(
                &s,
                "/api/channels/chat:1/messages",
                Some("same"),
                &json!({"x": 1}),
            )
            .await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!(answers[0].1["offset"], 1);
    assert_eq!(offsets(&s, "chat:1").await, vec![1]);
}

#[tokio::test]
async fn batch_items_carry_their_own_keys() {
    let s = TestServer::start().await;
    let batch = json!({"items": [
        {"action": "broadcast", "channel": "chat:1", "data": 1, "idempotency_key": "b-1"},
        {"action": "broadcast", "channel": "chat:1", "data": 2, "idempotency_key": "b-2"},
        {"action": "broadcast", "channel": "chat:1", "data": 1, "idempotency_key": "b-1"},
        {"action": "broadcast", "channel": "chat:1", "data": 3, "idempotency_key": "bad key"},
        {"action": "broadcast", "channel": "chat:1", "data": 4, "idempotency_key": 7},
        {"action": "broadcast", "channel": "chat:1", "data": 5},
    ]});
    let (status, first) = post(&s, "/api/batch", None, &batch).await;
    assert_eq!(status, 200, "{first}");
    let offsets_of = |v: &Value| -> Vec<Option<u64>> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["offset"].as_u64())
            .collect()
    };
    assert_eq!(
        offsets_of(&first),
        vec![Some(1), Some(2), Some(1), None, None, Some(3)]
    );
    assert_eq!(first["results"][3]["error"]["code"], 1000);
    assert_eq!(first["results"][4]["error"]["code"], 1000);
    // Replayed: the keyed items answer as before, the unkeyed one publishes again.
    let (_, second) = post(&s, "/api/batch", None, &batch).await;
    assert_eq!(
        offsets_of(&second),
        vec![Some(1), Some(2), Some(1), None, None, Some(4)]
    );
    assert_eq!(offsets(&s, "chat:1").await, vec![1, 2, 3, 4]);
    // One header for a whole batch is refused rather than ignored.
    let (status, body) = post(&s, "/api/batch", Some("whole"), &batch).await;
    assert_eq!(
        (status, body["error"]["code"].as_u64()),
        (400, Some(1000)),
        "{body}"
    );
    s.stop().await;
}

#[tokio::test]
async fn keys_are_bounded_expire_and_are_gauged() {
    let s = TestServer::with(|c| {
        // Long enough that a loaded machine answers a repeat within it.
        c.limits.idempotency_window = Duration::from_millis(1000);
        c.limits.max_idempotency_keys = 3;
    })
    .await;
    for bad in ["k".repeat(201), "two words".into(), "caf\u{e9}".into()] {
        let r = s
            .http
            .post(s.url("/api/channels/chat:1/messages"))
            .bearer_auth(API_KEY)
            .header("Idempotency-Key", bad.as_bytes())
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], 1000, "{bad:?}");
    }
    assert!(
        offsets(&s, "chat:1").await.is_empty(),
        "bad keys store nothing"
    );
    let k200 = "k".repeat(200);
    assert_eq!(
        post(&s, "/api/channels/chat:1/messages", Some(&k200), &json!({}))
            .await
            .0,
        200
    );

    // At most 3 keys are remembered, whatever a client sends.
    for i in 0..10 {
        let key = format!("key-{i}");
        assert_eq!(
            post(&s, "/api/channels/chat:2/messages", Some(&key), &json!(i))
                .await
                .0,
            200
        );
    }
    assert!(
        s.node.idempotency_keys() <= 3,
        "{}",
        s.node.idempotency_keys()
    );
    let metrics = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = metrics
        .lines()
        .find_map(|l| l.strip_prefix("herald_idempotency_keys "))
        .unwrap_or_else(|| panic!("no gauge in {metrics}"));
    assert!(gauge.parse::<u64>().unwrap() <= 3, "{gauge}");

    // Within the window the key answers the original; after it, it publishes anew.
    let first = post(&s, "/api/channels/chat:3/messages", Some("w"), &json!({})).await;
    assert_eq!(
        post(&s, "/api/channels/chat:3/messages", Some("w"), &json!({})).await,
        first
    );
    // The window is time passing, not an event to await.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = post(&s, "/api/channels/chat:3/messages", Some("w"), &json!({})).await;
    assert_eq!(later.1["offset"], 2, "{}", later.1);
    s.stop().await;
}

/// The issue's own failure: the store stalls (another connection holds
/// SQLite's write lock), the publish is not confirmed in time. The answer must
/// say "unknown", and the retry with the same key must answer the original
/// once the store catches up, leaving one message, not two.
#[tokio::test]
async fn a_stalled_store_answers_unknown_and_the_retry_publishes_once() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let s = TestServer::in_dir(dir.clone(), |c| {
        c.engine.kind = EngineKind::Embedded;
        c.limits.request_timeout = Duration::from_millis(800);
    })
    .await;
    // The first publish caches the stream's position in the writer, so the
    // next transaction starts with its write and waits on the lock (SQLite's
    // busy timeout) instead of failing at once.
    assert_eq!(
        post(&s, "/api/channels/chat:1/messages", None, &json!(0))
            .await
            .0,
        200
    );
    let db = rusqlite::Connection::open(dir.path().join("data/herald.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();

    let (status, body) = post(
        &s,
        "/api/channels/chat:1/messages",
        Some("stall-1"),
        &json!(1),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("unknown") && message.contains("Idempotency-Key"),
        "{message}"
    );

    db.execute_batch("ROLLBACK").unwrap();
    let (status, retry) = post(
        &s,
        "/api/channels/chat:1/messages",
        Some("stall-1"),
        &json!(1),
    )
    .await;
    assert_eq!(
        (status, retry["offset"].as_u64()),
        (200, Some(2)),
        "{retry}"
    );
    assert_eq!(offsets(&s, "chat:1").await, vec![1, 2]);
    // Nothing is left in flight.
    assert_eq!(s.node.idempotency_keys(), 1);
    s.stop().await;
}

/// The embedded store keeps each key with its message, in one transaction:
/// a repeat after a restart still answers the original.
#[tokio::test]
async fn keys_survive_a_restart_of_the_embedded_store() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let embedded = |c: &mut herald_server::Config| c.engine.kind = EngineKind::Embedded;
    let s = TestServer::in_dir(dir.clone(), embedded).await;
    let first = post(
        &s,
        "/api/channels/chat:1/messages",
        Some("durable-1"),
        &json!(1),
    )
    .await;
    let batch = json!({"items": [{"action": "notify", "userId": "u1", "data": 1, "idempotency_key": "durable-2"}]});
    let (_, first_batch) = post(&s, "/api/batch", None, &batch).await;
    s.stop().await;

    let s = TestServer::in_dir(dir.clone(), embedded).await;
    assert_eq!(s.node.idempotency_keys(), 2, "both keys are back");
    let again = post(
        &s,
        "/api/channels/chat:1/messages",
        Some("durable-1"),
        &json!(1),
    )
    .await;
    assert_eq!((again.0, &again.1), (200, &first.1));
    let (_, again_batch) = post(&s, "/api/batch", None, &batch).await;
    assert_eq!(again_batch, first_batch);
    assert_eq!(offsets(&s, "chat:1").await, vec![1]);
    s.stop().await;
}
