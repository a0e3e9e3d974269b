//! `herald publish` / `herald notify`: names are percent-encoded path
//! segments, and answers whose outcome is unknown are retried with one
//! idempotency key.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::util::*;

/// One request as the fake server saw it.
#[derive(Debug)]
struct Seen {
    path: String,
    key: Option<String>,
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body), bounded.
async fn read_request(tcp: &mut tokio::net::TcpStream) -> Seen {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
            .await
            .expect("request arrives")
            .unwrap();
        assert!(n > 0 && buf.len() < 65_536, "incomplete request");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
    while buf.len() < head_end + length {
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "body cut short");
        buf.extend_from_slice(&chunk[..n]);
    }
    Seen {
        path: head.split_whitespace().nth(1).unwrap().to_owned(),
        key: header("idempotency-key"),
    }
}

async fn answer(tcp: &mut tokio::net::TcpStream, status: &str, body: &str) {
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 0\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(text.as_bytes()).await.unwrap();
    let _ = tcp.shutdown().await;
}

#[tokio::test]
async fn unknown_outcomes_are_retried_with_one_key_and_names_are_escaped() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    // A lost connection, a 503 and a 408, then the answer: each a new connection.
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for step in 0..4 {
            let (mut tcp, _) = listener.accept().await.unwrap();
            seen.push(read_request(&mut tcp).await);
            match step {
                0 => drop(tcp),
                1 => {
                    answer(
                        &mut tcp,
                        "503 Service Unavailable",
                        r#"{"error":{"code":1011,"message":"unknown"}}"#,
                    )
                    .await
                }
                2 => {
                    answer(
                        &mut tcp,
                        "408 Request Timeout",
                        r#"{"error":{"code":1000,"message":"slow"}}"#,
                    )
                    .await
                }
                _ => {
                    answer(
                        &mut tcp,
                        "200 OK",
                        r#"{"ok":true,"userId":"a b/c","offset":1,"cursor":"e:1"}"#,
                    )
                    .await
                }
            }
        }
        seen
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = herald(dir.path());
    cmd.args([
        "notify",
        "a b/c",
        r#"{"x":1}"#,
        "--url",
        &origin,
        "--api-key",
        API_KEY,
    ]);
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::from(cmd).output(),
    )
    .await
    .expect("the CLI finishes")
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["offset"], 1);
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 4);
    let key = seen[0].key.clone().expect("an Idempotency-Key is sent");
    assert!(key.len() >= 16, "{key}");
    for s in &seen {
        assert_eq!(s.path, "/api/users/a%20b%2Fc/notifications");
        assert_eq!(
            s.key.as_deref(),
            Some(key.as_str()),
            "one key for every attempt"
        );
    }
}

#[tokio::test]
async fn a_refusal_is_not_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let seen = read_request(&mut tcp).await;
        answer(
            &mut tcp,
            "400 Bad Request",
            r#"{"error":{"code":1003,"message":"invalid channel"}}"#,
        )
        .await;
        // A retry would arrive within the backoff; none must.
        let again = tokio::time::timeout(Duration::from_millis(600), listener.accept()).await;
        (seen, again.is_ok())
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = herald(dir.path());
    cmd.args([
        "publish",
        "bad channel",
        "{}",
        "--url",
        &origin,
        "--api-key",
        API_KEY,
    ]);
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    assert!(!out.status.success());
    let (seen, retried) = server.await.unwrap();
    assert_eq!(seen.path, "/api/channels/bad%20channel/messages");
    assert!(!retried);
}

#[tokio::test]
async fn a_user_id_with_a_space_and_a_slash_reaches_its_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let server = Proc::start(dir.path(), &["--port", "0"]);
    let out = herald(dir.path())
        .args(["notify", "a b/c", r#"{"hi":1}"#, "--url", &server.origin])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (answer["userId"].clone(), answer["offset"].clone()),
        (json!("a b/c"), json!(1))
    );
    let out = herald(dir.path())
        .args(["publish", "..", r#"{"dots":1}"#, "--url", &server.origin])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["channel"], "..");
}

#[test]
fn token_refuses_a_pattern_the_server_would_ignore() {
    let dir = tempfile::tempdir().unwrap();
    let sign = |channels: &str| {
        herald(dir.path())
            .args([
                "token",
                "--user",
                "u",
                "--secret",
                SECRET,
                "--channels",
                channels,
            ])
            .output()
            .unwrap()
    };
    let out = sign("venue*");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("venue:*"));
    assert!(sign("venue:*,chat:1,*").status.success());
}
