//! Two `herald` processes sharing one Redis (the redis engine): fan-out
//! across nodes, gap-free offsets, resume and polling through either node,
//! and a Redis that goes away and comes back.
//!
//! The shared tests use the Redis on 127.0.0.1:6379 under a random key
//! prefix (deleted afterwards); the failure test runs a private
//! `redis-server` on a free port.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_client::Client;
use serde_json::{json, Value};

use crate::util::*;

pub(crate) const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

/// A random key prefix whose keys are deleted when dropped.
pub(crate) struct Prefix(pub(crate) String);

impl Prefix {
    pub(crate) fn new() -> Self {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Self(format!("herald-it-{}-{n}", std::process::id()))
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let keys = Command::new("redis-cli")
            .args(["-p", "6379", "--scan", "--pattern"])
            .arg(format!("{}:*", self.0))
            .output();
        if let Ok(out) = keys {
            let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect();
            for chunk in keys.chunks(200) {
                let _ = Command::new("redis-cli")
                    .args(["-p", "6379", "DEL"])
                    .args(chunk)
                    .stdout(Stdio::null())
                    .status();
            }
        }
    }
}

/// A config for a node of the redis engine.
/// The `[engine]` line for one Redis at `url`.
pub(crate) fn one(url: &str) -> String {
    format!("redis_url = \"{url}\"")
}

/// A config for a node of the redis engine; `engine` says where Redis is
/// ([`one`] or [`LocalCluster::engine`]).
pub(crate) fn redis_config(dir: &Path, name: &str, engine: &str, prefix: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[auth]\nhmac_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\nallow_anonymous = true\n[engine]\nkind = \"redis\"\n{engine}\nredis_prefix = \"{prefix}\"\n[[namespaces]]\nname = \"r\"\nsubscribe = \"public\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

pub(crate) fn two_nodes(dir: &Path, engine: &str, prefix: &str) -> (Proc, Proc) {
    let a = redis_config(dir, "a", engine, prefix);
    let b = redis_config(dir, "b", engine, prefix);
    (
        Proc::start(dir, &["--config", &a]),
        Proc::start(dir, &["--config", &b]),
    )
}

/// Publishes `data` to `channel` through `origin`; returns the status and body.
pub(crate) async fn publish(
    http: &reqwest::Client,
    origin: &str,
    channel: &str,
    data: &Value,
) -> (u16, Value) {
    let r = http
        .post(format!("{origin}/api/channels/{channel}/messages"))
        .bearer_auth(API_KEY)
        .json(data)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn publish_ok(
    http: &reqwest::Client,
    origin: &str,
    channel: &str,
    data: &Value,
) -> Value {
    let (status, body) = publish(http, origin, channel, data).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// A subscriber to `channel` on the node at `ws`, resuming from `since`.
pub(crate) async fn subscriber(ws: &str, channel: &str, since: Option<&str>) -> (Client, Value) {
    let mut c = Client::open(ws).await.unwrap();
    let connected = c.connect(None).await.unwrap();
    assert_eq!(connected["type"], "connected", "{connected}");
    let reply = c.subscribe(channel, since).await.unwrap();
    assert_eq!(reply["type"], "subscribed", "{reply}");
    (c, reply)
}

/// The offsets of the next `n` pushes.
async fn offsets(c: &mut Client, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let push = c.next_push().await.unwrap();
        out.push(push["offset"].as_u64().unwrap());
    }
    out
}

#[tokio::test]
async fn a_publish_on_either_node_reaches_subscribers_on_both_once_with_gap_free_offsets() {
    let prefix = Prefix::new();
    fan_out_across_nodes(&one(SHARED_REDIS), &prefix.0).await;
}

#[tokio::test]
async fn on_a_cluster_a_publish_on_either_node_reaches_subscribers_on_both_once_with_gap_free_offsets(
) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path());
    fan_out_across_nodes(&cluster.engine(), "herald").await;
}

