//! HTTP under hostile load: unread responses, page byte caps, abandoned long
//! polls, huge batches, poll floods, unreadable paths and pathological data
//! (issues 7 and 15).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herald_server::Node;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::util::{eventually, token, TestServer};

/// The value of an unlabelled metric in `/metrics`.
fn metric(node: &Node, name: &str) -> Option<f64> {
    node.render_metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Open file descriptors of this process (the server runs in it) that are
/// sockets the server accepted on `port`. Counting only those, rather than
/// every fd, keeps the count exact while other tests run in parallel.
fn accepted_sockets(port: u16) -> usize {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let local_port = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 0A is LISTEN: the listener, not an accepted socket.
            if local_port == Some(port) && cols[3] != "0A" {
                inodes.insert(cols[9].to_owned());
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|link| {
            let link = link.to_string_lossy();
            link.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .is_some_and(|inode| inodes.contains(inode))
        })
        .count()
}

/// A raw socket with a tiny receive buffer that sends `request` and reads nothing.
async fn stalled_client(addr: SocketAddr, request: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: herald\r\n\r\n")
}

#[tokio::test]
async fn responses_nobody_reads_are_dropped_after_write_timeout() {
    let s = TestServer::with(|c| {
        c.limits.write_timeout = Duration::from_secs(1);
        // A page far larger than the socket buffers, so the write must stall.
        c.limits.max_page_bytes = 16 << 20;
    })
    .await;
    let payload = "x".repeat(60_000);
    for _ in 0..120 {
        s.node.broadcast("chat:big", &payload).await.unwrap();
    }
    let port = s.addr.port();
    let baseline = accepted_sockets(port);
    let request = get("/api/channels/chat:big/messages?limit=1000");
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(stalled_client(s.addr, &request).await);
    }
    assert!(
        eventually(Duration::from_secs(5), || accepted_sockets(port)
            >= baseline + 6)
        .await,
        "the server accepted the sockets"
    );
    let stalled_at = Instant::now();
    // With no write deadline these stay open for ever (the test fails here).
    assert!(
        eventually(Duration::from_secs(10), || accepted_sockets(port)
            == baseline)
        .await,
        "the server dropped every unread response: {} left",
        accepted_sockets(port) - baseline
    );
    assert!(stalled_at.elapsed() < Duration::from_secs(8));
    // The clients see the response cut short: what the kernel had buffered,
    // then EOF or a reset, never the whole 7 MB page.
    for mut c in clients {
        let mut total = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        let read_all = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
        assert!(read_all.is_ok(), "the client reached EOF or a reset");
        assert!(total < 120 * 60_000, "the response was cut: {total} bytes");
    }
    // The server still serves.
    let (status, page) = s.get("/api/channels/chat:big/messages?limit=2", None).await;
    assert_eq!(status, 200);
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn poll_pages_stop_at_max_page_bytes_and_the_cursor_pages_through_all() {
    let s = TestServer::with(|c| c.limits.max_page_bytes = 65_536).await;
    let payload = "y".repeat(10_000);
    for _ in 0..30 {
        s.node.broadcast("chat:pages", &payload).await.unwrap();
    }
    let (status, first) = s
        .get("/api/channels/chat:pages/messages?limit=1000", None)
        .await;
    assert_eq!(status, 200);
    let n = first["messages"].as_array().unwrap().len();
    assert!((1..30).contains(&n), "the page ended early: {n} messages");
    assert_eq!(first["more"], true, "a page cut by bytes says more");
    let data_bytes: usize = first["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].to_string().len())
        .sum();
    assert!(data_bytes <= 65_536, "{data_bytes} bytes of data");

    let mut seen = Vec::new();
    let mut since = String::new();
    for _ in 0..30 {
        let path = if since.is_empty() {
            "/api/channels/chat:pages/messages?limit=1000".to_owned()
        } else {
            format!("/api/channels/chat:pages/messages?limit=1000&since={since}")
        };
        let (status, page) = s.get(&path, None).await;
        assert_eq!(status, 200);
        assert_eq!(page["recovered"], true);
        seen.extend(
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["offset"].as_u64().unwrap()),
        );
        since = page["cursor"].as_str().unwrap().to_owned();
        if page["more"] == false {
            break;
        }
    }
    assert_eq!(seen, (1..=30).collect::<Vec<u64>>(), "every message once");
    // A page cut by `limit` says more too; the last one does not.
    let (_, page) = s
        .get("/api/channels/chat:pages/messages?limit=2", None)
        .await;
    assert_eq!(
        (page["messages"].as_array().unwrap().len(), &page["more"]),
        (2, &json!(true))
    );
    let (_, page) = s
        .get(
            &format!("/api/channels/chat:pages/messages?since={since}"),
            None,
        )
        .await;
    assert_eq!(page["messages"], json!([]));
    assert_eq!(page["more"], false);
}

#[tokio::test]
async fn long_polls_whose_clients_hang_up_leave_the_hub() {
    let s = TestServer::start().await;
    let request = get("/api/channels/chat:quiet/messages?wait=30");
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(request.as_bytes()).await.unwrap();
        clients.push(c);
    }
    let gauge = "herald_long_poll_waiters";
    assert!(
        eventually(Duration::from_secs(5), || metric(&s.node, gauge)
            == Some(20.0))
        .await,
        "20 long polls wait: {:?}",
        metric(&s.node, gauge)
    );
    drop(clients);
    // No publish to chat:quiet: the hang-ups alone must free the waiters.
    assert!(
        eventually(Duration::from_secs(5), || metric(&s.node, gauge)
            == Some(0.0))
        .await,
        "the waiters left with their clients: {:?}",
        metric(&s.node, gauge)
    );
    assert!(
        eventually(Duration::from_secs(5), || s.node.long_polls_held() == 0).await,
        "the long-poll permits came back"
    );
}

