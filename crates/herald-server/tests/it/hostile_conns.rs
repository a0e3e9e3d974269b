//! Sockets under hostile load: the per-address budget for sockets without a
//! credential (SPEC §4), forwarded addresses behind trusted proxies, and the
//! origins a dev server accepts.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::util::*;

/// A raw socket to the server from `local`, a loopback address.
async fn socket_from(local: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

#[derive(Debug)]
struct Answer {
    status: u16,
    /// The head, lower-cased.
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

/// Sends `request` and reads one response (a 1xx head, or a head and a
/// `content-length` body) within 5 s; `None` when the server closed first.
async fn exchange(tcp: &mut TcpStream, request: &[u8]) -> Option<Answer> {
    tcp.write_all(request).await.ok()?;
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |n| n.trim().parse().unwrap());
                if status < 200 || buf.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&buf[end + 4..]).into_owned();
                    return Some(Answer { status, head, body });
                }
            }
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("an answer or a close within 5 s")
}

/// Whether the server closes `tcp` within 5 s.
async fn closes(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}

fn get(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: herald\r\n{headers}\r\n").into_bytes()
}

const POLL: &str = "/api/channels/chat:1/messages";

/// A metric's value from the node's rendering (0 when absent).
fn metric(s: &TestServer, name: &str) -> f64 {
    s.node
        .render_metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_for_metric(s: &TestServer, name: &str, value: f64) {
    assert!(
        eventually(Duration::from_secs(5), || metric(s, name) == value).await,
        "{name} is {}, expected {value}",
        metric(s, name)
    );
}

#[tokio::test]
async fn one_address_without_credentials_holds_at_most_its_cap() {
    let s = TestServer::with(|c| c.limits.max_connections_per_ip = 20).await;
    let poll = get(POLL, "");
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut tcp = socket_from("127.0.0.1", s.addr).await;
        let a = exchange(&mut tcp, &poll).await.expect("served");
        assert_eq!(a.status, 200, "{a:?}");
        held.push(tcp);
    }
    wait_for_metric(&s, "herald_ip_counted_sockets", 20.0).await;
    for _ in 0..10 {
        let mut tcp = socket_from("127.0.0.1", s.addr).await;
        let a = exchange(&mut tcp, &poll)
            .await
            .expect("a refusal, not a bare close");
        assert_eq!(a.status, 429, "{a:?}");
        assert!(a.head.contains("connection: close"), "{a:?}");
        assert_eq!(a.json()["error"]["code"], 1004);
        assert!(closes(&mut tcp).await, "the refused socket is closed");
    }
    assert_eq!(
        metric(&s, "herald_connections_refused_total{reason=\"per_ip\"}"),
        10.0
    );
    // Another address has its own budget.
    let mut other = socket_from("127.0.0.2", s.addr).await;
    assert_eq!(exchange(&mut other, &poll).await.unwrap().status, 200);
    // Over the cap, an ops path is served (once) and so is a request with a credential.
    let mut tcp = socket_from("127.0.0.1", s.addr).await;
    let a = exchange(&mut tcp, &get("/health", "")).await.unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    assert!(closes(&mut tcp).await, "an ops answer over the cap closes");
    let mut tcp = socket_from("127.0.0.1", s.addr).await;
    let key = format!("Authorization: Bearer {API_KEY}\r\n");
    let a = exchange(&mut tcp, &get("/api/websocket", &key))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    // The ones let in stay usable (keep-alive).
    assert_eq!(exchange(&mut held[0], &poll).await.unwrap().status, 200);
    // Closing sockets gives their places back.
    drop(other);
    drop(held.pop());
    wait_for_metric(&s, "herald_ip_counted_sockets", 19.0).await;
    let mut tcp = socket_from("127.0.0.1", s.addr).await;
    assert_eq!(exchange(&mut tcp, &poll).await.unwrap().status, 200);
    drop((tcp, held));
    wait_for_metric(&s, "herald_ip_counted_sockets", 0.0).await;
    assert_eq!(metric(&s, "herald_ip_counted_addresses"), 0.0);
}

