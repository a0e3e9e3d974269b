//! The regression guard for the fan-out's cost (issue 11.5): counts work,
//! not time, so it holds on a loaded CI machine. In a fixed scenario it
//! checks, from the server's own counters, that each publication is encoded
//! once however many subscribers share it, that idle subscribers' frames go
//! out through their lanes with no wake-up of their sessions, that a lane
//! makes at most one `send` per frame, and that a burst queued together
//! leaves in one `send` per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_client::Client;
use serde_json::json;

use crate::util::{metric_in, scrape, user_token, write_config, Proc, API_KEY};

const SUBSCRIBERS: u64 = 200;
const SINGLES: u64 = 20;
const BURST: u64 = 20;

async fn counters(http: &reqwest::Client, origin: &str) -> Counters {
    let text = scrape(http, origin).await;
    let value = |name: &str| metric_in(&text, name) as u64;
    Counters {
        encoded: value("herald_frames_encoded_total"),
        delivered: value("herald_messages_delivered_total"),
        direct: value("herald_frames_written_direct_total"),
        by_session: value("herald_frames_written_by_session_total"),
        sends: value("herald_lane_sends_total"),
    }
}

#[derive(Debug, Clone, Copy)]
struct Counters {
    encoded: u64,
    delivered: u64,
    direct: u64,
    by_session: u64,
    sends: u64,
}

/// Waits until every subscriber has `n` messages (they check order as
/// they go), at most 30 s.
async fn all_received(received: &[Arc<AtomicU64>], n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.iter().any(|r| r.load(Ordering::Acquire) < n) {
        assert!(
            Instant::now() < deadline,
            "not every subscriber got {n} messages"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_encodes_once_and_writes_idle_sockets_without_waking_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[limits]\nmax_connections_per_ip = 1000\nmax_connections_per_user = 1000",
    );
    let server = Proc::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let http = crate::util::http();

    let mut received = Vec::new();
    let mut readers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut c = Client::open(&server.ws_url()).await.unwrap();
        let reply = c
            .request(json!({"type": "connect", "token": user_token(&format!("u{i}"))}))
            .await
            .unwrap();
        assert_eq!(reply["type"], "connected", "{reply}");
        let reply = c.subscribe("venue:1", None).await.unwrap();
        assert_eq!(reply["type"], "subscribed", "{reply}");
        let count = Arc::new(AtomicU64::new(0));
        received.push(count.clone());
        readers.push(tokio::spawn(async move {
            loop {
                let frame = match c.next_frame().await {
                    Ok(f) => f,
                    Err(herald_client::Error::Timeout(_)) => continue,
                    Err(_) => return,
                };
                if frame["type"] == "message" {
                    let n = count.load(Ordering::Acquire) + 1;
                    assert_eq!(frame["offset"], n, "in order, none twice, none missed");
                    count.store(n, Ordering::Release);
                }
            }
        }));
    }

    let before = counters(&http, &server.origin).await;
    // One publication at a time, each delivered everywhere before the next:
    // nothing can coalesce, every subscriber is idle when its frame comes.
    for n in 1..=SINGLES {
        let r = http
            .post(format!("{}/api/channels/venue:1/messages", server.origin))
            .bearer_auth(API_KEY)
            .json(&json!({"n": n}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        all_received(&received, n).await;
    }
    let singles = counters(&http, &server.origin).await;
    let deliveries = SUBSCRIBERS * SINGLES;
    assert_eq!(
        singles.encoded - before.encoded,
        SINGLES,
        "one encode per publication"
    );
    assert_eq!(singles.delivered - before.delivered, deliveries);
    let direct = singles.direct - before.direct;
    let by_session = singles.by_session - before.by_session;
    assert_eq!(direct + by_session, deliveries, "every frame written once");
    assert!(
        direct * 10 >= deliveries * 9,
        "idle subscribers are written by the fan-out, not their sessions: {direct} of {deliveries} ({by_session} by sessions)"
    );
    let sends = singles.sends - before.sends;
    assert!(
        sends <= direct,
        "at most one send per frame: {sends} sends for {direct} frames"
    );

    // A burst to one channel in one batch: queued together, so each
    // connection's frames leave in one send.
    let items: Vec<_> = (0..BURST)
        .map(|n| json!({"action": "broadcast", "channel": "venue:1", "data": {"burst": n}}))
        .collect();
    let r = http
        .post(format!("{}/api/batch", server.origin))
        .bearer_auth(API_KEY)
        .json(&json!({ "items": items }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    all_received(&received, SINGLES + BURST).await;
    let burst = counters(&http, &server.origin).await;
    assert_eq!(burst.encoded - singles.encoded, BURST);
    let frames = (burst.direct - singles.direct) + (burst.by_session - singles.by_session);
    assert_eq!(frames, SUBSCRIBERS * BURST);
    let sends = burst.sends - singles.sends;
    assert!(
        sends <= SUBSCRIBERS * 2,
        "a burst of {BURST} coalesces: {sends} sends for {SUBSCRIBERS} subscribers"
    );
    for r in readers {
        r.abort();
    }
}