async fn fan_out_across_nodes(engine: &str, prefix: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(dir.path(), engine, prefix);
    let http = crate::util::http();
    let (mut on_a, _) = subscriber(&a.ws_url(), "r:1", None).await;
    let (mut on_b, _) = subscriber(&b.ws_url(), "r:1", None).await;
    // Alternating nodes.
    for i in 0..20u64 {
        let origin = if i % 2 == 0 { &a.origin } else { &b.origin };
        let body = publish_ok(&http, origin, "r:1", &json!({ "i": i })).await;
        assert_eq!(body["offset"], i + 1, "{body}");
    }
    // Concurrent on both nodes.
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let http = http.clone();
        let origin = if t % 2 == 0 {
            a.origin.clone()
        } else {
            b.origin.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..15u64 {
                let body = publish_ok(&http, &origin, "r:1", &json!({ "t": t, "i": i })).await;
                got.push(body["offset"].as_u64().unwrap());
            }
            got
        }));
    }
    let mut answered = Vec::new();
    for t in tasks {
        answered.extend(t.await.unwrap());
    }
    answered.sort_unstable();
    assert_eq!(
        answered,
        (21..=140).collect::<Vec<u64>>(),
        "gap-free, no offset twice"
    );
    let expected: Vec<u64> = (1..=140).collect();
    assert_eq!(
        offsets(&mut on_a, 140).await,
        expected,
        "node A's subscriber"
    );
    assert_eq!(
        offsets(&mut on_b, 140).await,
        expected,
        "node B's subscriber"
    );
    // Once: the next push after a marker is the marker, nothing repeated.
    publish_ok(&http, &b.origin, "r:1", &json!("marker")).await;
    assert_eq!(offsets(&mut on_a, 1).await, vec![141]);
    assert_eq!(offsets(&mut on_b, 1).await, vec![141]);
}

#[tokio::test]
async fn resume_on_the_other_node_while_publishes_continue_has_no_gap_and_no_duplicate() {
    let prefix = Prefix::new();
    resume_across_nodes(&one(SHARED_REDIS), &prefix.0).await;
}

#[tokio::test]
async fn on_a_cluster_resume_on_the_other_node_while_publishes_continue_has_no_gap_and_no_duplicate(
) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path());
    resume_across_nodes(&cluster.engine(), "herald").await;
}

async fn resume_across_nodes(engine: &str, prefix: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(dir.path(), engine, prefix);
    let http = crate::util::http();
    let (mut on_a, _) = subscriber(&a.ws_url(), "r:2", None).await;
    for i in 0..10 {
        publish_ok(&http, &a.origin, "r:2", &json!({ "i": i })).await;
    }
    let mut cursor = String::new();
    for want in 1..=6u64 {
        let push = on_a.next_push().await.unwrap();
        assert_eq!(push["offset"], want);
        cursor = push["cursor"].as_str().unwrap().to_owned();
    }
    drop(on_a);
    // Publishes continue on node A while the client resumes on node B.
    let publisher = {
        let http = http.clone();
        let origin = a.origin.clone();
        tokio::spawn(async move {
            for i in 10..60 {
                publish_ok(&http, &origin, "r:2", &json!({ "i": i })).await;
            }
        })
    };
    let (mut on_b, reply) = subscriber(&b.ws_url(), "r:2", Some(&cursor)).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    publisher.await.unwrap();
    let got = offsets(&mut on_b, 54).await;
    assert_eq!(
        got,
        (7..=60).collect::<Vec<u64>>(),
        "exactly the missed, then live"
    );
    publish_ok(&http, &a.origin, "r:2", &json!("marker")).await;
    assert_eq!(offsets(&mut on_b, 1).await, vec![61], "nothing twice");
}

#[tokio::test]
async fn polling_and_long_polling_work_through_the_other_node() {
    let prefix = Prefix::new();
    poll_across_nodes(&one(SHARED_REDIS), &prefix.0).await;
}

#[tokio::test]
async fn on_a_cluster_polling_and_long_polling_work_through_the_other_node() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path());
    poll_across_nodes(&cluster.engine(), "herald").await;
}

async fn poll_across_nodes(engine: &str, prefix: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(dir.path(), engine, prefix);
    let http = crate::util::http();
    for i in 0..5 {
        publish_ok(&http, &a.origin, "r:3", &json!({ "i": i })).await;
    }
    let page: Value = http
        .get(format!("{}/api/channels/r:3/messages", b.origin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![1, 2, 3, 4, 5], "{page}");
    let cursor = page["cursor"].as_str().unwrap().to_owned();
    // A long poll on B is answered by a publish on A, whichever comes first.
    let poll = {
        let http = http.clone();
        let url = format!(
            "{}/api/channels/r:3/messages?since={cursor}&wait=20",
            b.origin
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let page: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            (page, started.elapsed())
        })
    };
    publish_ok(&http, &a.origin, "r:3", &json!("six")).await;
    let (page, took) = poll.await.unwrap();
    assert_eq!(page["messages"][0]["offset"], 6, "{page}");
    assert_eq!(page["recovered"], true, "{page}");
    assert!(
        took < Duration::from_secs(15),
        "answered by the publish, not the timeout"
    );
}

#[tokio::test]
async fn a_read_on_one_node_is_seen_by_the_other() {
    let prefix = Prefix::new();
    read_across_nodes(&one(SHARED_REDIS), &prefix.0).await;
}

#[tokio::test]
async fn on_a_cluster_a_read_on_one_node_is_seen_by_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path());
    read_across_nodes(&cluster.engine(), "herald").await;
}

