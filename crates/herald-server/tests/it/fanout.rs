//! Fan-out: every subscriber gets every message once, in order; a slow
//! consumer is cut off (4003) without slowing anyone else.

use std::time::Duration;

use serde_json::json;

use crate::util::*;

#[tokio::test]
async fn every_subscriber_gets_every_message_in_order() {
    let s = TestServer::start().await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = s.connected(Some("u")).await;
        c.subscribe("venue:7", None).await.unwrap();
        clients.push(c);
    }
    for i in 1..=50 {
        s.publish("venue:7", json!({"i": i})).await;
    }
    for c in &mut clients {
        for i in 1..=50u64 {
            let push = c.next_push().await.unwrap();
            assert_eq!(push["offset"], i);
            assert_eq!(push["data"]["i"], i);
            assert_eq!(
                push["cursor"].as_str().unwrap().split(':').nth(1).unwrap(),
                i.to_string()
            );
        }
    }
    assert_eq!(s.node.stats().messages_out, 20 * 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_closed_with_4003_and_others_get_everything() {
    let s = TestServer::with(|c| c.limits.outbound_queue = 64).await;
    let mut stalled = s.connected(None).await;
    stalled.subscribe("chat:big", None).await.unwrap();
    let mut healthy = s.connected(None).await;
    healthy.subscribe("chat:big", None).await.unwrap();
    let blob = "x".repeat(30_000);
    let total = 800u64; // ~24 MB: more than the loopback socket buffers hold
    let reader = tokio::spawn(async move {
        for i in 1..=total {
            let push = healthy.next_push().await.unwrap();
            assert_eq!(push["offset"], i);
        }
        healthy
    });
    // Published over HTTP, one at a time: a steady stream a reading client keeps up with.
    for _ in 0..total {
        s.publish("chat:big", json!({"blob": blob})).await;
    }
    let healthy = reader.await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || s
            .node
            .render_metrics()
            .contains("herald_slow_consumer_disconnects_total 1"))
        .await,
        "{}",
        s.node.render_metrics()
    );
    // The stalled client, once it reads, finds what was in flight, then the reason.
    let mut received = 0u64;
    let code = loop {
        match stalled.next_event().await.unwrap() {
            herald_client::Event::Frame(f) if f["type"] == "message" => received += 1,
            herald_client::Event::Frame(f) if f["type"] == "disconnect" => {
                assert_eq!(f["code"], 4003);
                assert_eq!(f["reconnect"], true);
            }
            herald_client::Event::Frame(_) => {}
            herald_client::Event::Closed { code, .. } => break code,
        }
    };
    assert_eq!(code, Some(4003));
    assert!(
        received < total,
        "the stalled client was cut off, got {received}"
    );
    drop(healthy);
}

#[tokio::test]
async fn notifications_reach_every_connection_of_that_user_and_nobody_else() {
    let s = TestServer::start().await;
    let mut a1 = s.connected(Some("alice")).await;
    let mut a2 = s.connected(Some("alice")).await;
    let mut bob = s.connected(Some("bob")).await;
    let mut anon = s.connected(None).await;
    let reply = s.notify("alice", json!({"title": "hi"})).await;
    assert_eq!(reply["userId"], "alice");
    assert_eq!(reply["offset"], 1);
    for c in [&mut a1, &mut a2] {
        let n = c.next_push().await.unwrap();
        assert_eq!(n["type"], "notification");
        assert_eq!(n["data"], json!({"title": "hi"}));
        assert_eq!(n["offset"], 1);
        assert_eq!(n["cursor"], reply["cursor"]);
    }
    s.notify("bob", json!({"for": "bob"})).await;
    assert_eq!(
        bob.next_push().await.unwrap()["data"],
        json!({"for": "bob"})
    );
    for c in [&mut a1, &mut anon] {
        assert_eq!(
            c.request(json!({"type": "ping"})).await.unwrap()["type"],
            "pong"
        );
        c.timeout = Duration::from_millis(300);
        assert!(c.next_push().await.is_err(), "no one else's notification");
    }
}