#[tokio::test]
async fn a_credential_takes_an_http_socket_off_its_address_count() {
    let s = TestServer::with(|c| c.limits.max_connections_per_ip = 2).await;
    let poll = get(POLL, "");
    let mut held = Vec::new();
    // A client token and an API key: neither socket counts once it shows one.
    let bearer = format!("Authorization: Bearer {}\r\n", token("u1", 3600));
    let key = format!("Authorization: Bearer {API_KEY}\r\n");
    for (path, credential) in [("/api/notifications", &bearer), ("/api/websocket", &key)] {
        let mut tcp = socket_from("127.0.0.1", s.addr).await;
        assert_eq!(
            exchange(&mut tcp, &get(path, credential))
                .await
                .unwrap()
                .status,
            200
        );
        held.push(tcp);
    }
    // A bad token is no credential.
    let bad = "Authorization: Bearer not.a.token\r\n";
    let mut tcp = socket_from("127.0.0.1", s.addr).await;
    assert_eq!(
        exchange(&mut tcp, &get(POLL, bad)).await.unwrap().status,
        401
    );
    held.push(tcp);
    let mut tcp = socket_from("127.0.0.1", s.addr).await;
    assert_eq!(exchange(&mut tcp, &poll).await.unwrap().status, 200);
    held.push(tcp);
    let mut tcp = socket_from("127.0.0.1", s.addr).await;
    assert_eq!(exchange(&mut tcp, &poll).await.unwrap().status, 429);
    // The credentialed sockets go on serving, with or without a credential.
    assert_eq!(exchange(&mut held[0], &poll).await.unwrap().status, 200);
}