/// Read state (SPEC §11) is the cluster's: an `ack` on one node moves the
/// unread count the other node reports, and the other way round over HTTP.
async fn read_across_nodes(engine: &str, prefix: &str) {
    use crate::read_state::{ack, connect, mark_read, notify, polled_unread};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(dir.path(), engine, prefix);
    let http = crate::util::http();
    let mut cursors = Vec::new();
    for i in 0..4 {
        cursors.push(notify(&http, &a.origin, "ru", json!({ "i": i })).await);
    }
    let (mut on_a, state) = connect(&a.ws_url(), "ru").await;
    assert_eq!(state["unread"], 4, "{state}");
    let reply = ack(&mut on_a, &cursors[1]).await;
    assert_eq!(reply["unread"], 2, "{reply}");
    assert_eq!(polled_unread(&http, &b.origin, "ru").await, 2);
    let (_on_b, state) = connect(&b.ws_url(), "ru").await;
    assert_eq!(state["unread"], 2, "{state}");
    let (status, body) = mark_read(&http, &b.origin, Some(&user_token("ru")), &cursors[2]).await;
    assert_eq!((status, body["unread"].as_u64()), (200, Some(1)), "{body}");
    let reply = ack(&mut on_a, &cursors[0]).await;
    assert_eq!(
        reply["unread"], 1,
        "never backwards, whichever node: {reply}"
    );
}

/// A private `redis-server` on a free loopback port; killed when dropped.
pub(crate) struct PrivateRedis {
    child: Option<Child>,
    pub(crate) port: u16,
    dir: std::path::PathBuf,
    extra: Vec<String>,
}

impl PrivateRedis {
    pub(crate) fn start(dir: &Path, port: u16) -> Self {
        Self::start_with(dir, port, Vec::new())
    }

    pub(crate) fn start_with(dir: &Path, port: u16, extra: Vec<String>) -> Self {
        let mut r = Self {
            child: None,
            port,
            dir: dir.to_owned(),
            extra,
        };
        r.spawn();
        r
    }

    pub(crate) fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (is it installed?)");
        self.child = Some(child);
        // Bounded wait until it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A local Redis Cluster of three masters (no replicas) on free loopback
/// ports, made with `redis-cli --cluster create`; stopped when dropped.
pub(crate) struct LocalCluster {
    pub(crate) masters: Vec<PrivateRedis>,
}

impl LocalCluster {
    pub(crate) fn start(dir: &Path) -> Self {
        let ports: Vec<u16> = (0..3).map(|_| free_cluster_port()).collect();
        Self::start_on(dir, &ports)
    }

