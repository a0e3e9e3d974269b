//! Issues 7 and 15, token side, over real sockets: `crit` headers and
//! oversized tokens, `allow_no_exp` that still refuses a past `exp`, an
//! absurd `exp`, and `channels` patterns that cannot reach across namespaces.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use herald_server::auth::unix_now;

use crate::util::*;

fn sign(header: &Header, claims: &Value) -> String {
    jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(&Header::new(Algorithm::HS256), claims)
}

/// The WebSocket connect gets `error` `code`, then the close 4001; `path`
/// answers 401 with the same code.
async fn refused(s: &TestServer, token: &str, code: u16, path: &str) {
    let mut c = s.open().await;
    let reply = c.connect(Some(token)).await.unwrap();
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_u64()),
        (Some("error"), Some(u64::from(code))),
        "{reply}"
    );
    assert_eq!(c.until_closed().await.unwrap().1, Some(4001));
    let (status, body) = s.get(path, Some(token)).await;
    assert_eq!(
        (status, body["error"]["code"].as_u64()),
        (401, Some(u64::from(code))),
        "{body}"
    );
}

#[tokio::test]
async fn crit_headers_and_oversized_tokens_are_refused() {
    let s = TestServer::start().await;
    let claims = json!({"sub": "u1", "exp": unix_now() + 3600});
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp".into()]);
    refused(
        &s,
        &sign(&header, &claims),
        1001,
        "/api/channels/chat:1/messages",
    )
    .await;

    // 20 KB: over auth.max_token_bytes (8 KiB), under the frame limit, so it
    // is the token check that refuses it.
    let big = hs256(&json!({"sub": "u1", "exp": unix_now() + 3600, "pad": "x".repeat(20_000)}));
    refused(&s, &big, 1001, "/api/channels/chat:1/messages").await;

    // The same claims in a plain, small token pass.
    let mut c = s.open().await;
    assert_eq!(
        c.connect(Some(&hs256(&claims))).await.unwrap()["type"],
        "connected"
    );
    s.stop().await;
}

#[tokio::test]
async fn allow_no_exp_still_refuses_a_past_exp() {
    let s = TestServer::with(|c| c.auth.allow_no_exp = true).await;
    let month_ago = hs256(&json!({"sub": "u1", "exp": unix_now() - 30 * 86_400}));
    refused(&s, &month_ago, 1009, "/api/notifications").await;

    let no_exp = hs256(&json!({"sub": "u1"}));
    let mut c = s.open().await;
    assert_eq!(c.connect(Some(&no_exp)).await.unwrap()["user"], "u1");
    let (status, body) = s.get("/api/notifications", Some(&no_exp)).await;
    assert_eq!(status, 200, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn an_exp_at_the_end_of_u64_connects_and_the_session_lives() {
    let s = TestServer::start().await;
    let token = hs256(&json!({"sub": "u1", "exp": u64::MAX}));
    let mut c = s.open().await;
    assert_eq!(c.connect(Some(&token)).await.unwrap()["type"], "connected");
    // The session is still answering after scheduling that expiry.
    assert_eq!(
        c.request(json!({"type": "ping"})).await.unwrap()["type"],
        "pong"
    );
    s.stop().await;
}

#[tokio::test]
async fn channel_patterns_grant_whole_trailing_segments_only() {
    // `priv` is a claim namespace in the test config; add `privx` as another.
    let s = TestServer::with(|c| {
        c.namespaces.push(ns(
            "privx",
            herald_server::config::SubscribeRule::Claim,
            false,
        ))
    })
    .await;
    let cases: [(&[&str], &[&str], &[&str]); 4] = [
        (&["priv*"], &[], &["priv:1", "privx:1", "priv"]),
        (&["priv:*"], &["priv:1", "priv:1:2"], &["privx:1", "priv"]),
        (&["priv:42:*"], &["priv:42:a"], &["priv:42", "priv:421:a"]),
        (&["*"], &["priv:1", "privx:1", "priv"], &[]),
    ];
    for (patterns, allowed, denied) in cases {
        let token = hs256(&json!({"sub": "u1", "exp": unix_now() + 3600, "channels": patterns}));
        let mut c = s.open().await;
        assert_eq!(c.connect(Some(&token)).await.unwrap()["type"], "connected");
        for channel in allowed {
            let r = c.subscribe(channel, None).await.unwrap();
            assert_eq!(r["type"], "subscribed", "{patterns:?} {channel}: {r}");
        }
        for channel in denied {
            let r = c.subscribe(channel, None).await.unwrap();
            assert_eq!(r["code"], 1002, "{patterns:?} {channel}: {r}");
            let (status, _) = s
                .get(&format!("/api/channels/{channel}/messages"), Some(&token))
                .await;
            assert_eq!(status, 403, "{patterns:?} {channel}");
        }
    }
    s.stop().await;
}
