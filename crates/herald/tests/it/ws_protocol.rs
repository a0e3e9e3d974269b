//! The WebSocket codec against a real server process over raw TCP: closes
//! are answered, protocol violations close with their RFC 6455 code,
//! control-frame floods are charged and their pongs coalesced, unfinished
//! messages are bounded in time, and read buffers shrink after large frames.
//!
//! Bounded: every read has a timeout, and only loopback addresses are used.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{write_config, Proc};

const CONFIG: &str = r#"
[limits]
fragment_timeout = "1s"
"#;

/// How long any single wait of the test may take.
const WAIT: Duration = Duration::from_secs(5);

const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

fn start() -> (tempfile::TempDir, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), CONFIG);
    let server = Proc::start(dir.path(), &["--config", config.to_str().unwrap()]);
    (dir, server)
}

fn host(server: &Proc) -> String {
    server.origin.trim_start_matches("http://").to_owned()
}

/// A masked client frame (RFC 6455 §5.2).
fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    crate::util::client_frame(opcode, fin, payload)
}

/// Opens a raw WebSocket and reads the 101 answer.
async fn raw_ws(host: &str) -> TcpStream {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(host))
        .await
        .expect("connect in time")
        .unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    send(&mut s, request.as_bytes()).await;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .expect("101 in time")
            .unwrap();
        assert_eq!(n, 1, "the server hung up during the handshake");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Reads one server frame: its opcode and payload; `None` at end of stream.
async fn read_frame<R: AsyncReadExt + Unpin>(s: &mut R) -> Option<(u8, Vec<u8>)> {
    tokio::time::timeout(WAIT, async {
        let mut head = [0u8; 2];
        s.read_exact(&mut head).await.ok()?;
        assert_eq!(head[1] & 0x80, 0, "server frames are unmasked");
        let len = match head[1] & 0x7F {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).await.ok()?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).await.ok()?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).await.ok()?;
        Some((head[0] & 0x0F, payload))
    })
    .await
    .expect("a frame or the end of the stream in time")
}

/// Reads frames until the server's close frame: its code, and the frames
/// before it.
async fn until_close<R: AsyncReadExt + Unpin>(s: &mut R) -> (u16, Vec<(u8, Vec<u8>)>) {
    let mut before = Vec::new();
    loop {
        let (opcode, payload) = read_frame(s).await.expect("a close frame before EOF");
        if opcode == CLOSE {
            assert!(payload.len() >= 2, "the close frame carries a code");
            return (u16::from_be_bytes([payload[0], payload[1]]), before);
        }
        before.push((opcode, payload));
    }
}

/// Sends `bytes`, and expects a close frame with `code` and no `disconnect`
/// text frame before it, then the end of the stream.
async fn closes_with(host: &str, bytes: &[u8], code: u16) {
    let mut s = raw_ws(host).await;
    send(&mut s, bytes).await;
    let (got, before) = until_close(&mut s).await;
    assert_eq!(got, code);
    assert!(
        before.iter().all(|(op, _)| *op != TEXT),
        "no disconnect frame for a protocol error: {before:?}"
    );
    assert!(read_frame(&mut s).await.is_none(), "then the TCP close");
}

/// Writes all of `bytes`, in bounded time.
async fn send<W: AsyncWriteExt + Unpin>(s: &mut W, bytes: &[u8]) {
    tokio::time::timeout(WAIT, s.write_all(bytes))
        .await
        .expect("the server reads in time")
        .unwrap();
}

