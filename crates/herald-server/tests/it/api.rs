//! SPEC §5 server API: the seed's control endpoint, the REST forms, batch,
//! status, and bad input that must get the spec's errors.

use serde_json::{json, Value};

use crate::util::*;

async fn post_json(s: &TestServer, path: &str, body: Value) -> (u16, Value) {
    s.post_raw(path, "application/json", body.to_string()).await
}

#[tokio::test]
async fn seed_control_endpoint_broadcasts_and_notifies() {
    let s = TestServer::start().await;
    let mut sub = s.connected(Some("user-123")).await;
    sub.subscribe("venue_updates", None).await.unwrap();
    let (status, body) = post_json(&s, "/api/websocket", json!({"action": "broadcast", "channel": "venue_updates", "data": {"id": "v1", "name": "Bar"}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(body["channel"], "venue_updates");
    assert_eq!(body["offset"], 1);
    assert!(body["cursor"].as_str().unwrap().ends_with(":1"));
    assert_eq!(sub.next_push().await.unwrap()["data"]["name"], "Bar");
    let (status, body) = post_json(
        &s,
        "/api/websocket",
        json!({"action": "notify", "userId": "user-123", "data": {"title": "Venue Updated"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["userId"].clone(), body["offset"].clone()),
        (json!("user-123"), json!(1))
    );
    let n = sub.next_push().await.unwrap();
    assert_eq!(
        (n["type"].clone(), n["data"]["title"].clone()),
        (json!("notification"), json!("Venue Updated"))
    );
    // null is a value like any other.
    let (status, _) = post_json(
        &s,
        "/api/websocket",
        json!({"action": "broadcast", "channel": "venue_updates", "data": null}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn status_reports_the_seed_fields() {
    let s = TestServer::start().await;
    let mut c = s.connected(Some("u1")).await;
    c.subscribe("venue:1", None).await.unwrap();
    s.publish("venue:1", json!(1)).await;
    c.next_push().await.unwrap();
    let (status, body) = s.get("/api/websocket", Some(API_KEY)).await;
    assert_eq!(status, 200);
    for key in [
        "node",
        "uptime_s",
        "connections",
        "users",
        "channels",
        "subscriptions",
        "messages_in",
        "messages_out",
        "engine",
    ] {
        assert!(body.get(key).is_some(), "missing {key}: {body}");
    }
    assert_eq!(body["connections"], 1);
    assert_eq!(body["users"], 1);
    assert_eq!(body["channels"], 1);
    assert_eq!(body["messages_in"], 1);
    assert_eq!(body["messages_out"], 1);
    assert_eq!(body["engine"], "memory");
}

#[tokio::test]
async fn the_server_api_needs_an_api_key_and_never_a_client_token() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/api/websocket", None).await;
    assert_eq!((status, body["error"]["code"].clone()), (401, json!(1001)));
    let (status, _) = s.get("/api/websocket", Some(&token("u", 60))).await;
    assert_eq!(status, 401);
    let (status, _) = s.get("/api/websocket", Some("wrong-key-123")).await;
    assert_eq!(status, 401);
    let r = s
        .http
        .post(s.url("/api/channels/venue:1/messages"))
        .json(&json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // And an API key is no client token.
    let (status, _) = s.get("/api/venues/updates", Some(API_KEY)).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn rest_forms_publish_and_notify() {
    let s = TestServer::start().await;
    let a = s.publish("promotions:9", json!({"deal": "2 for 1"})).await;
    assert_eq!(
        (a["ok"].clone(), a["channel"].clone(), a["offset"].clone()),
        (json!(true), json!("promotions:9"), json!(1))
    );
    let n = s.notify("u-9", json!("hello")).await;
    assert_eq!(
        (n["userId"].clone(), n["offset"].clone()),
        (json!("u-9"), json!(1))
    );
    let (_, page) = s
        .get("/api/venues/9/promotions", Some(&token("x", 60)))
        .await;
    assert_eq!(page["messages"][0]["data"], json!({"deal": "2 for 1"}));
}

#[tokio::test]
async fn batch_publishes_in_order_with_one_result_each() {
    let s = TestServer::start().await;
    let items = json!({"items": [
        {"action": "broadcast", "channel": "venue:1", "data": {"a": 1}},
        {"action": "broadcast", "channel": "bad channel", "data": 1},
        {"action": "notify", "userId": "u1", "data": {"b": 2}},
        {"action": "launch", "data": 1},
        {"action": "broadcast", "channel": "venue:1", "data": {"a": 2}},
        {"action": "broadcast", "channel": "venue:1"},
        "not an object"
    ]});
    let (status, body) = post_json(&s, "/api/batch", items).await;
    assert_eq!(status, 200, "{body}");
    let r = body["results"].as_array().unwrap();
    assert_eq!(r.len(), 7);
    assert_eq!(
        (r[0]["ok"].clone(), r[0]["offset"].clone()),
        (json!(true), json!(1))
    );
    assert_eq!(
        (r[1]["ok"].clone(), r[1]["error"]["code"].clone()),
        (json!(false), json!(1003))
    );
    assert_eq!(
        (r[2]["userId"].clone(), r[2]["offset"].clone()),
        (json!("u1"), json!(1))
    );
    assert_eq!(r[3]["error"]["code"], 1000);
    assert_eq!(r[4]["offset"], 2);
    assert_eq!(r[5]["error"]["code"], 1000);
    assert_eq!(r[6]["error"]["code"], 1000);
    let big: Vec<Value> = (0..1001)
        .map(|_| json!({"action": "broadcast", "channel": "a", "data": 1}))
        .collect();
    let (status, body) = post_json(&s, "/api/batch", json!({"items": big})).await;
    // SPEC §5: 413 is "too large", code 1006 (issue 7.6).
    assert_eq!((status, body["error"]["code"].clone()), (413, json!(1006)));
}

#[tokio::test]
async fn bad_requests_get_the_spec_errors_never_a_500() {
    let s = TestServer::with(|c| c.limits.max_message_bytes = 1000).await;
    let cases: Vec<(&str, &str, String, u16, u16)> = vec![
        (
            "/api/websocket",
            "application/json",
            "not json".into(),
            400,
            1000,
        ),
        (
            "/api/websocket",
            "application/json",
            "[1,2]".into(),
            400,
            1000,
        ),
        (
            "/api/websocket",
            "application/json",
            r#"{"action":"broadcast","channel":"ok"}"#.into(),
            400,
            1000,
        ),
        (
            "/api/websocket",
            "application/json",
            r#"{"action":"broadcast","channel":7,"data":1}"#.into(),
            400,
            1000,
        ),
        (
            "/api/websocket",
            "application/json",
            r#"{"action":"broadcast","channel":"../x","data":1}"#.into(),
            400,
            1003,
        ),
        (
            "/api/websocket",
            "application/json",
            r#"{"action":"notify","userId":"","data":1}"#.into(),
            400,
            1000,
        ),
        (
            "/api/websocket",
            "text/plain",
            r#"{"action":"broadcast","channel":"a","data":1}"#.into(),
            415,
            1000,
        ),
        (
            "/api/websocket",
            "application/json",
            format!(
                r#"{{"action":"broadcast","channel":"a","data":"{}"}}"#,
                "x".repeat(2000)
            ),
            413,
            1006,
        ),
        (
            "/api/channels/a/messages",
            "application/json",
            format!("\"{}\"", "x".repeat(2000)),
            413,
            1006,
        ),
        (
            "/api/channels/a/messages",
            "application/json",
            "x".repeat(100_000),
            413,
            1006,
        ),
        (
            "/api/channels/a%20b/messages",
            "application/json",
            "1".into(),
            400,
            1003,
        ),
        (
            "/api/channels/a/messages",
            "application/json",
            "".into(),
            400,
            1000,
        ),
        (
            "/api/batch",
            "application/json",
            r#"{"items":7}"#.into(),
            400,
            1000,
        ),
    ];
    for (path, ctype, body, status, code) in cases {
        let (got, reply) = s.post_raw(path, ctype, body.clone()).await;
        assert_eq!(
            (got, reply["error"]["code"].clone()),
            (status, json!(code)),
            "{path} {ctype} {}",
            &body[..body.len().min(80)]
        );
        assert!(reply["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let (status, body) = s.get("/no/such/path", None).await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!(1000)));
    let r = s.http.delete(s.url("/api/websocket")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let (status, _) = s.get("/health", None).await;
    assert_eq!(status, 200);
}