    fn start_on(dir: &Path, ports: &[u16]) -> Self {
        let mut masters = Vec::new();
        for (i, &port) in ports.iter().enumerate() {
            let node_dir = dir.join(format!("cluster-{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let extra = vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                node_dir.join("nodes.conf").to_str().unwrap().to_owned(),
                "--cluster-node-timeout".into(),
                "2000".into(),
            ];
            masters.push(PrivateRedis::start_with(&node_dir, port, extra));
        }
        let addrs: Vec<String> = masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Bounded wait until every master sees the whole cluster.
        let deadline = Instant::now() + Duration::from_secs(20);
        for m in &masters {
            while !redis_cli(m.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster did not form");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { masters }
    }

    /// The `[engine]` line: two of the three masters as seeds (the third is
    /// found by the client).
    pub(crate) fn engine(&self) -> String {
        let ports: Vec<u16> = self.masters.iter().map(|m| m.port).collect();
        Self::engine_for(&ports)
    }

    fn engine_for(ports: &[u16]) -> String {
        let seeds: Vec<String> = ports[..2]
            .iter()
            .map(|p| format!("\"redis://127.0.0.1:{p}\""))
            .collect();
        format!("redis_cluster = [{}]", seeds.join(", "))
    }
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `probe` every 50 ms until it holds, at most `within`.
pub(crate) async fn until<F, Fut>(within: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if probe().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn status(http: &reqwest::Client, url: &str) -> u16 {
    match http.get(url).timeout(Duration::from_secs(10)).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test]
async fn while_redis_is_down_publishes_and_ready_are_503_and_the_node_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = PrivateRedis::start(dir.path(), free_port());
    let (a, b) = two_nodes(dir.path(), &one(&redis.url()), "herald");
    let http = crate::util::http();
    let (mut on_b, _) = subscriber(&b.ws_url(), "r:4", None).await;
    publish_ok(&http, &a.origin, "r:4", &json!(1)).await;
    assert_eq!(offsets(&mut on_b, 1).await, vec![1]);
    assert_eq!(status(&http, &format!("{}/ready", a.origin)).await, 200);

    redis.stop();
    let (code, body) = publish(&http, &a.origin, "r:4", &json!(2)).await;
    assert_eq!(code, 503, "{body}");
    for node in [&a, &b] {
        until(Duration::from_secs(10), "/ready is 503", || async {
            status(&http, &format!("{}/ready", node.origin)).await == 503
        })
        .await;
        assert_eq!(status(&http, &format!("{}/health", node.origin)).await, 200);
    }
    // The client's connection stays open through the outage.
    let pong = on_b.request(json!({"type": "ping"})).await;
    assert!(pong.is_ok(), "the WebSocket stays open: {pong:?}");

    // Redis comes back (empty: no persistence) on the same port.
    redis.spawn();
    until(Duration::from_secs(15), "/ready is 200 again", || async {
        status(&http, &format!("{}/ready", a.origin)).await == 200
            && status(&http, &format!("{}/ready", b.origin)).await == 200
    })
    .await;
    // History was lost with Redis, so the stream restarts under a new epoch;
    // B's subscriber must either receive the new message or be told to
    // resume (closed with 4003), never sit on a silent gap.
    let body = publish_ok(&http, &a.origin, "r:4", &json!(3)).await;
    let cursor = body["cursor"].as_str().unwrap().to_owned();
    match on_b.next_frame().await {
        Ok(push) if push["type"] == "message" => assert_eq!(push["cursor"], cursor.as_str()),
        other => {
            let closed = matches!(other, Err(herald_client::Error::Closed { .. }))
                || other.as_ref().is_ok_and(|f| f["type"] == "disconnect");
            assert!(closed, "{other:?}");
            let (mut again, reply) = subscriber(&b.ws_url(), "r:4", None).await;
            assert_eq!(reply["cursor"], cursor.as_str(), "{reply}");
            publish_ok(&http, &a.origin, "r:4", &json!(4)).await;
            assert_eq!(offsets(&mut again, 1).await, vec![2]);
        }
    }
    // A fresh subscriber on B hears publishes on A again.
    let (mut fresh, _) = subscriber(&b.ws_url(), "r:5", None).await;
    let body = publish_ok(&http, &a.origin, "r:5", &json!("back")).await;
    assert_eq!(
        offsets(&mut fresh, 1).await,
        vec![body["offset"].as_u64().unwrap()]
    );
}

/// Redis drops the nodes' pub/sub connections (as it does to a subscriber
/// past its output buffer limit) while publishes go on: each node notices,
/// re-subscribes and re-reads history from the last offset it delivered, so
/// the subscriber gets every message once, in order.
#[tokio::test]
async fn a_dropped_pubsub_connection_is_caught_up_from_history_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let redis = PrivateRedis::start(dir.path(), free_port());
    dropped_pubsub_is_caught_up(&one(&redis.url()), &[redis.port]).await;
}

/// On a Cluster every shard's pub/sub connection is cut.
#[tokio::test]
async fn on_a_cluster_a_dropped_pubsub_connection_is_caught_up_from_history_without_gap_or_duplicate(
) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path());
    let ports: Vec<u16> = cluster.masters.iter().map(|m| m.port).collect();
    dropped_pubsub_is_caught_up(&cluster.engine(), &ports).await;
}

/// Redis drops node B's pub/sub connections (on every port of `ports`)
/// three times while publishes go on through node A.
async fn dropped_pubsub_is_caught_up(engine: &str, ports: &[u16]) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(dir.path(), engine, "herald");
    let http = crate::util::http();
    let (mut on_b, _) = subscriber(&b.ws_url(), "r:6", None).await;
    // A user's inbox on node B hears notifications sent through node A.
    let mut user = Client::open(&b.ws_url()).await.unwrap();
    let claims = herald_server::auth::Claims {
        sub: "u9".into(),
        exp: Some(herald_server::auth::unix_now() + 3600),
        iat: None,
        role: None,
        channels: None,
    };
    let token = herald_server::auth::sign_hs256(SECRET, &claims).unwrap();
    let connected = user.connect(Some(&token)).await.unwrap();
    assert_eq!(connected["type"], "connected", "{connected}");
    let publisher = {
        let http = http.clone();
        let origin = a.origin.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                publish_ok(&http, &origin, "r:6", &json!({ "i": i })).await;
                let r = http
                    .post(format!("{origin}/api/users/u9/notifications"))
                    .bearer_auth(API_KEY)
                    .json(&json!({ "n": i }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        })
    };
    assert_eq!(offsets(&mut on_b, 20).await, (1..=20).collect::<Vec<u64>>());
    let mut killed = Vec::new();
    for _ in 0..3 {
        let mut round = 0;
        for port in ports {
            let out = redis_cli(*port, &["CLIENT", "KILL", "TYPE", "pubsub"]);
            round += out.trim().parse::<u32>().unwrap_or(0);
        }
        killed.push(round);
        // Spacing only: the assertions below wait for what they need.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Node B's (node A subscribes to nothing, so Redis does not count its
    // connections as pub/sub).
    assert!(killed[0] >= 1, "node B's pub/sub connection was dropped");
    publisher.await.unwrap();
    assert_eq!(
        offsets(&mut on_b, 180).await,
        (21..=200).collect::<Vec<u64>>(),
        "every message once, in order, across the reconnects"
    );
    assert_eq!(
        offsets(&mut user, 200).await,
        (1..=200).collect::<Vec<u64>>()
    );
    publish_ok(&http, &a.origin, "r:6", &json!("marker")).await;
    assert_eq!(offsets(&mut on_b, 1).await, vec![201], "nothing twice");
    assert!(
        b.stderr().contains("redis pub/sub connection lost")
            || b.stderr().contains("redis cluster connection was lost"),
        "node B saw its connection drop: {}",
        b.stderr()
    );
}

/// A node killed with `kill -9` mid-stream: its client resumes on the
/// other node from its cursor and gets every message once.
#[tokio::test]
async fn a_client_of_a_killed_node_resumes_on_the_other_with_nothing_lost() {
    let prefix = Prefix::new();
    client_of_a_stopped_node_resumes_on_the_other(&one(SHARED_REDIS), &prefix.0, "-KILL").await;
}

#[tokio::test]
async fn on_a_cluster_a_client_of_a_killed_node_resumes_on_the_other_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path());
    client_of_a_stopped_node_resumes_on_the_other(&cluster.engine(), "herald", "-KILL").await;
}