async fn metric(origin: &str, name: &str) -> f64 {
    let text = tokio::time::timeout(WAIT, async {
        reqwest::get(format!("{origin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
    .await
    .expect("/metrics answers in time");
    text.lines()
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("/metrics has no {name}"))
}

#[tokio::test]
async fn a_client_close_is_answered_with_its_code() {
    let (_dir, server) = start();
    let host = host(&server);
    for (sent, echoed) in [(&[0x0F, 0xA0][..], 4000), (&[][..], 1000)] {
        let mut s = raw_ws(&host).await;
        send(&mut s, &frame(CLOSE, true, sent)).await;
        let (code, _) = until_close(&mut s).await;
        assert_eq!(code, echoed);
        assert!(read_frame(&mut s).await.is_none(), "then the TCP close");
    }
}

#[tokio::test]
async fn protocol_violations_close_with_their_rfc_codes() {
    let (_dir, server) = start();
    let host = host(&server);
    // Unmasked.
    closes_with(&host, &[0x81, 0x02, b'h', b'i'], 1002).await;
    // Invalid UTF-8 text.
    closes_with(&host, &frame(TEXT, true, b"\xff\xfe\xfd"), 1007).await;
    // A continuation with no message open.
    closes_with(&host, &frame(CONTINUATION, true, b"x"), 1002).await;
}

#[tokio::test]
async fn a_frame_over_max_frame_bytes_is_refused_from_its_header_with_1009() {
    let (_dir, server) = start();
    let mut s = raw_ws(&host(&server)).await;
    // Only the header of a 70,000-byte frame (the limit is 65,536): the
    // server must not wait for the payload to refuse it.
    let big = frame(TEXT, true, &vec![b'a'; 70_000]);
    send(&mut s, &big[..14]).await;
    let (code, before) = until_close(&mut s).await;
    assert_eq!(code, 1009);
    // 1009 is also a Herald close code: its `disconnect` says not to reconnect.
    if let Some((_, text)) = before.iter().find(|(op, _)| *op == TEXT) {
        let d: serde_json::Value = serde_json::from_slice(text).unwrap();
        assert_eq!(
            (d["code"].clone(), d["reconnect"].clone()),
            (json!(1009), json!(false))
        );
    }
}

#[tokio::test]
async fn a_ping_flood_is_charged_and_its_pongs_coalesced() {
    let (_dir, server) = start();
    let s = raw_ws(&host(&server)).await;
    let (mut rx, mut tx) = s.into_split();
    const PINGS: usize = 10_000;
    let flood: Vec<u8> = (0..PINGS).flat_map(|_| frame(PING, true, b"p")).collect();
    // Written while the frames are read, so neither side's buffers stall
    // the other.
    let writer = tokio::spawn(async move {
        let _ = tx.write_all(&flood).await;
        tx
    });
    let (code, before) = until_close(&mut rx).await;
    let pongs = before.iter().filter(|(op, _)| *op == PONG).count();
    eprintln!(
        "{pongs} pongs and {} frames in all before the close",
        before.len()
    );
    assert_eq!(
        code,
        4004,
        "closed as abuse (frames before: {})",
        before.len()
    );
    // Default burst 100 + abuse threshold 100: at least ~200 pings were read
    // before the close, yet a burst gets one pong per read, not per ping.
    assert!(pongs <= 20, "{pongs} pongs for a burst of {PINGS} pings");
    let _ = tokio::time::timeout(WAIT, writer).await;
}

#[tokio::test]
async fn an_unfinished_message_kept_alive_with_pings_closes_with_1008() {
    let (_dir, server) = start();
    let mut s = raw_ws(&host(&server)).await;
    let began = Instant::now();
    send(&mut s, &frame(TEXT, false, &[b' '; 1000])).await;
    let (mut rx, mut tx) = s.into_split();
    // Pings every 200 ms keep the connection alive; the fragment must not.
    let pinger = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        for _ in 0..25 {
            tick.tick().await;
            let ping = frame(PING, true, b"");
            let sent = tokio::time::timeout(WAIT, tx.write_all(&ping)).await;
            if !matches!(sent, Ok(Ok(()))) {
                break;
            }
        }
    });
    let (code, before) = until_close(&mut rx).await;
    let elapsed = began.elapsed();
    assert_eq!(code, 1008);
    assert!(before.iter().all(|(op, _)| *op == PONG), "{before:?}");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "closed after {elapsed:?} with fragment_timeout 1s"
    );
    pinger.abort();
}

#[tokio::test]
async fn read_buffers_shrink_back_after_large_frames() {
    let (_dir, server) = start();
    let host = host(&server);
    let name = "herald_ws_read_buffer_bytes";
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(raw_ws(&host).await);
    }
    // Each socket answers a small command first, so all 20 are sessions.
    for s in &mut sockets {
        send(s, &frame(TEXT, true, br#"{"type":"ping","id":1}"#)).await;
        let (op, reply) = read_frame(s).await.unwrap();
        assert_eq!(op, TEXT, "{}", String::from_utf8_lossy(&reply));
    }
    let baseline = metric(&server.origin, name).await;
    assert!(
        baseline > 0.0 && baseline <= 20.0 * 1024.0,
        "baseline {baseline}"
    );
    // One 60 KB command per connection, each answered (so it was read whole).
    let pad = "x".repeat(60_000);
    let big = frame(
        TEXT,
        true,
        json!({"type":"ping","id":2,"pad":pad})
            .to_string()
            .as_bytes(),
    );
    for s in &mut sockets {
        send(s, &big).await;
        let (op, reply) = read_frame(s).await.unwrap();
        assert_eq!(op, TEXT);
        let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(reply["id"], 2, "{reply}");
    }
    let after = metric(&server.origin, name).await;
    assert!(
        after <= baseline + 1024.0,
        "{name} is {after} after the large frames, baseline {baseline} (20 x 60 KB would be {})",
        20 * 60_000
    );
    // Closed sockets give back what they held.
    for s in &mut sockets {
        send(s, &frame(CLOSE, true, &1000u16.to_be_bytes())).await;
        until_close(s).await;
        assert!(read_frame(s).await.is_none());
    }
    drop(sockets);
    let deadline = Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let now = metric(&server.origin, name).await;
        if now == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {now} after every socket closed"
        );
        tick.tick().await;
    }
}
