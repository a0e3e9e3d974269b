//! The hostile crowd: one real server process, ~20 s of clients that stall,
//! flood, send garbage, hang up mid-request and resume huge histories, next
//! to one healthy subscriber. Afterwards every gauge, the process's open
//! descriptors and its memory must be back near where they started, and the
//! healthy subscriber must have received every message, in order, once.
//!
//! Bounded: every loop stops at the crowd's deadline, every read and write of
//! the test has a timeout, and only loopback addresses are used.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_server::auth::{sign_hs256, unix_now, Claims};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::util::{metric, write_config, Proc, API_KEY, SECRET};

/// How long the crowd runs.
const CROWD: Duration = Duration::from_secs(20);
/// Messages in the big channel's history, and the size of each.
const BIG_MESSAGES: usize = 150;
const BIG_BYTES: usize = 50_000;

const CONFIG: &str = r#"
[limits]
write_timeout = "2s"
request_timeout = "3s"
header_read_timeout = "2s"
connect_timeout = "2s"
outbound_queue_bytes = 262144
max_page_bytes = 131072
abuse_threshold = 20
fragment_timeout = "2s"
# The whole crowd is one address: let its polls through, so the stallers
# really stall the server instead of being turned away.
poll_requests_per_second = 100000
poll_burst = 100000
[heartbeat]
ping_interval = "1s"
pong_timeout = "2s"
[[namespaces]]
name = "big"
subscribe = "public"
history_size = 1000
[[namespaces]]
name = "live"
subscribe = "public"
"#;

fn token(user: &str, exp: Option<u64>) -> String {
    let claims = Claims {
        sub: user.into(),
        exp: Some(exp.unwrap_or(unix_now() + 3600)),
        iat: None,
        role: None,
        channels: None,
    };
    sign_hs256(SECRET, &claims).unwrap()
}

/// Resident memory and open descriptors of a process.
fn usage(pid: u32) -> (u64, usize, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (kib("VmRSS:") * 1024, fds, kib("VmHWM:") * 1024)
}

/// A raw TCP socket to the server with a small receive buffer, so a client
/// that does not read stalls the server's writes quickly.
async fn small_socket(addr: &str) -> std::io::Result<TcpStream> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    tokio::time::timeout(Duration::from_secs(2), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

fn upgrade_request(host: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A masked client frame (RFC 6455 §5.2).
fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    crate::util::client_frame(opcode, fin, payload)
}

fn text(json: &Value) -> Vec<u8> {
    frame(0x1, true, json.to_string().as_bytes())
}

/// Opens a raw WebSocket and reads the 101 answer.
async fn raw_ws(host: &str) -> std::io::Result<TcpStream> {
    let mut s = small_socket(host).await?;
    s.write_all(upgrade_request(host).as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut byte))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other("upgrade refused"));
    }
    Ok(s)
}