/// A rolling deploy: SIGTERM drains node A; its client resumes on node B.
#[tokio::test]
async fn a_client_of_a_drained_node_resumes_on_the_other_with_nothing_lost() {
    let prefix = Prefix::new();
    client_of_a_stopped_node_resumes_on_the_other(&one(SHARED_REDIS), &prefix.0, "-TERM").await;
}

async fn client_of_a_stopped_node_resumes_on_the_other(engine: &str, prefix: &str, signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b) = two_nodes(dir.path(), engine, prefix);
    let http = crate::util::http();
    let (mut on_a, _) = subscriber(&a.ws_url(), "r:7", None).await;
    let publisher = {
        let http = http.clone();
        let origin = b.origin.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                publish_ok(&http, &origin, "r:7", &json!({ "i": i })).await;
            }
        })
    };
    let mut cursor = String::new();
    for want in 1..=30u64 {
        let push = on_a.next_push().await.unwrap();
        assert_eq!(push["offset"], want);
        cursor = push["cursor"].as_str().unwrap().to_owned();
    }
    a.signal(signal);
    a.wait_exit(Duration::from_secs(20));
    let (mut on_b, reply) = subscriber(&b.ws_url(), "r:7", Some(&cursor)).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    publisher.await.unwrap();
    assert_eq!(
        offsets(&mut on_b, 70).await,
        (31..=100).collect::<Vec<u64>>()
    );
    publish_ok(&http, &b.origin, "r:7", &json!("marker")).await;
    assert_eq!(offsets(&mut on_b, 1).await, vec![101], "nothing twice");
}

pub(crate) fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A node holds two Redis connections however many clients and channels it
/// serves; a channel's Redis subscription is shared by its local listeners
/// and released when the last one leaves.
#[tokio::test]
async fn redis_connections_are_bounded_and_subscriptions_follow_local_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let redis = PrivateRedis::start(dir.path(), free_port());
    let config = redis_config(dir.path(), "a", &one(&redis.url()), "herald");
    let node = Proc::start(dir.path(), &["--config", &config]);
    let mut clients = Vec::new();
    for i in 0..40 {
        // Two clients per channel: one Redis subscription each channel.
        let channel = format!("r:c{}", i / 2);
        let (c, _) = subscriber(&node.ws_url(), &channel, None).await;
        clients.push(c);
    }
    let channels = redis_cli(redis.port, &["PUBSUB", "CHANNELS", "herald:*"]);
    assert_eq!(
        channels.lines().filter(|l| !l.is_empty()).count(),
        20,
        "{channels}"
    );
    let list = redis_cli(redis.port, &["CLIENT", "LIST"]);
    // Every connection but redis-cli's own is the node's.
    let node_conns = list.lines().filter(|l| !l.contains("cmd=client")).count();
    assert_eq!(
        node_conns, 2,
        "one command and one pub/sub connection:\n{list}"
    );
    // The first of each pair leaves: the channel stays subscribed.
    let mut rest = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            c.close().await;
        } else {
            rest.push(c);
        }
    }
    let count = || {
        redis_cli(redis.port, &["PUBSUB", "CHANNELS", "herald:*"])
            .lines()
            .filter(|l| !l.is_empty())
            .count()
    };
    // Give the node time to act on the closes, then check nothing left.
    let http = crate::util::http();
    until(Duration::from_secs(10), "half the clients gone", || async {
        let m = http
            .get(format!("{}/metrics", node.origin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        m.lines().any(|l| l == "herald_subscriptions 20")
    })
    .await;
    assert_eq!(count(), 20, "each channel still has a local listener");
    let gauge = |name: &'static str| {
        let http = http.clone();
        let url = format!("{}/metrics", node.origin);
        async move {
            let text = http.get(url).send().await.unwrap().text().await.unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("/metrics has no {name}"))
        }
    };
    assert_eq!(gauge("herald_remote_subscriptions").await, 20);
    for c in rest {
        c.close().await;
    }
    until(
        Duration::from_secs(10),
        "every Redis subscription released",
        || async { count() == 0 },
    )
    .await;
    until(Duration::from_secs(10), "the gauge back to 0", || async {
        gauge("herald_remote_subscriptions").await == 0
    })
    .await;
}

