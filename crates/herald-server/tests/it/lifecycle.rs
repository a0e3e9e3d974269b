//! Engines across restarts, operations endpoints, graceful shutdown.

use std::time::Duration;

use herald_server::config::EngineKind;
use serde_json::json;

use crate::util::*;

#[tokio::test]
async fn embedded_engine_keeps_history_inboxes_and_epochs_across_restart() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let embedded = |c: &mut herald_server::Config| c.engine.kind = EngineKind::Embedded;
    let s = TestServer::in_dir(dir.clone(), embedded).await;
    let first = s.publish("venue:1", json!({"n": 1})).await;
    s.publish("venue:1", json!({"n": 2})).await;
    let inbox = s.notify("alice", json!({"n": "a1"})).await;
    s.stop().await;

    let s = TestServer::in_dir(dir, embedded).await;
    let (_, page) = s.get("/api/venues/1/updates", Some(&token("u", 60))).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
    let third = s.publish("venue:1", json!({"n": 3})).await;
    assert_eq!(third["offset"], 3, "offsets continue");
    let epoch = |v: &serde_json::Value| {
        v["cursor"]
            .as_str()
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(epoch(&third), epoch(&first), "the epoch survives a restart");
    let mut c = s.connected(Some("u")).await;
    let sub = c
        .subscribe("venue:1", first["cursor"].as_str())
        .await
        .unwrap();
    assert_eq!(
        (sub["recovered"].clone(), sub["missed"].clone()),
        (json!(true), json!(2))
    );
    let mut a = s.open().await;
    let reply = a.request(json!({"type": "connect", "token": token("alice", 60), "notifications_since": format!("{}:0", epoch(&inbox))})).await.unwrap();
    assert_eq!(reply["notifications"]["missed"], 1, "{reply}");
    assert_eq!(a.next_push().await.unwrap()["data"]["n"], "a1");
}

#[tokio::test]
async fn memory_engine_forgets_and_changes_epoch() {
    let s = TestServer::start().await;
    let before = s.publish("chat:m", json!(1)).await;
    s.stop().await;
    let s = TestServer::start().await;
    let after = s.publish("chat:m", json!(1)).await;
    assert_eq!(after["offset"], 1);
    assert_ne!(before["cursor"], after["cursor"]);
    let mut c = s.connected(None).await;
    let sub = c
        .subscribe("chat:m", before["cursor"].as_str())
        .await
        .unwrap();
    assert_eq!(sub["recovered"], false);
}

#[tokio::test]
async fn history_ttl_trims_old_messages() {
    for kind in [EngineKind::Memory, EngineKind::Embedded] {
        let s = TestServer::with(|c| {
            c.engine.kind = kind;
            let mut n = ns("brief", herald_server::config::SubscribeRule::Public, false);
            n.history_ttl = Some(Duration::from_millis(300));
            c.namespaces.push(n);
        })
        .await;
        let first = s.publish("brief:1", json!(1)).await;
        let (_, page) = s.get("/api/channels/brief:1/messages", None).await;
        assert_eq!(page["messages"].as_array().unwrap().len(), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (_, page) = s.get("/api/channels/brief:1/messages", None).await;
        assert_eq!(
            page["messages"].as_array().unwrap().len(),
            0,
            "{kind:?}: expired"
        );
        let (_, page) = s
            .get(
                &format!(
                    "/api/channels/brief:1/messages?since={}:0",
                    first["cursor"].as_str().unwrap().split(':').next().unwrap()
                ),
                None,
            )
            .await;
        assert_eq!(
            page["recovered"], false,
            "{kind:?}: the expired message is a gap"
        );
        assert!(page["cursor"].as_str().unwrap().ends_with(":1"));
    }
}

#[tokio::test]
async fn graceful_shutdown_tells_every_client_to_reconnect() {
    let s = TestServer::start().await;
    let mut a = s.connected(Some("u1")).await;
    let mut b = s.connected(None).await;
    b.subscribe("chat:1", None).await.unwrap();
    let waiter = tokio::spawn(async move {
        let (da, ca) = a.until_closed().await.unwrap();
        let (db, cb) = b.until_closed().await.unwrap();
        (da, ca, db, cb)
    });
    s.stop().await;
    let (da, ca, db, cb) = waiter.await.unwrap();
    for (d, c) in [(da, ca), (db, cb)] {
        let d = d.expect("disconnect frame");
        assert_eq!(
            d,
            json!({"type": "disconnect", "code": 4000, "reason": "server shutting down", "reconnect": true})
        );
        assert_eq!(c, Some(4000));
    }
}

#[tokio::test]
async fn operations_endpoints() {
    let s = TestServer::start().await;
    let (status, _) = s.get("/health", None).await;
    assert_eq!(status, 200);
    let (status, body) = s.get("/ready", None).await;
    assert_eq!((status, body["status"].clone()), (200, json!("ready")));
    let mut c = s.connected(None).await;
    c.subscribe("chat:x", None).await.unwrap();
    s.publish("chat:x", json!(1)).await;
    c.next_push().await.unwrap();
    let metrics = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "herald_connections 1",
        "herald_subscriptions 1",
        "herald_messages_published_total 1",
        "herald_messages_delivered_total 1",
        "herald_messages_dropped_total 0",
        "herald_slow_consumer_disconnects_total 0",
        "herald_rate_limited_total 0",
        "herald_engine_errors_total 0",
        "herald_publish_to_send_seconds_count 1",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    let page = s.http.get(s.url("/realtime-demo")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));
}