/// Reads and discards until the server closes the socket or `within` passes.
async fn drain_until_closed(s: &mut TcpStream, within: Duration) {
    let mut buf = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(within, async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[derive(Default)]
struct Tally {
    rounds: AtomicU64,
}

impl Tally {
    fn add(&self) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_crowd_leaves_no_trace_and_the_healthy_subscriber_gets_everything() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), CONFIG);
    let server = Proc::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let origin = server.origin.clone();
    let host = origin.trim_start_matches("http://").to_owned();
    let pid = server.child.id();
    let http = crate::util::http_builder()
        .timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_millis(250))
        .build()
        .unwrap();

    // A big history to resume and to page through.
    let payload = "x".repeat(BIG_BYTES);
    let mut big_cursor = String::new();
    for chunk in 0..(BIG_MESSAGES / 10) {
        let items: Vec<Value> = (0..10)
            .map(|i| json!({"action":"broadcast","channel":"big:1","data":{"n": chunk * 10 + i, "pad": payload}}))
            .collect();
        let r: Value = http
            .post(format!("{origin}/api/batch"))
            .bearer_auth(API_KEY)
            .json(&json!({ "items": items }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        big_cursor = r["results"][0]["cursor"].as_str().unwrap().to_owned();
    }
    let epoch = big_cursor.split(':').next().unwrap().to_owned();
    let from_zero = format!("{epoch}:0");

    // The healthy subscriber, connected before the baseline is taken.
    let mut healthy = herald_client::Client::open(&server.ws_url()).await.unwrap();
    healthy.timeout = Duration::from_secs(5);
    assert_eq!(healthy.connect(None).await.unwrap()["type"], "connected");
    assert_eq!(
        healthy.subscribe("live:1", None).await.unwrap()["type"],
        "subscribed"
    );

    // It reads all the time (and so answers pings), as a live app does.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            match healthy.next_push().await {
                Ok(m) => {
                    if seen_tx.send(m).is_err() {
                        break;
                    }
                }
                Err(herald_client::Error::Timeout(_)) => continue,
                Err(e) => panic!("the healthy subscriber lost its socket: {e}"),
            }
        }
    });

    let baseline_conns = metric(&http, &origin, "herald_connections").await;
    let baseline_subs = metric(&http, &origin, "herald_subscriptions").await;
    let (rss0, fds0, _) = usage(pid);

    let deadline = Instant::now() + CROWD;
    let alive = move || Instant::now() < deadline;
    let mut tasks = tokio::task::JoinSet::new();
    let tallies: Vec<(&str, Arc<Tally>)> = [
        "ws-staller",
        "http-staller",
        "flooder",
        "garbage",
        "hang-up",
        "long-poll",
        "resumer",
        "odd-token",
    ]
    .into_iter()
    .map(|name| (name, Arc::new(Tally::default())))
    .collect();
    let tally = |name: &str| {
        tallies
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.clone())
            .unwrap()
    };

    // WebSocket clients that resume the whole big history and never read.
    for _ in 0..6 {
        let (host, since, t) = (host.clone(), from_zero.clone(), tally("ws-staller"));
        tasks.spawn(async move {
            while alive() {
                let Ok(mut s) = raw_ws(&host).await else {
                    continue;
                };
                let mut out = text(&json!({"type":"connect","id":1}));
                out.extend(text(
                    &json!({"type":"subscribe","id":2,"channel":"big:1","since":since}),
                ));
                let _ = s.write_all(&out).await;
                // Hold without reading, as a stalled phone would.
                tokio::time::sleep(Duration::from_secs(3)).await;
                t.add();
            }
        });
    }
    // HTTP clients that ask for big pages and never read the answer.
    for _ in 0..8 {
        let (host, t) = (host.clone(), tally("http-staller"));
        tasks.spawn(async move {
            while alive() {
                let Ok(mut s) = small_socket(&host).await else {
                    continue;
                };
                let req = format!(
                    "GET /api/channels/big:1/messages?limit=1000 HTTP/1.1\r\nHost: {host}\r\n\r\n"
                );
                let _ = s.write_all(req.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                t.add();
            }
        });
    }
    // Flooders: thousands of pings and commands in one write, before and after connect.
    for i in 0..3 {
        let (host, t) = (host.clone(), tally("flooder"));
        tasks.spawn(async move {
            while alive() {
                let Ok(mut s) = raw_ws(&host).await else {
                    continue;
                };
                let mut burst = Vec::new();
                if i > 0 {
                    burst.extend(text(&json!({"type":"connect","id":1})));
                }
                for n in 0..5000u32 {
                    match (i, n % 3) {
                        (0, _) => burst.extend(frame(0x9, true, b"p")),
                        (1, 0) => burst.extend(frame(0xA, true, b"")),
                        _ => burst.extend(text(&json!({"type":"ping","id":n}))),
                    }
                }
                let _ = s.write_all(&burst).await;
                drain_until_closed(&mut s, Duration::from_secs(5)).await;
                t.add();
            }
        });
    }
    // Garbage: bytes that are not HTTP, broken frames, a fragment kept open.
    for i in 0..3 {
        let (host, t) = (host.clone(), tally("garbage"));
        tasks.spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ i;
            while alive() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let junk: Vec<u8> = (0..512).map(|k| (seed >> (k % 56)) as u8).collect();
                match i {
                    0 => {
                        if let Ok(mut s) = small_socket(&host).await {
                            let _ = s.write_all(&junk).await;
                            drain_until_closed(&mut s, Duration::from_secs(3)).await;
                        }
                    }
                    1 => {
                        if let Ok(mut s) = raw_ws(&host).await {
                            // An unmasked frame, then junk.
                            let _ = s.write_all(&[0x81, 0x02, b'h', b'i']).await;
                            let _ = s.write_all(&junk).await;
                            drain_until_closed(&mut s, Duration::from_secs(3)).await;
                        }
                    }
                    _ => {
                        if let Ok(mut s) = raw_ws(&host).await {
                            // A message that never finishes, kept alive with pings.
                            let _ = s.write_all(&frame(0x1, false, &[b' '; 30_000])).await;
                            for _ in 0..40 {
                                if s.write_all(&frame(0x9, true, b"")).await.is_err() {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            drain_until_closed(&mut s, Duration::from_secs(3)).await;
                        }
                    }
                }
                t.add();
            }
        });
    }
    // Requests that hang up halfway: half a head, half a body.
    for i in 0..3 {
        let (host, t) = (host.clone(), tally("hang-up"));
        tasks.spawn(async move {
            while alive() {
                if let Ok(mut s) = small_socket(&host).await {
                    let req = if i == 0 {
                        format!("GET /api/channels/big:1/messages HTTP/1.1\r\nHost: {host}\r\nX-Pad: ")
                    } else {
                        format!("POST /api/channels/live:9/messages HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"a\":\"")
                    };
                    let _ = s.write_all(req.as_bytes()).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                t.add();
            }
        });
    }
    // Long polls that give up long before their wait.
    for _ in 0..10 {
        let (origin, t) = (origin.clone(), tally("long-poll"));
        tasks.spawn(async move {
            let client = crate::util::http_builder()
                .timeout(Duration::from_millis(300))
                .build()
                .unwrap();
            while alive() {
                let _ = client
                    .get(format!("{origin}/api/channels/quiet:1/messages?wait=30"))
                    .send()
                    .await;
                t.add();
            }
        });
    }
    // Tokens with absurd expiry, on connect and refresh.
    {
        let (url, t) = (server.ws_url(), tally("odd-token"));
        tasks.spawn(async move {
            while alive() {
                if let Ok(mut c) = herald_client::Client::open(&url).await {
                    let far = token("odd-user", Some(u64::MAX));
                    if let Ok(reply) = c.connect(Some(&far)).await {
                        if reply["type"] == "connected" {
                            let _ = c.request(json!({"type":"refresh","token":far})).await;
                            let _ = c.subscribe("live:2", None).await;
                        }
                    }
                    c.close().await;
                }
                t.add();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    // Resumers that do read: each gets the whole big history, in order, once.
    let resumed_ok = Arc::new(AtomicU64::new(0));
    for _ in 0..2 {
        let (url, since, t, ok) = (
            server.ws_url(),
            from_zero.clone(),
            tally("resumer"),
            resumed_ok.clone(),
        );
        tasks.spawn(async move {
            while alive() {
                let Ok(mut c) = herald_client::Client::open(&url).await else {
                    continue;
                };
                c.timeout = Duration::from_secs(10);
                if c.connect(None).await.is_err() {
                    continue;
                }
                let reply = c.subscribe("big:1", Some(&since)).await.unwrap();
                assert_eq!(reply["recovered"], true, "{reply}");
                assert_eq!(reply["missed"], BIG_MESSAGES, "{reply}");
                for expected in 1..=BIG_MESSAGES as u64 {
                    let m = c.next_push().await.unwrap();
                    assert_eq!(m["offset"], expected);
                }
                ok.fetch_add(1, Ordering::Relaxed);
                c.close().await;
                t.add();
            }
        });
    }

    // Meanwhile: publish to the healthy subscriber's channel and check that
    // the server keeps answering its health check promptly.
    let mut published = 0u64;
    let mut health_failures = 0;
    let mut peak_rss = rss0;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while Instant::now() < deadline {
        tick.tick().await;
        let r = http
            .post(format!("{origin}/api/channels/live:1/messages"))
            .bearer_auth(API_KEY)
            .json(&json!({"n": published + 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        published += 1;
        if published.is_multiple_of(20) {
            let health = tokio::time::timeout(
                Duration::from_secs(2),
                http.get(format!("{origin}/health")).send(),
            )
            .await;
            if !matches!(health, Ok(Ok(ref r)) if r.status() == 200) {
                health_failures += 1;
            }
            peak_rss = peak_rss.max(usage(pid).0);
        }
    }
    for expected in 1..=published {
        let m = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("the healthy subscriber keeps receiving")
            .expect("its reader is running");
        assert_eq!(m["channel"], "live:1");
        assert_eq!(
            m["offset"], expected,
            "the healthy subscriber missed nothing"
        );
    }
    assert_eq!(health_failures, 0, "/health answered within 2 s throughout");

    // The crowd goes home.
    while let Some(r) = tasks.join_next().await {
        r.expect("a crowd task panicked (its assertion says why)");
    }
    for (name, t) in &tallies {
        assert!(t.get() > 0, "the {name} clients ran at least one round");
    }
    assert!(
        resumed_ok.load(Ordering::Relaxed) >= 2,
        "readers resumed the whole history"
    );

    // Everything they made comes back: gauges, descriptors, memory.
    let settle = Instant::now() + Duration::from_secs(15);
    let last = loop {
        let conns = metric(&http, &origin, "herald_connections").await;
        let subs = metric(&http, &origin, "herald_subscriptions").await;
        let waiters = metric(&http, &origin, "herald_long_poll_waiters").await;
        let queued = metric(&http, &origin, "herald_outbound_queue_bytes").await;
        let (rss, fds, _) = usage(pid);
        let state = format!(
            "connections {conns} (baseline {baseline_conns}), subscriptions {subs} (baseline {baseline_subs}), long-poll waiters {waiters}, queued bytes {queued}, fds {fds} (baseline {fds0}), rss {} MiB (baseline {} MiB)",
            rss >> 20,
            rss0 >> 20
        );
        let settled = conns == baseline_conns
            && subs == baseline_subs
            && waiters == 0.0
            && queued == 0.0
            && fds <= fds0 + 4;
        if settled {
            break state;
        }
        if Instant::now() >= settle {
            let ss = std::process::Command::new("ss")
                .args(["-tanpe"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let mine: Vec<&str> = ss
                .lines()
                .filter(|l| l.contains(&format!("pid={pid},")))
                .collect();
            eprintln!("server sockets:\n{}", mine.join("\n"));
            for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .flatten()
            {
                eprintln!(
                    "fd {:?} -> {:?}",
                    e.file_name(),
                    std::fs::read_link(e.path())
                );
            }
        }
        assert!(Instant::now() < settle, "did not settle: {state}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (rss, _, _) = usage(pid);
    eprintln!("settled: {last}; peak rss {} MiB", peak_rss >> 20);
    // Without byte bounds the stalled readers alone hold the big history
    // (7.5 MB) each: 14 of them hold over 100 MB at once.
    assert!(
        peak_rss < rss0 + (80 << 20),
        "peak RSS {} MiB against a baseline of {} MiB",
        peak_rss >> 20,
        rss0 >> 20
    );
    assert!(
        rss < rss0 + (48 << 20),
        "RSS {} MiB after the crowd, baseline {} MiB",
        rss >> 20,
        rss0 >> 20
    );
    // The server is still whole: a new client connects and gets a message.
    let mut late = herald_client::Client::open(&server.ws_url()).await.unwrap();
    late.connect(None).await.unwrap();
    late.subscribe("live:1", None).await.unwrap();
    http.post(format!("{origin}/api/channels/live:1/messages"))
        .bearer_auth(API_KEY)
        .json(&json!({"late": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(late.next_push().await.unwrap()["data"]["late"], true);
    assert!(
        !reader.is_finished(),
        "the healthy subscriber is still connected"
    );
    reader.abort();
}