#[tokio::test]
async fn sessions_with_tokens_count_per_user_and_anonymous_ones_per_address() {
    let s = TestServer::with(|c| c.limits.max_connections_per_ip = 20).await;
    let mut users = Vec::new();
    for i in 0..40 {
        users.push(s.connected(Some(&format!("user-{i}"))).await);
    }
    wait_for_metric(&s, "herald_ip_counted_sockets", 0.0).await;
    // A socket that has not sent `connect` counts, until it goes.
    let idle = s.open().await;
    wait_for_metric(&s, "herald_ip_counted_sockets", 1.0).await;
    drop(idle);
    wait_for_metric(&s, "herald_ip_counted_sockets", 0.0).await;
    let mut anonymous = Vec::new();
    for _ in 0..20 {
        anonymous.push(s.connected(None).await);
    }
    assert_eq!(metric(&s, "herald_ip_counted_sockets"), 20.0);
    match tokio_tungstenite::connect_async(s.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    // Closing an anonymous session frees its place.
    drop(anonymous.pop());
    wait_for_metric(&s, "herald_ip_counted_sockets", 19.0).await;
    anonymous.push(s.connected(None).await);
    assert_eq!(s.node.stats().connections, 60);
    drop(users);
}

#[tokio::test]
async fn forwarded_addresses_count_only_behind_trusted_proxies() {
    let xff = |ip: &str| get(POLL, &format!("X-Forwarded-For: 198.51.100.7, {ip}\r\n"));
    let s = TestServer::with(|c| {
        c.limits.max_connections_per_ip = 2;
        c.limits.trusted_proxies = vec!["127.0.0.1/32".into()];
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = socket_from("127.0.0.1", s.addr).await;
        assert_eq!(
            exchange(&mut tcp, &xff("203.0.113.1"))
                .await
                .unwrap()
                .status,
            200
        );
        held.push(tcp);
    }
    let mut tcp = socket_from("127.0.0.1", s.addr).await;
    assert_eq!(
        exchange(&mut tcp, &xff("203.0.113.1"))
            .await
            .unwrap()
            .status,
        429
    );
    // Another client behind the same proxy has its own budget.
    let mut tcp = socket_from("127.0.0.1", s.addr).await;
    assert_eq!(
        exchange(&mut tcp, &xff("203.0.113.2"))
            .await
            .unwrap()
            .status,
        200
    );
    held.push(tcp);
    assert_eq!(metric(&s, "herald_ip_counted_addresses"), 2.0);
    // A peer that is not a trusted proxy can't choose its address.
    for (i, expected) in [200, 200, 429].into_iter().enumerate() {
        let mut tcp = socket_from("127.0.0.2", s.addr).await;
        let forged = xff(&format!("203.0.113.{}", 10 + i));
        assert_eq!(exchange(&mut tcp, &forged).await.unwrap().status, expected);
        held.push(tcp);
    }

    // Without trusted proxies the header is ignored.
    let plain = TestServer::with(|c| c.limits.max_connections_per_ip = 2).await;
    for (i, expected) in [200, 200, 429].into_iter().enumerate() {
        let mut tcp = socket_from("127.0.0.1", plain.addr).await;
        let forged = xff(&format!("203.0.113.{}", 20 + i));
        assert_eq!(exchange(&mut tcp, &forged).await.unwrap().status, expected);
        held.push(tcp);
    }
}

/// A raw upgrade to `/ws` with `origin` (raw bytes) if given; the status.
async fn upgrade_status(s: &TestServer, origin: Option<&[u8]>) -> u16 {
    let mut request = b"GET /ws HTTP/1.1\r\nHost: herald\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n".to_vec();
    if let Some(origin) = origin {
        request.extend_from_slice(b"Origin: ");
        request.extend_from_slice(origin);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    exchange(&mut tcp, &request).await.expect("answered").status
}

#[tokio::test]
async fn dev_mode_serves_only_local_pages() {
    let s = TestServer::with(|c| c.dev = true).await;
    assert_eq!(upgrade_status(&s, Some(b"http://evil.example")).await, 403);
    assert_eq!(
        upgrade_status(&s, Some(b"http://localhost.evil.example")).await,
        403
    );
    assert_eq!(
        upgrade_status(&s, Some(b"http://localhost:5173")).await,
        101
    );
    assert_eq!(upgrade_status(&s, Some(b"http://[::1]:8080")).await, 101);
    assert_eq!(upgrade_status(&s, None).await, 101);

    let preflight = |origin: &str| {
        s.http
            .request(reqwest::Method::OPTIONS, s.url("/api/notifications"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let r = preflight("http://evil.example").await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = preflight("http://localhost:5173").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_some());

    let poll = |origin: Option<&str>| {
        let mut r = s.http.get(s.url(POLL));
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let r = poll(Some("http://evil.example")).await.unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], 1002);
    assert_eq!(
        poll(Some("http://127.0.0.1:3000")).await.unwrap().status(),
        200
    );
    assert_eq!(poll(None).await.unwrap().status(), 200);
}

#[tokio::test]
async fn an_origin_that_is_not_utf8_fails_the_allow_list() {
    let s = TestServer::with(|c| c.allowed_origins = vec!["https://venue.example".into()]).await;
    assert_eq!(upgrade_status(&s, Some(b"\xff\xfe")).await, 403);
    assert_eq!(
        upgrade_status(&s, Some(b"https://venue.example\xff")).await,
        403
    );
    assert_eq!(
        upgrade_status(&s, Some(b"https://venue.example")).await,
        101
    );
}

#[tokio::test]
async fn an_upgrade_on_a_credentialed_keep_alive_socket_counts_again() {
    let s = TestServer::with(|c| c.limits.max_connections_per_ip = 1).await;
    let mut tcp = socket_from("127.0.0.1", s.addr).await;
    let key = format!("Authorization: Bearer {API_KEY}\r\n");
    let a = exchange(&mut tcp, &get("/api/websocket", &key))
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    wait_for_metric(&s, "herald_ip_counted_sockets", 0.0).await;
    // The same socket upgrades (through hyper, it is kept alive): the
    // session may still connect anonymously, so it counts from here on.
    let upgrade = get(
        "/ws",
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    );
    assert_eq!(exchange(&mut tcp, &upgrade).await.unwrap().status, 101);
    wait_for_metric(&s, "herald_ip_counted_sockets", 1.0).await;
    let mut other = socket_from("127.0.0.1", s.addr).await;
    assert_eq!(
        exchange(&mut other, &get(POLL, "")).await.unwrap().status,
        429
    );
    drop(tcp);
    wait_for_metric(&s, "herald_ip_counted_sockets", 0.0).await;
}