/// A node starts while Redis is down (not ready, publishes 503, health
/// 200) and becomes ready by itself when Redis comes up.
#[tokio::test]
async fn a_node_starts_without_redis_and_becomes_ready_when_it_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let engine = one(&format!("redis://127.0.0.1:{port}"));
    node_starts_before_redis(&engine, || PrivateRedis::start(dir.path(), port)).await;
}

#[tokio::test]
async fn on_a_cluster_a_node_starts_without_redis_and_becomes_ready_when_it_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_cluster_port()).collect();
    let engine = LocalCluster::engine_for(&ports);
    node_starts_before_redis(&engine, || LocalCluster::start_on(dir.path(), &ports)).await;
}

/// A node whose Redis is not there yet: up (`/health`), not ready, publishes
/// 503; ready and publishing once `start_redis` has brought Redis up.
async fn node_starts_before_redis<R>(engine: &str, start_redis: impl FnOnce() -> R) {
    let dir = tempfile::tempdir().unwrap();
    let config = redis_config(dir.path(), "a", engine, "herald");
    let node = Proc::start(dir.path(), &["--config", &config]);
    let http = crate::util::http();
    assert_eq!(status(&http, &format!("{}/ready", node.origin)).await, 503);
    assert_eq!(status(&http, &format!("{}/health", node.origin)).await, 200);
    let (code, body) = publish(&http, &node.origin, "r:8", &json!(1)).await;
    assert_eq!(code, 503, "{body}");
    let _redis = start_redis();
    until(Duration::from_secs(15), "/ready is 200", || async {
        status(&http, &format!("{}/ready", node.origin)).await == 200
    })
    .await;
    let (mut sub, _) = subscriber(&node.ws_url(), "r:8", None).await;
    publish_ok(&http, &node.origin, "r:8", &json!(2)).await;
    assert_eq!(offsets(&mut sub, 1).await, vec![1]);
}

/// `GET /api/websocket` on any node reports the whole cluster: the nodes
/// alive with their connection counts; a killed node leaves the view once it
/// stops announcing (issue 8.6).
#[tokio::test]
async fn any_node_reports_the_whole_cluster_and_a_killed_node_leaves_it() {
    let prefix = Prefix::new();
    whole_cluster_view(&one(SHARED_REDIS), &prefix.0).await;
}

#[tokio::test]
async fn on_a_redis_cluster_any_node_reports_the_whole_cluster_and_a_killed_node_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path());
    whole_cluster_view(&cluster.engine(), "herald").await;
}

async fn whole_cluster_view(engine: &str, prefix: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b) = two_nodes(dir.path(), engine, prefix);
    let http = crate::util::http();
    let (on_a, _) = subscriber(&a.ws_url(), "r:cluster", None).await;
    let mut on_b = Vec::new();
    for _ in 0..2 {
        let (c, _) = subscriber(&b.ws_url(), "r:cluster", None).await;
        on_b.push(c);
    }
    let cluster = |origin: String| {
        let http = http.clone();
        async move {
            let r: Value = http
                .get(format!("{origin}/api/websocket"))
                .bearer_auth(API_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r
        }
    };
    // Announcements every 2 s: both nodes see both, with their counts.
    until(Duration::from_secs(10), "both nodes in both views", || {
        let (a, b) = (a.origin.clone(), b.origin.clone());
        let cluster = &cluster;
        async move {
            let (va, vb) = (cluster(a).await, cluster(b).await);
            [va, vb].iter().all(|v| {
                v["cluster"]["nodes"] == 2
                    && v["cluster"]["connections"] == 3
                    && v["cluster"]["subscriptions"] == 3
            })
        }
    })
    .await;
    let view = cluster(a.origin.clone()).await;
    assert_eq!(
        view["connections"], 1,
        "this node's own figures stay: {view}"
    );
    let mut counts: Vec<u64> = view["cluster"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["connections"].as_u64().unwrap())
        .collect();
    counts.sort();
    assert_eq!(counts, [1, 2]);

    b.signal("-KILL");
    b.wait_exit(Duration::from_secs(10));
    until(
        Duration::from_secs(20),
        "the killed node gone from the view",
        || {
            let a = a.origin.clone();
            let cluster = &cluster;
            async move {
                let v = cluster(a).await;
                v["cluster"]["nodes"] == 1 && v["cluster"]["connections"] == 1
            }
        },
    )
    .await;
    drop(on_a);
    drop(on_b);
}