/// The process's peak resident memory (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[tokio::test]
async fn a_huge_batch_is_refused_at_max_batch_items_without_collecting_it() {
    let s = TestServer::start().await;
    // 16 MiB of tiny items: 8 M of them, all within limits.max_body_bytes.
    let mut body = String::with_capacity(16 << 20);
    body.push_str(r#"{"items":["#);
    for i in 0..8_000_000 {
        body.push_str(if i == 0 { "0" } else { ",0" });
    }
    body.push_str("]}");
    assert!(body.len() <= s.node.config().limits.max_body_bytes);
    let before = peak_rss();
    let (status, reply) = s.post_raw("/api/batch", "application/json", body).await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (413, &json!(1006)),
        "{reply}"
    );
    let grown = peak_rss().saturating_sub(before);
    // Holding 8 M boxed items costs hundreds of MB; the body itself is 16 MiB
    // (a copy or two of it in flight).
    assert!(grown < 150 << 20, "peak memory grew by {} MiB", grown >> 20);
    // One item past the limit is refused the same way; the limit itself passes.
    let item = r#"{"action":"broadcast","channel":"chat:b","data":1}"#;
    let max = s.node.config().limits.max_batch_items;
    let over = format!(r#"{{"items":[{}]}}"#, vec![item; max + 1].join(","));
    let (status, reply) = s.post_raw("/api/batch", "application/json", over).await;
    assert_eq!((status, &reply["error"]["code"]), (413, &json!(1006)));
    let (status, reply) = s
        .post_raw(
            "/api/batch",
            "application/json",
            format!(r#"{{"items":[{item}]}}"#),
        )
        .await;
    assert_eq!((status, &reply["results"][0]["ok"]), (200, &json!(true)));
}

/// GET `path` with an optional bearer from a client bound to `local`.
async fn poll_from(
    client: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = client.get(url);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, r.json().await.unwrap())
}

#[tokio::test]
async fn polling_is_rate_limited_per_user_and_per_anonymous_address() {
    let s = TestServer::with(|c| {
        c.limits.poll_requests_per_second = 1;
        c.limits.poll_burst = 3;
    })
    .await;
    let url = s.url("/api/channels/chat:r/messages");
    let (alice, bob) = (token("alice", 3600), token("bob", 3600));
    for _ in 0..3 {
        assert_eq!(poll_from(&s.http, &url, Some(&alice)).await.0, 200);
    }
    // Alice is over her burst while Bob polls at the same moment.
    let (a, b) = tokio::join!(
        poll_from(&s.http, &url, Some(&alice)),
        poll_from(&s.http, &url, Some(&bob)),
    );
    assert_eq!(a.0, 429, "{}", a.2);
    assert_eq!(a.2["error"]["code"], 1005);
    let retry: u64 = a.1.expect("Retry-After").parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(b.0, 200, "another user is not affected");
    // The inbox spends the same user's budget.
    let inbox = s.url("/api/notifications");
    assert_eq!(poll_from(&s.http, &inbox, Some(&alice)).await.0, 429);
    assert_eq!(poll_from(&s.http, &inbox, Some(&bob)).await.0, 200);

    // Anonymous polls count per address: 127.0.0.1 runs out, 127.0.0.2 does not.
    for _ in 0..3 {
        assert_eq!(poll_from(&s.http, &url, None).await.0, 200);
    }
    assert_eq!(poll_from(&s.http, &url, None).await.0, 429);
    let other = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    assert_eq!(poll_from(&other, &url, None).await.0, 200);

    assert!(metric(&s.node, "herald_poll_rate_limited_total").unwrap() >= 3.0);
    // alice, bob and two addresses, less any that refilled and were pruned.
    let keys = metric(&s.node, "herald_poll_rate_keys").unwrap();
    assert!((1.0..=4.0).contains(&keys), "{keys}");
    // After Retry-After the budget is back.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(poll_from(&s.http, &url, Some(&alice)).await.0, 200);
}

#[tokio::test]
async fn unreadable_path_segments_get_json_errors() {
    let s = TestServer::start().await;
    for (path, code) in [
        ("/api/channels/%FF/messages", 1003),
        ("/api/venues/%FF/updates", 1003),
        ("/api/venues/%C3%28/promotions", 1003),
        ("/api/channels/chat:x/messages?since=%FF", 1000),
        ("/api/notifications?limit=%FF", 1000),
    ] {
        let (status, body) = s.get(path, None).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!(code)),
            "{path}"
        );
    }
    for (path, code) in [
        ("/api/channels/%FF/messages", 1003),
        ("/api/users/%FF/notifications", 1000),
    ] {
        let (status, body) = s.post_raw(path, "application/json", "1").await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!(code)),
            "{path}"
        );
    }
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn deep_or_non_finite_data_is_refused_on_every_publish_path() {
    let s = TestServer::start().await;
    let publish = "/api/channels/chat:shape/messages";
    for (body, what) in [
        (nested(30_000), "30,000 deep"),
        (nested(33), "33 deep"),
        ("1e999999".to_owned(), "infinite"),
        (r#"{"a":[1,-1E400]}"#.to_owned(), "-infinite inside"),
    ] {
        let (status, reply) = s.post_raw(publish, "application/json", body).await;
        assert_eq!(
            (status, &reply["error"]["code"]),
            (400, &json!(1000)),
            "{what}: {reply}"
        );
    }
    let (status, _) = s.post_raw(publish, "application/json", nested(32)).await;
    assert_eq!(status, 200, "32 deep is within the default limit");
    let (status, reply) = s
        .post_raw(
            "/api/websocket",
            "application/json",
            r#"{"action":"notify","userId":"u","data":1e999999}"#,
        )
        .await;
    assert_eq!((status, &reply["error"]["code"]), (400, &json!(1000)));
    let batch = format!(
        r#"{{"items":[{{"action":"broadcast","channel":"chat:shape","data":{}}},{{"action":"broadcast","channel":"chat:shape","data":2}}]}}"#,
        nested(40)
    );
    let (status, reply) = s.post_raw("/api/batch", "application/json", batch).await;
    assert_eq!(status, 200);
    assert_eq!(reply["results"][0]["error"]["code"], 1000, "{reply}");
    assert_eq!(reply["results"][1]["ok"], true);

    // Client publish over the WebSocket (chat has client_publish).
    let mut c = s.connected(None).await;
    let deep: Value = serde_json::from_str(&nested(40)).unwrap();
    let reply = c
        .request(json!({"type": "publish", "channel": "chat:shape", "data": deep}))
        .await
        .unwrap();
    assert_eq!(
        (&reply["type"], &reply["code"]),
        (&json!("error"), &json!(1000)),
        "{reply}"
    );
    c.send_text(r#"{"type":"publish","id":900,"channel":"chat:shape","data":1e999999}"#)
        .await
        .unwrap();
    let reply = c.next_frame().await.unwrap();
    assert_eq!(
        (&reply["type"], &reply["id"], &reply["code"]),
        (&json!("error"), &json!(900), &json!(1000)),
        "{reply}"
    );
    // Only the two good messages were stored.
    let (_, page) = s.get("/api/channels/chat:shape/messages", None).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 2, "{page}");
}
