//! The engine contract against the Redis on 127.0.0.1:6379, each test under
//! a prefix of its own whose keys are deleted afterwards.

use super::super::contract::*;
use super::*;

const URL: &str = "redis://127.0.0.1:6379";

/// Deletes every key under the test's prefix when dropped.
struct Prefix(String);

impl Prefix {
    fn new() -> Self {
        Self(format!("herald-test-{}", random_token(10)))
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let Ok(client) = ::redis::Client::open(URL) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{}:*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: ::redis::RedisResult<()> = ::redis::cmd("DEL").arg(chunk).query(&mut conn);
        }
    }
}

#[tokio::test]
async fn redis_engine_contract() {
    let prefix = Prefix::new();
    let sink = Arc::new(Recorder::default());
    let engine = RedisEngine::new(RedisTarget::One(URL), &prefix.0, sink.clone()).unwrap();
    let watcher = engine.watcher();
    // Delivery comes through pub/sub, so the recorder hears only what this
    // node watches; the contract expects every stream it publishes to.
    for s in ["a", "b"] {
        watcher.watch(&Arc::from(s));
        engine.listening(s).await.unwrap();
    }
    offsets_are_gap_free_and_history_is_exact(&engine, &sink).await;
    ttl_expires_messages_but_not_offsets(&engine).await;
    read_cursors_move_forward_only(&engine).await;
    undelivered_are_claimed_once_unless_delivered(&engine).await;
    engine.close().await;
}

fn keyed(stream: &str, data: &str, key: &str) -> PublishRequest {
    PublishRequest {
        stream: stream.into(),
        data: data.into(),
        retention: Retention {
            size: 10,
            ttl: Duration::from_secs(3600),
        },
        key: Some(StoredKey {
            key: key.into(),
            expire_at: unix_millis() + 60_000,
        }),
        undelivered_after: None,
    }
}