/// On a Redis Cluster a publication goes by sharded pub/sub: the channels
/// are spread over every master (each holds some streams' keys and some
/// shard channels) and nothing is broadcast on the cluster bus's classic
/// pub/sub. A batch over many channels keeps each channel's order.
#[tokio::test]
async fn on_a_cluster_channels_spread_over_every_master_and_fan_out_is_sharded() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path());
    let (a, b) = two_nodes(dir.path(), &cluster.engine(), "herald");
    let http = crate::util::http();
    let mut subscribers = Vec::new();
    for i in 0..24 {
        let (c, _) = subscriber(&b.ws_url(), &format!("r:s{i}"), None).await;
        subscribers.push(c);
    }
    // One batch through node A: three messages to each of the 24 channels.
    let mut messages = Vec::new();
    for round in 0..3 {
        for i in 0..24 {
            messages.push(json!({
                "action": "broadcast",
                "channel": format!("r:s{i}"),
                "data": { "round": round }
            }));
        }
    }
    let r = http
        .post(format!("{}/api/batch", a.origin))
        .bearer_auth(API_KEY)
        .json(&json!({ "items": messages }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    for (i, c) in subscribers.iter_mut().enumerate() {
        let mut rounds = Vec::new();
        for want in 1..=3u64 {
            let push = c.next_push().await.unwrap();
            assert_eq!(push["offset"], want, "channel r:s{i}: {push}");
            rounds.push(push["data"]["round"].as_u64().unwrap());
        }
        assert_eq!(rounds, vec![0, 1, 2], "channel r:s{i} in order");
    }
    for m in &cluster.masters {
        let keys: u64 = redis_cli(m.port, &["DBSIZE"]).trim().parse().unwrap();
        assert!(keys > 0, "master {} holds some streams", m.port);
        let shard_channels = redis_cli(m.port, &["PUBSUB", "SHARDCHANNELS"]);
        assert!(
            shard_channels.contains("herald:p:{r:s"),
            "master {} carries some shard channels: {shard_channels:?}",
            m.port
        );
        let classic = redis_cli(m.port, &["PUBSUB", "CHANNELS"]);
        assert!(
            classic.trim().is_empty(),
            "no classic pub/sub on master {}: {classic:?}",
            m.port
        );
    }
}

/// A node of the redis engine with presence namespaces and a short
/// `presence.ttl`.
fn presence_node(dir: &Path, name: &str, engine: &str, prefix: &str, ttl: &str) -> Proc {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[presence]\nttl = \"{ttl}\"\n[auth]\nhmac_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\nallow_anonymous = true\n[engine]\nkind = \"redis\"\n{engine}\nredis_prefix = \"{prefix}\"\n{}",
        crate::presence::NAMESPACES
    );
    std::fs::write(&path, text).unwrap();
    Proc::start(dir, &["--config", path.to_str().unwrap()])
}

/// Presence on two nodes sharing a private Redis: either node answers for
/// both, join/leave cross nodes (never echoed to their own client), and a
/// node killed with `kill -9` loses its entries within `presence.ttl`.
#[tokio::test]
async fn presence_is_cluster_wide_and_a_killed_nodes_entries_vanish_within_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let redis = PrivateRedis::start(dir.path(), free_port());
    presence_across_nodes(&one(&redis.url()), "herald").await;
}

#[tokio::test]
async fn on_a_cluster_presence_is_cluster_wide_and_a_killed_nodes_entries_vanish_within_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path());
    presence_across_nodes(&cluster.engine(), "herald").await;
}

