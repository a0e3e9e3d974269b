//! SPEC §2: offsets, epochs, cursors, and exact recovery under concurrency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_server::config::EngineKind;
use serde_json::json;

use crate::util::*;

fn offset_of(cursor: &str) -> u64 {
    cursor.rsplit(':').next().unwrap().parse().unwrap()
}

/// A client drops and resumes, again and again, while a publisher never stops:
/// across all rounds it must see every offset exactly once, in order.
async fn resume_during_publish_has_no_gap(engine: EngineKind) {
    let s = TestServer::with(|c| {
        c.engine.kind = engine;
        c.history.size = 100_000;
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let publisher = {
        let node = s.node.clone();
        let stop = stop.clone();
        let count = count.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 200_000 {
                n += 1;
                node.broadcast("venue:1", &json!({"n": n})).await.unwrap();
                count.store(n, Ordering::Relaxed);
                // ~10k/s: fast enough to race every resume, slow enough
                // that a reading client is never a slow consumer.
                if n.is_multiple_of(10) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            n
        })
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut cursor: Option<String> = None;
    for round in 0..8 {
        let mut c = s.connected(Some("u")).await;
        let sub = c.subscribe("venue:1", cursor.as_deref()).await.unwrap();
        assert_eq!(sub["type"], "subscribed", "{sub}");
        if round > 0 {
            assert_eq!(sub["recovered"], true, "round {round}: {sub}");
            assert!(
                sub["missed"].as_u64().unwrap() >= 10,
                "round {round}: {sub}"
            );
        } else {
            // The subscribe point: live messages follow it with no gap.
            seen.push(offset_of(sub["cursor"].as_str().unwrap()));
        }
        // Read a while (replay, then live), then drop without unsubscribing.
        for _ in 0..(200 + round * 50) {
            let push = c.next_push().await.unwrap();
            let offset = push["offset"].as_u64().unwrap();
            assert_eq!(push["data"]["n"], offset, "payload matches its offset");
            seen.push(offset);
            cursor = Some(push["cursor"].as_str().unwrap().to_owned());
        }
        drop(c);
        // Stay away until at least 10 more were published, so every resume
        // has a gap to fill while the publisher keeps going.
        let last = *seen.last().unwrap();
        assert!(
            eventually(Duration::from_secs(10), || count.load(Ordering::Relaxed)
                >= last + 10)
            .await
        );
    }
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await.unwrap();
    assert!(published >= *seen.last().unwrap());
    for pair in seen.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "gap-free, strictly increasing, no duplicate: {pair:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_during_publish_has_no_gap_memory() {
    resume_during_publish_has_no_gap(EngineKind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_during_publish_has_no_gap_embedded() {
    resume_during_publish_has_no_gap(EngineKind::Embedded).await;
}

#[tokio::test]
async fn resume_replays_exactly_the_missed_messages() {
    let s = TestServer::start().await;
    for i in 1..=17 {
        s.publish("venue:42", json!({"i": i})).await;
    }
    let epoch = s.publish("venue:42", json!({"i": 18})).await["cursor"]
        .as_str()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    s.publish("venue:42", json!({"i": 19})).await;
    s.publish("venue:42", json!({"i": 20})).await;
    let mut c = s.connected(Some("u")).await;
    let sub = c
        .subscribe("venue:42", Some(&format!("{epoch}:17")))
        .await
        .unwrap();
    assert_eq!(sub["cursor"], format!("{epoch}:20"));
    assert_eq!(
        (sub["recovered"].clone(), sub["missed"].clone()),
        (json!(true), json!(3))
    );
    for i in 18..=20 {
        assert_eq!(c.next_push().await.unwrap()["offset"], i);
    }
    s.publish("venue:42", json!({"i": 21})).await;
    assert_eq!(c.next_push().await.unwrap()["offset"], 21);
    // Resuming at the head misses nothing and replays nothing.
    let mut d = s.connected(Some("u")).await;
    let sub = d
        .subscribe("venue:42", Some(&format!("{epoch}:21")))
        .await
        .unwrap();
    assert_eq!(
        (sub["recovered"].clone(), sub["missed"].clone()),
        (json!(true), json!(0))
    );
}

#[tokio::test]
async fn trimmed_history_or_a_foreign_epoch_is_not_recovered() {
    // history_size is exact: with 5, exactly the last 5 are kept.
    let s = TestServer::with(|c| {
        let mut n = ns("small", herald_server::config::SubscribeRule::Public, false);
        n.history_size = Some(5);
        c.namespaces.push(n);
    })
    .await;
    let mut epoch = String::new();
    for i in 1..=10 {
        epoch = s.publish("small:1", json!({"i": i})).await["cursor"]
            .as_str()
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .to_owned();
    }
    let mut c = s.connected(None).await;
    let sub = c
        .subscribe("small:1", Some(&format!("{epoch}:2")))
        .await
        .unwrap();
    assert_eq!(sub["recovered"], false, "{sub}");
    assert_eq!(
        sub["missed"], 5,
        "the kept messages newer than the cursor still come"
    );
    for i in 6..=10 {
        assert_eq!(c.next_push().await.unwrap()["offset"], i);
    }
    // From offset 5, the next one (6) is the oldest kept: exact.
    let mut d = s.connected(None).await;
    let sub = d
        .subscribe("small:1", Some(&format!("{epoch}:5")))
        .await
        .unwrap();
    assert_eq!(
        (sub["recovered"].clone(), sub["missed"].clone()),
        (json!(true), json!(5))
    );
    // Another epoch (a lost store): not recovered, everything kept is new.
    let mut e = s.connected(None).await;
    let sub = e.subscribe("small:1", Some("otherEpoch:9")).await.unwrap();
    assert_eq!(
        (sub["recovered"].clone(), sub["missed"].clone()),
        (json!(false), json!(5))
    );
    assert_eq!(sub["cursor"], format!("{epoch}:10"));
    // A cursor from the future: not recovered, nothing replayed.
    let mut f = s.connected(None).await;
    let sub = f
        .subscribe("small:1", Some(&format!("{epoch}:99")))
        .await
        .unwrap();
    assert_eq!(
        (sub["recovered"].clone(), sub["missed"].clone()),
        (json!(false), json!(0))
    );
}

#[tokio::test]
async fn an_unpublished_channel_has_cursor_epoch_0_that_stays_valid() {
    let s = TestServer::start().await;
    let mut c = s.connected(Some("u")).await;
    let sub = c.subscribe("venue:new", None).await.unwrap();
    let cursor = sub["cursor"].as_str().unwrap().to_owned();
    assert!(cursor.ends_with(":0"));
    drop(c);
    s.publish("venue:new", json!({"first": true})).await;
    let mut d = s.connected(Some("u")).await;
    let sub = d.subscribe("venue:new", Some(&cursor)).await.unwrap();
    assert_eq!(
        (sub["recovered"].clone(), sub["missed"].clone()),
        (json!(true), json!(1))
    );
    assert_eq!(d.next_push().await.unwrap()["data"], json!({"first": true}));
}

#[tokio::test]
async fn the_notification_inbox_resumes_like_a_channel() {
    let s = TestServer::start().await;
    let mut c = s.connected(Some("alice")).await;
    s.notify("alice", json!({"n": 1})).await;
    let first = c.next_push().await.unwrap();
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    drop(c);
    s.notify("alice", json!({"n": 2})).await;
    s.notify("alice", json!({"n": 3})).await;
    s.notify("bob", json!({"n": "bob"})).await;
    let mut c = s.open().await;
    let reply = c
        .request(
            json!({"type": "connect", "token": token("alice", 60), "notifications_since": cursor}),
        )
        .await
        .unwrap();
    let inbox = &reply["notifications"];
    assert_eq!(
        (inbox["recovered"].clone(), inbox["missed"].clone()),
        (json!(true), json!(2)),
        "{reply}"
    );
    assert!(inbox["cursor"].as_str().unwrap().ends_with(":3"));
    assert_eq!(c.next_push().await.unwrap()["data"], json!({"n": 2}));
    assert_eq!(c.next_push().await.unwrap()["data"], json!({"n": 3}));
    tokio::time::timeout(Duration::from_secs(5), async {
        s.notify("alice", json!({"n": 4})).await;
        assert_eq!(c.next_push().await.unwrap()["offset"], 4);
    })
    .await
    .unwrap();
}

/// A resume of a history many times `limits.outbound_queue_bytes` is sent in
/// pages as the socket drains; a client that reads gets all of it, in order,
/// once, on both engines — notifications on connect as well as a channel.
async fn a_huge_replay_is_paged_and_a_reader_gets_all_of_it(engine: EngineKind) {
    let s = TestServer::with(|c| {
        c.engine.kind = engine;
        c.history.size = 1000;
        c.notifications.size = 1000;
        c.limits.max_message_bytes = 4096;
        c.limits.outbound_queue_bytes = 8192;
    })
    .await;
    let pad = "p".repeat(1000);
    let mut from_zero = String::new();
    for n in 1..=120u64 {
        let r = s
            .node
            .broadcast("chat:paged", &json!({"n": n, "pad": pad}))
            .await;
        from_zero = format!("{}:0", r.unwrap().epoch);
        s.notify("pager", json!({"n": n, "pad": pad})).await;
    }

    let mut c = s.open().await;
    c.timeout = Duration::from_secs(10);
    let t = token("pager", 3600);
    let connected = c.connect(Some(&t)).await.unwrap();
    // No cursor on connect: nothing is replayed, the cursor is the top.
    assert_eq!(
        offset_of(connected["notifications"]["cursor"].as_str().unwrap()),
        120
    );
    let inbox_zero = {
        let cursor = connected["notifications"]["cursor"].as_str().unwrap();
        format!("{}:0", cursor.rsplit_once(':').unwrap().0)
    };
    let reply = c.subscribe("chat:paged", Some(&from_zero)).await.unwrap();
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["missed"], 120, "{reply}");
    assert_eq!(offset_of(reply["cursor"].as_str().unwrap()), 120);
    for n in 1..=120u64 {
        let m = c.next_push().await.unwrap();
        assert_eq!(
            (m["type"].as_str(), &m["offset"]),
            (Some("message"), &json!(n))
        );
        assert_eq!(m["data"]["n"], n);
    }
    c.close().await;

    // The inbox, resumed on connect, is paged the same way.
    let mut c = s.open().await;
    c.timeout = Duration::from_secs(10);
    let connected = c
        .request(json!({"type": "connect", "token": t, "notifications_since": inbox_zero}))
        .await
        .unwrap();
    assert_eq!(connected["notifications"]["recovered"], true, "{connected}");
    assert_eq!(connected["notifications"]["missed"], 120, "{connected}");
    for n in 1..=120u64 {
        let m = c.next_push().await.unwrap();
        assert_eq!(m["type"], "notification");
        assert_eq!(m["offset"], n);
    }
    assert!(
        eventually(Duration::from_secs(5), || s
            .node
            .render_metrics()
            .contains("herald_outbound_queue_bytes 0"))
        .await
    );
}

#[tokio::test]
async fn a_huge_replay_is_paged_memory() {
    a_huge_replay_is_paged_and_a_reader_gets_all_of_it(EngineKind::Memory).await;
}

#[tokio::test]
async fn a_huge_replay_is_paged_embedded() {
    a_huge_replay_is_paged_and_a_reader_gets_all_of_it(EngineKind::Embedded).await;
}