/// A repeat of a keyed publish through another node answers the original
/// and stores nothing.
#[tokio::test]
async fn an_idempotency_key_answers_the_original_on_every_node() {
    let prefix = Prefix::new();
    let a = RedisEngine::new(
        RedisTarget::One(URL),
        &prefix.0,
        Arc::new(Recorder::default()),
    )
    .unwrap();
    let b = RedisEngine::new(
        RedisTarget::One(URL),
        &prefix.0,
        Arc::new(Recorder::default()),
    )
    .unwrap();
    let first = a.publish(vec![keyed("#u1", "1", "order-7")]).await.unwrap();
    let first = first[0].as_ref().unwrap();
    let again = b.publish(vec![keyed("#u1", "1", "order-7")]).await.unwrap();
    let again = again[0].as_ref().unwrap();
    assert_eq!(
        (first.offset, &first.epoch, first.ts),
        (again.offset, &again.epoch, again.ts)
    );
    // A key with "}" and a stream with "}" cannot reach another stream's key.
    let other = b
        .publish(vec![keyed("#u1}", "1", "order-7")])
        .await
        .unwrap();
    assert_eq!(other[0].as_ref().unwrap().offset, 1);
    let page = b
        .history("#u1", HistoryFrom::Oldest, 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!((page.top, page.messages.len()), (1, 1));
    a.close().await;
    b.close().await;
}

/// Pub/sub messages this node missed are filled from history before the
/// next one is delivered, and repeats are dropped: the sink sees every
/// offset once, in order.
#[tokio::test]
async fn a_gap_in_pubsub_is_filled_from_history_and_repeats_are_dropped() {
    let prefix = Prefix::new();
    let sink = Arc::new(Recorder::default());
    let engine = RedisEngine::new(RedisTarget::One(URL), &prefix.0, sink.clone()).unwrap();
    let stream: Arc<str> = "g".into();
    engine.watcher().watch(&stream);
    engine.listening("g").await.unwrap();
    let request = |data: &str| PublishRequest {
        stream: stream.clone(),
        data: data.into(),
        retention: Retention {
            size: 100,
            ttl: Duration::from_secs(3600),
        },
        key: None,
        undelivered_after: None,
    };
    let first = engine.publish(vec![request("1")]).await.unwrap();
    let epoch = first[0].as_ref().unwrap().epoch.clone();
    // Offsets 2 and 3 are published where this node does not hear them, as
    // if its pub/sub connection had dropped them.
    let keys = engine.naming.keys("g");
    let mut conn = engine.conn.clone();
    for data in ["2", "3"] {
        let mut call = engine.publish.prepare_invoke();
        call.key(&keys.meta)
            .key(&keys.log)
            .arg(data)
            .arg(100)
            .arg(3_600_000)
            .arg(unix_millis())
            .arg("unused")
            .arg(format!("{}:nowhere", prefix.0))
            .arg(1)
            .arg(7_200_000)
            .arg("PUBLISH");
        let _: Value = call.invoke_async(&mut conn).await.unwrap();
    }
    engine.publish(vec![request("4")]).await.unwrap();
    // And a repeat of offset 1 arrives late.
    let _: i64 = ::redis::cmd("PUBLISH")
        .arg(&keys.channel)
        .arg(format!("{epoch} 1 {} 1", unix_millis()))
        .query_async(&mut conn)
        .await
        .unwrap();
    engine.publish(vec![request("5")]).await.unwrap();
    for _ in 0..300 {
        if sink.0.lock().len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen: Vec<u64> = sink.0.lock().iter().map(|(_, o)| *o).collect();
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);
    engine.close().await;
}

/// A sweep keeps a watched stream's counters from expiring, and leaves
/// unwatched ones to their TTL.
#[tokio::test]
async fn a_sweep_keeps_watched_streams_alive() {
    let prefix = Prefix::new();
    let engine = RedisEngine::new(
        RedisTarget::One(URL),
        &prefix.0,
        Arc::new(Recorder::default()),
    )
    .unwrap();
    let watched: Arc<str> = "w".into();
    engine.watcher().watch(&watched);
    engine.listening("w").await.unwrap();
    for s in ["w", "u"] {
        engine
            .history(s, HistoryFrom::Oldest, 1, usize::MAX)
            .await
            .unwrap();
    }
    let mut conn = engine.conn.clone();
    for s in ["w", "u"] {
        let _: i64 = ::redis::cmd("PEXPIRE")
            .arg(engine.naming.keys(s).meta)
            .arg(60_000)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    engine.sweep().await;
    let ttl = |s: &str| {
        let mut conn = conn.clone();
        let key = engine.naming.keys(s).meta;
        async move {
            ::redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    assert!(ttl("w").await > 60_000, "the watched stream was kept");
    assert!(ttl("u").await <= 60_000, "the unwatched one was not");
    engine.close().await;
}

/// 10,000 entries of 2,500 users: the list stops at 1,000, the counts stay
/// exact; a leave counts at once; expired entries are skipped by readers
/// and removed by a refresh.
#[tokio::test]
async fn presence_counts_stay_exact_and_the_list_is_capped() {
    use crate::auth::Identity;
    use crate::presence::Entry;
    let prefix = Prefix::new();
    let engine = RedisEngine::new(
        RedisTarget::One(URL),
        &prefix.0,
        Arc::new(Recorder::default()),
    )
    .unwrap();
    let store = engine.presence().unwrap();
    let ttl = Duration::from_secs(30);
    let ids: Vec<u64> = (1..=10_000).collect();
    for chunk in ids.chunks(250) {
        let joins = chunk.iter().map(|&i| async move {
            let entry = Entry::new(i, &Identity::unverified(Some(format!("u{}", i % 2500))));
            store.join("room:big", &entry, i, None, ttl).await
        });
        for r in futures_util::future::join_all(joins).await {
            r.unwrap();
        }
    }
    let s = store.read("room:big", 1000).await.unwrap();
    assert_eq!((s.clients.len(), s.total, s.users), (1000, 10_000, 2500));
    let stats = store.read("room:big", 0).await.unwrap();
    assert_eq!((stats.clients.len(), stats.total), (0, 10_000));
    store.leave("room:big", "1", 1, None).await.unwrap();
    assert_eq!(store.read("room:big", 0).await.unwrap().total, 9_999);

    // Entries whose node stopped refreshing: skipped, then removed.
    let short = Duration::from_millis(50);
    for i in 1..=3u64 {
        let entry = Entry::new(i, &Identity::unverified(None));
        store
            .join("room:gone", &entry, i, None, short)
            .await
            .unwrap();
    }
    assert_eq!(store.read("room:gone", 10).await.unwrap().total, 3);
    tokio::time::sleep(Duration::from_millis(120)).await;
    let s = store.read("room:gone", 10).await.unwrap();
    assert_eq!((s.total, s.users, s.clients.len()), (0, 0, 0));
    let channel = RefreshChannel {
        channel: "room:gone".into(),
        join_leave: true,
        clients: Vec::new(),
    };
    store.refresh(&[channel], &[], ttl).await.unwrap();
    let (zset, hash) = engine.naming.presence_keys("room:gone");
    let mut conn = engine.conn.clone();
    let left: (u64, u64) = ::redis::pipe()
        .cmd("ZCARD")
        .arg(&zset)
        .cmd("HLEN")
        .arg(&hash)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, (0, 0), "a refresh removes expired entries");
    engine.close().await;
}