async fn presence_across_nodes(engine: &str, prefix: &str) {
    use crate::presence::{client, clients_of, get, next_of, presence, subscribe, until_total};
    let dir = tempfile::tempdir().unwrap();
    let a = presence_node(dir.path(), "a", engine, prefix, "2s");
    let mut b = presence_node(dir.path(), "b", engine, prefix, "2s");
    let http = crate::util::http();
    let (mut ann, ann_id) = client(&a.ws_url(), "ann").await;
    subscribe(&mut ann, "room:1").await;
    let (mut bob, bob_id) = client(&b.ws_url(), "bob").await;
    subscribe(&mut bob, "room:1").await;
    assert_ne!(ann_id, bob_id, "client ids are unique across nodes");

    // Bob's join crosses to node A.
    let join = next_of(&mut ann, "join").await;
    assert_eq!(join["info"]["client"], bob_id, "{join}");
    assert_eq!(join["info"]["info"], json!({"name": "bob"}));
    // Either node answers for both.
    let mut both = vec![ann_id.clone(), bob_id.clone()];
    both.sort();
    for origin in [&a.origin, &b.origin] {
        let body = until_total(&http, origin, "room:1", 2).await;
        assert_eq!(body["users"], 2, "{body}");
        assert_eq!(clients_of(&body), both);
        let (status, body) = get(
            &http,
            &format!("{origin}/api/users/bob/status"),
            Some(API_KEY),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"userId":"bob","online":true,"connections":1}));
    }
    let reply = presence(&mut bob, "room:1").await;
    assert_eq!(clients_of(&reply), both, "{reply}");
    // Bob's own join, back from Redis on node B, was not echoed to him.
    publish_ok(&http, &a.origin, "room:1", &json!("marker")).await;
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
    // A leave crosses nodes too.
    let (mut carl, carl_id) = client(&b.ws_url(), "carl").await;
    subscribe(&mut carl, "room:1").await;
    assert_eq!(next_of(&mut ann, "join").await["info"]["client"], carl_id);
    let r = carl
        .request(json!({"type":"unsubscribe","channel":"room:1"}))
        .await
        .unwrap();
    assert_eq!(r["type"], "unsubscribed");
    assert_eq!(next_of(&mut ann, "leave").await["info"]["client"], carl_id);
    assert_eq!(next_of(&mut bob, "join").await["info"]["client"], carl_id);
    assert_eq!(next_of(&mut bob, "leave").await["info"]["client"], carl_id);
    // A closed session leaves the online status at once (not after the ttl).
    carl.close().await;
    until(Duration::from_secs(1), "carl offline", || {
        let (http, url) = (http.clone(), format!("{}/api/users/carl/status", a.origin));
        async move { get(&http, &url, Some(API_KEY)).await.1["online"] == false }
    })
    .await;

    // Refreshes keep entries alive past the ttl.
    tokio::time::sleep(Duration::from_secs(3)).await;
    until_total(&http, &a.origin, "room:1", 2).await;

    // kill -9: node B never says goodbye; its entries expire.
    b.signal("-KILL");
    b.wait_exit(Duration::from_secs(10));
    let killed = Instant::now();
    let body = until_total(&http, &a.origin, "room:1", 1).await;
    assert_eq!(clients_of(&body), vec![ann_id.clone()]);
    assert!(
        killed.elapsed() < Duration::from_millis(3500),
        "gone within presence.ttl (2 s, and a poll): {:?}",
        killed.elapsed()
    );
    // Node A's refresher removes them and tells its subscribers.
    let leave = next_of(&mut ann, "leave").await;
    assert_eq!(leave["info"]["client"], bob_id);
    let (_, body) = get(
        &http,
        &format!("{}/api/users/bob/status", a.origin),
        Some(API_KEY),
    )
    .await;
    assert_eq!(body, json!({"userId":"bob","online":false,"connections":0}));
}

/// A node drained with SIGTERM removes its clients' entries and sessions
/// as it goes (with `leave` for the others), long before `presence.ttl`.
#[tokio::test]
async fn a_drained_node_takes_its_presence_entries_with_it() {
    use crate::presence::{client, get, next_of, subscribe, until_total};
    let dir = tempfile::tempdir().unwrap();
    let redis = PrivateRedis::start(dir.path(), free_port());
    let engine = one(&redis.url());
    let a = presence_node(dir.path(), "a", &engine, "herald", "60s");
    let mut b = presence_node(dir.path(), "b", &engine, "herald", "60s");
    let http = crate::util::http();
    let (mut ann, _) = client(&a.ws_url(), "ann").await;
    subscribe(&mut ann, "room:drain").await;
    let (mut bob, bob_id) = client(&b.ws_url(), "bob").await;
    subscribe(&mut bob, "room:drain").await;
    assert_eq!(next_of(&mut ann, "join").await["info"]["client"], bob_id);
    until_total(&http, &a.origin, "room:drain", 2).await;
    b.signal("-TERM");
    let (disconnect, _) = bob.until_closed().await.unwrap();
    assert_eq!(disconnect.map(|d| d["code"].clone()), Some(json!(4000)));
    b.wait_exit(Duration::from_secs(15));
    // Gone at once: the ttl (60 s) would take far longer.
    let leave = next_of(&mut ann, "leave").await;
    assert_eq!(leave["info"]["client"], bob_id);
    let (status, body) = get(
        &http,
        &format!("{}/api/channels/room:drain/presence", a.origin),
        Some(API_KEY),
    )
    .await;
    assert_eq!((status, body["total"].as_u64()), (200, Some(1)), "{body}");
    let (_, body) = get(
        &http,
        &format!("{}/api/users/bob/status", a.origin),
        Some(API_KEY),
    )
    .await;
    assert_eq!(body["online"], false, "{body}");
}