#[tokio::test]
async fn origins_are_checked_on_the_upgrade() {
    let s = TestServer::with(|c| c.allowed_origins = vec!["https://venue.example".into()]).await;
    let req = |origin: &str| {
        let mut r = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            s.ws_url(),
        )
        .unwrap();
        r.headers_mut().insert("origin", origin.parse().unwrap());
        r
    };
    let err = tokio_tungstenite::connect_async(req("https://evil.example"))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {other}"),
    }
    assert!(
        tokio_tungstenite::connect_async(req("https://venue.example"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn an_unavailable_engine_gets_503_and_1011_and_connections_stay_open() {
    let s = TestServer::with(|c| c.engine.kind = EngineKind::Embedded).await;
    let mut c = s.connected(None).await;
    c.subscribe("chat:down", None).await.unwrap();
    s.node.close_engine().await;
    let (status, body) = s
        .post_raw("/api/channels/chat:down/messages", "application/json", "1")
        .await;
    assert_eq!((status, body["error"]["code"].clone()), (503, json!(1011)));
    let (status, _) = s.get("/ready", None).await;
    assert_eq!(status, 503);
    let reply = c
        .request(json!({"type": "publish", "channel": "chat:down", "data": 1}))
        .await
        .unwrap();
    assert_eq!(
        (reply["type"].clone(), reply["code"].clone()),
        (json!("error"), json!(1011))
    );
    assert_eq!(
        c.request(json!({"type": "ping"})).await.unwrap()["type"],
        "pong",
        "the connection stays open"
    );
    let (status, _) = s.get("/health", None).await;
    assert_eq!(status, 200, "the process is still up");
}

#[tokio::test]
async fn an_embedding_application_uses_the_node_directly() {
    let s = TestServer::start().await;
    let mut alice = s.connected(Some("alice")).await;
    alice.subscribe("venue_updates", None).await.unwrap();
    // The Rust forms of the seed's broadcastToChannel, sendNotification and getStats.
    let p = s
        .node
        .broadcast("venue_updates", &json!({"id": "v1"}))
        .await
        .unwrap();
    assert_eq!(p.offset, 1);
    let n = s
        .node
        .notify("alice", &json!({"title": "Venue Updated"}))
        .await
        .unwrap();
    assert_eq!(n.offset, 1);
    assert_eq!(
        alice.next_push().await.unwrap()["data"],
        json!({"id": "v1"})
    );
    assert_eq!(
        alice.next_push().await.unwrap()["data"],
        json!({"title": "Venue Updated"})
    );
    let stats = s.node.stats();
    assert_eq!(
        (
            stats.connections,
            stats.users,
            stats.channels,
            stats.messages_in
        ),
        (1, 1, 1, 2)
    );
    let err = s
        .node
        .broadcast("bad channel", &json!(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), herald_protocol::ErrorCode::InvalidChannel);
}

#[tokio::test]
async fn an_upgrade_after_a_request_on_the_same_connection_still_works() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;

    // Upgrades normally bypass hyper; one on a kept-alive connection can't,
    // and goes through the router instead.
    let s = TestServer::start().await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let body_complete = |a: &[u8]| {
        let text = String::from_utf8_lossy(a);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            })
            .unwrap();
        body.len() >= length
    };
    while !body_complete(&answer) {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    let (mut ws, response) = tokio_tungstenite::client_async(s.ws_url(), tcp)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text(
        json!({"type": "connect", "token": token("kept", 60)}).to_string(),
    ))
    .await
    .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    let reply: serde_json::Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply["type"], "connected", "{reply}");
}
