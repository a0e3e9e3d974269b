//! Issue 3, tried for real against a running server: forged and misused
//! tokens, authorization boundaries, limits that only show over real sockets
//! (half-open sockets, trickled bodies, long-poll waiters), TLS, and a battery
//! of bad input after which the server must still serve a healthy client.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use herald_server::auth::unix_now;
use herald_server::config::TlsConfig;

use crate::util::*;

const RSA_PRIVATE: &str = include_str!("fixtures/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("fixtures/rsa_public.pem");
const OTHER_RSA_PRIVATE: &str = include_str!("fixtures/other_rsa_private.pem");

/// Claims for `user`, valid for an hour, with `extra` merged in (a `null`
/// value removes a claim).
fn claims(user: &str, extra: Value) -> Value {
    let mut c = json!({"sub": user, "exp": unix_now() + 3600});
    for (k, v) in extra.as_object().into_iter().flatten() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(secret), claims)
}

fn b64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A token with `"alg":"none"` and no signature: the classic forgery.
fn unsigned(claims: &Value) -> String {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{}.", b64url(claims.to_string().as_bytes()))
}

/// `token` with its payload replaced by `claims` and the signature kept.
fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        b64url(claims.to_string().as_bytes()),
        parts[2]
    )
}

fn pem_file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

/// The connect is refused with `code` and then 4001, and the same token is
/// refused by the polling API; a 1001 says nothing about why.
async fn refused(s: &TestServer, token: &str, code: u16) {
    let mut c = s.open().await;
    let reply = c.connect(Some(token)).await.unwrap();
    assert_eq!(reply["type"], "error", "{token}: {reply}");
    assert_eq!(reply["code"], code, "{token}: {reply}");
    if code == 1001 {
        assert_eq!(reply["message"], "invalid token", "no detail for attackers");
    }
    assert_eq!(c.until_closed().await.unwrap().1, Some(4001), "{token}");
    let (status, body) = s.get("/api/channels/chat:1/messages", Some(token)).await;
    assert_eq!(status, 401, "{token}: {body}");
    assert_eq!(body["error"]["code"], code, "{token}: {body}");
}

async fn accepted(s: &TestServer, token: &str, user: &str) {
    let mut c = s.open().await;
    let reply = c.connect(Some(token)).await.unwrap();
    assert_eq!(reply["type"], "connected", "{reply}");
    assert_eq!(reply["user"], user);
    let (status, body) = s.get("/api/notifications", Some(token)).await;
    assert_eq!(
        (status, body["userId"].as_str()),
        (200, Some(user)),
        "{body}"
    );
}

#[tokio::test]
async fn rs256_tokens_verify_with_a_pem_key_and_forgeries_are_refused() {
    let public = pem_file(RSA_PUBLIC);
    let path = public.path().to_owned();
    let s = TestServer::with(|c| {
        c.auth.hmac_secret = None;
        c.auth.public_key_file = Some(path);
    })
    .await;
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let good = sign(Algorithm::RS256, &key, &claims("ria", json!({})));
    accepted(&s, &good, "ria").await;

    let other = EncodingKey::from_rsa_pem(OTHER_RSA_PRIVATE.as_bytes()).unwrap();
    let forged = [
        // Signed with somebody else's key.
        sign(Algorithm::RS256, &other, &claims("ria", json!({}))),
        // Key confusion: HS256 keyed with the server's *public* key.
        hs256(RSA_PUBLIC.as_bytes(), &claims("ria", json!({}))),
        // Another algorithm of the same family is still not the pinned one.
        sign(Algorithm::RS512, &key, &claims("ria", json!({}))),
        unsigned(&claims("ria", json!({}))),
        // A valid signature over different claims.
        tampered(&good, &claims("admin", json!({"role": "admin"}))),
        good[..good.len() - 6].to_owned(),
        good.rsplit_once('.').unwrap().0.to_owned(),
        format!("{good}.x"),
        "eyJhbGciOiJSUzI1NiJ9.e30.AAAA".to_owned(),
        "garbage".to_owned(),
    ];
    for token in &forged {
        refused(&s, token, 1001).await;
    }
    let expired = sign(
        Algorithm::RS256,
        &key,
        &claims("ria", json!({"exp": unix_now() - 60})),
    );
    refused(&s, &expired, 1009).await;
}

#[tokio::test]
async fn es256_tokens_verify_with_a_pem_key_and_forgeries_are_refused() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public_pem = pair.public_key_pem();
    let public = pem_file(&public_pem);
    let path = public.path().to_owned();
    let s = TestServer::with(|c| {
        c.auth.hmac_secret = None;
        c.auth.public_key_file = Some(path);
    })
    .await;
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    accepted(
        &s,
        &sign(Algorithm::ES256, &key, &claims("eve", json!({}))),
        "eve",
    )
    .await;

    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let stranger = EncodingKey::from_ec_pem(stranger.serialize_pem().as_bytes()).unwrap();
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    for token in [
        sign(Algorithm::ES256, &stranger, &claims("eve", json!({}))),
        hs256(public_pem.as_bytes(), &claims("eve", json!({}))),
        sign(Algorithm::RS256, &rsa, &claims("eve", json!({}))),
        hs256(SECRET.as_bytes(), &claims("eve", json!({}))),
        unsigned(&claims("eve", json!({}))),
    ] {
        refused(&s, &token, 1001).await;
    }
}

#[tokio::test]
async fn hs256_refuses_alg_none_truncation_and_other_secrets() {
    let s = TestServer::start().await;
    let good = hs256(SECRET.as_bytes(), &claims("hal", json!({})));
    accepted(&s, &good, "hal").await;
    for token in [
        unsigned(&claims("hal", json!({}))),
        hs256(b"another-secret-0123456789", &claims("hal", json!({}))),
        tampered(&good, &claims("hal", json!({"role": "admin"}))),
        good[..good.len() - 1].to_owned(),
        good[..good.len() / 2].to_owned(),
        String::new(),
        "..".to_owned(),
        "é.é.é".to_owned(),
        // A token without `sub`, and one whose `sub` is not a user id.
        hs256(SECRET.as_bytes(), &claims("x", json!({"sub": null}))),
        hs256(SECRET.as_bytes(), &claims("a\u{0}b", json!({}))),
        // `exp` is required unless auth.allow_no_exp.
        hs256(SECRET.as_bytes(), &claims("hal", json!({"exp": null}))),
    ] {
        refused(&s, &token, 1001).await;
    }
    let lenient = TestServer::with(|c| c.auth.allow_no_exp = true).await;
    let no_exp = hs256(SECRET.as_bytes(), &claims("hal", json!({"exp": null})));
    accepted(&lenient, &no_exp, "hal").await;
}

#[tokio::test]
async fn nbf_iss_and_aud_are_checked_where_configured() {
    let s = TestServer::with(|c| {
        c.auth.issuer = Some("https://auth.venue.example".into());
        c.auth.audience = Some("herald".into());
    })
    .await;
    let ok = json!({"iss": "https://auth.venue.example", "aud": "herald"});
    let with = |extra: Value| {
        let mut c = claims("nia", ok.clone());
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        hs256(SECRET.as_bytes(), &c)
    };
    accepted(&s, &with(json!({})), "nia").await;
    // Inside the 5 s leeway a clock a little ahead is forgiven.
    accepted(&s, &with(json!({"nbf": unix_now() + 2})), "nia").await;
    for token in [
        with(json!({"iss": null})),
        with(json!({"iss": "https://evil.example"})),
        with(json!({"aud": null})),
        with(json!({"aud": "someone-else"})),
        with(json!({"nbf": unix_now() + 600})),
    ] {
        refused(&s, &token, 1001).await;
    }
    // Where nothing is configured, iss and aud are not checked (nbf still is).
    let plain = TestServer::start().await;
    let foreign = claims("nia", json!({"iss": "anyone", "aud": "anything"}));
    accepted(&plain, &hs256(SECRET.as_bytes(), &foreign), "nia").await;
    let early = claims("nia", json!({"nbf": unix_now() + 600}));
    refused(&plain, &hs256(SECRET.as_bytes(), &early), 1001).await;
}

#[tokio::test]
async fn api_keys_and_client_tokens_never_substitute() {
    let s = TestServer::start().await;
    // An API key is not a client token, on the polling API either.
    let (status, body) = s.get("/api/channels/chat:1/messages", Some(API_KEY)).await;
    assert_eq!((status, body["error"]["code"].clone()), (401, json!(1001)));
    // Near misses of the API key are refused on the server API.
    let near = [
        &API_KEY[..API_KEY.len() - 1],
        &format!("{API_KEY}x"),
        &API_KEY.to_uppercase(),
        &token("u1", 60),
    ];
    for key in near {
        let r = s
            .http
            .post(s.url("/api/channels/chat:1/messages"))
            .bearer_auth(key)
            .json(&json!(1))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{key}");
    }
    let r = s
        .http
        .get(s.url("/api/websocket"))
        .header("authorization", format!("Basic {API_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn notifications_reach_only_their_user() {
    let s = TestServer::start().await;
    let mut alice = s.connected(Some("alice")).await;
    let mut bob = s.connected(Some("bob")).await;
    s.notify("alice", json!({"secret": "for alice"})).await;
    let push = alice.next_push().await.unwrap();
    assert_eq!(push["data"]["secret"], "for alice");
    // Bob's next frame is the answer to his ping, not Alice's notification.
    let pong = bob.request(json!({"type": "ping"})).await.unwrap();
    assert_eq!(pong["type"], "pong");
    assert!(
        matches!(
            tokio::time::timeout(Duration::from_millis(200), bob.next_frame()).await,
            Err(_) | Ok(Err(herald_client::Error::Timeout(_)))
        ),
        "bob received something"
    );
    // Inboxes are not channels: their keys can't be named in a subscribe.
    let reply = bob.subscribe("#alice", None).await.unwrap();
    assert_eq!(reply["code"], 1003, "{reply}");
}

/// Sends `request` and reads until the server closes, or (unless
/// `until_closed`) one whole response has arrived, or `within` passes.
/// Returns what arrived and whether the server closed.
async fn raw_exchange(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    request: &[u8],
    within: Duration,
    until_closed: bool,
) -> (String, bool) {
    // The server may close before taking it all (an oversized header); what
    // it answered is what counts.
    let _ = stream.write_all(request).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if !until_closed && whole_response(&text) {
            return (text, false);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (text, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (text, false),
        }
    }
}

fn whole_response(text: &str) -> bool {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|n| body.len() >= n)
}

async fn ws_next<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
) -> Value {
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a frame in time")
        .expect("socket open")
        .unwrap();
    serde_json::from_str(msg.to_text().unwrap()).unwrap()
}

#[tokio::test]
async fn half_open_sockets_are_closed_after_the_header_read_timeout() {
    let s = TestServer::with(|c| c.limits.header_read_timeout = Duration::from_millis(300)).await;
    let partial: [&[u8]; 4] = [
        b"",
        b"GET /health HTTP/1.1\r\nHost: x\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
        b"POS",
    ];
    // An upgraded WebSocket is no longer an HTTP request: the header timeout
    // must not touch it, however long it idles.
    let mut upgraded = s.connected(None).await;
    let started = tokio::time::Instant::now();
    for bytes in partial {
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        let (_, closed) = raw_exchange(&mut tcp, bytes, Duration::from_secs(5), true).await;
        assert!(closed, "{:?} was kept open", String::from_utf8_lossy(bytes));
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // An idle keep-alive connection is bounded the same way.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let (answer, closed) = raw_exchange(
        &mut tcp,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
        true,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "idle keep-alive connection was kept open");
    assert_eq!(s.get("/health", None).await.0, 200);
    assert!(started.elapsed() > Duration::from_millis(600));
    let pong = upgraded.request(json!({"type": "ping"})).await.unwrap();
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn trickled_request_bodies_get_408() {
    let s = TestServer::with(|c| c.limits.request_timeout = Duration::from_millis(300)).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /api/channels/chat:1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"a\":"
    );
    let (answer, _) = raw_exchange(&mut tcp, head.as_bytes(), Duration::from_secs(5), false).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(body.contains("\"code\":1000"), "{answer}");
    // Long polls are not cut short by the request timeout.
    let started = tokio::time::Instant::now();
    let (status, page) = s.get("/api/channels/chat:1/messages?wait=0.8", None).await;
    assert_eq!(status, 200, "{page}");
    assert!(started.elapsed() >= Duration::from_millis(700));
}

#[tokio::test]
async fn long_poll_waiters_are_bounded() {
    let s = Arc::new(TestServer::with(|c| c.limits.max_long_poll_waiters = 1).await);
    let holder = {
        let s = s.clone();
        tokio::spawn(async move { s.get("/api/channels/chat:1/messages?wait=20", None).await })
    };
    assert!(eventually(Duration::from_secs(5), || s.node.long_polls_held() == 1).await);
    // Past the bound a long poll answers at once, empty, instead of piling up.
    let started = tokio::time::Instant::now();
    let (status, page) = s.get("/api/channels/chat:1/messages?wait=20", None).await;
    assert_eq!(status, 200);
    assert_eq!(page["messages"], json!([]));
    assert!(started.elapsed() < Duration::from_secs(5));
    s.publish("chat:1", json!("wake")).await;
    let (status, page) = tokio::time::timeout(Duration::from_secs(10), holder)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (status, page["messages"][0]["data"].clone()),
        (200, json!("wake"))
    );
    assert!(eventually(Duration::from_secs(5), || s.node.long_polls_held() == 0).await);
}

/// A self-signed certificate for `localhost`, written to files, and a
/// connector that trusts exactly it.
struct SelfSigned {
    config: TlsConfig,
    connector: tokio_rustls::TlsConnector,
    _files: (tempfile::NamedTempFile, tempfile::NamedTempFile),
}

fn self_signed() -> SelfSigned {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = pem_file(&made.cert.pem());
    let key = pem_file(&made.signing_key.serialize_pem());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    SelfSigned {
        config: TlsConfig {
            cert_file: cert.path().to_owned(),
            key_file: key.path().to_owned(),
        },
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        _files: (cert, key),
    }
}

impl SelfSigned {
    async fn connect(
        &self,
        addr: std::net::SocketAddr,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        self.connector.connect(name, tcp).await.unwrap()
    }
}

#[tokio::test]
async fn tls_serves_https_and_wss_with_the_configured_certificate() {
    let tls = self_signed();
    let config = tls.config.clone();
    let s = TestServer::with(|c| c.tls = Some(config)).await;

    let mut https = tls.connect(s.addr).await;
    let (answer, _) = raw_exchange(
        &mut https,
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let stream = tls.connect(s.addr).await;
    let url = format!("wss://localhost:{}/ws", s.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let send = |v: Value| tokio_tungstenite::tungstenite::Message::text(v.to_string());
    ws.send(send(
        json!({"type": "connect", "id": 1, "token": token("tia", 60)}),
    ))
    .await
    .unwrap();
    assert_eq!(ws_next(&mut ws).await["type"], "connected");
    ws.send(send(
        json!({"type": "subscribe", "id": 2, "channel": "chat:tls"}),
    ))
    .await
    .unwrap();
    assert_eq!(ws_next(&mut ws).await["type"], "subscribed");

    let body = r#"{"over":"tls"}"#;
    let publish = format!(
        "POST /api/channels/chat:tls/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut https = tls.connect(s.addr).await;
    let (answer, _) = raw_exchange(
        &mut https,
        publish.as_bytes(),
        Duration::from_secs(5),
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let message = ws_next(&mut ws).await;
    assert_eq!(message["data"], json!({"over": "tls"}), "{message}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(s.addr).await.unwrap();
    let (answer, _) = raw_exchange(
        &mut plain,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
        true,
    )
    .await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn bad_tls_files_are_refused_naming_the_key() {
    let tls = self_signed();
    let mut config = base_config(std::env::temp_dir().as_path());
    config.tls = Some(TlsConfig {
        cert_file: "/nonexistent/cert.pem".into(),
        key_file: tls.config.key_file.clone(),
    });
    let err = herald_server::Server::bind(config.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tls.cert_file"), "{err}");
    config.tls = Some(TlsConfig {
        cert_file: tls.config.cert_file.clone(),
        key_file: tls.config.cert_file.clone(),
    });
    let err = herald_server::Server::bind(config).await.unwrap_err();
    assert!(err.to_string().contains("tls.key_file"), "{err}");
}

/// Sends `text` and expects an `error` frame with one of `codes`.
async fn expect_error(c: &mut herald_client::Client, text: &str, codes: &[u16]) {
    c.send_text(text).await.unwrap();
    let reply = c.next_frame().await.unwrap();
    assert_eq!(reply["type"], "error", "{text:?} -> {reply}");
    let code = reply["code"].as_u64().unwrap() as u16;
    assert!(codes.contains(&code), "{text:?} -> {reply}");
}

async fn malformed_and_mistyped_frames(s: &TestServer) {
    let mut c = s.connected(None).await;
    let nest = |field: &str| {
        format!(
            r#"{{"type":"subscribe","id":1,"{field}":{}{}}}"#,
            "[".repeat(1500),
            "]".repeat(1500)
        )
    };
    let deep_channel = nest("channel");
    let bad_json = [
        "{",
        "not json",
        "[]",
        "null",
        "42",
        "\"ping\"",
        "",
        " ",
        "{}",
        "{\"type\":",
        "\u{0}",
        &deep_channel,
    ];
    for text in bad_json {
        expect_error(&mut c, text, &[1000]).await;
    }
    // Deep nesting in an unknown field is skipped like any unknown field
    // (without recursing into it): the command is still what it says.
    let deep_unknown = nest("x").replace("subscribe", "ping");
    c.send_text(&deep_unknown).await.unwrap();
    assert_eq!(
        c.next_frame().await.unwrap(),
        json!({"type": "pong", "id": 1})
    );
    let wrong_types = [
        json!({"type": 5}),
        json!({"type": null}),
        json!({"type": ["ping"]}),
        json!({"type": "PING"}),
        json!({"type": "\u{0}"}),
        json!({"type": "subscribe", "channel": ["chat:1"]}),
        json!({"type": "subscribe", "channel": 5}),
        json!({"type": "subscribe", "channel": "chat:1", "since": 17}),
        json!({"type": "subscribe", "channel": "chat:1", "since": "e:-1"}),
        json!({"type": "ping", "id": "1"}),
        json!({"type": "ping", "id": -1}),
        json!({"type": "ping", "id": 1e300}),
        json!({"type": "ping", "id": {"n": 1}}),
        json!({"type": "connect", "token": 123}),
        json!({"type": "refresh"}),
        json!({"type": "publish", "channel": "chat:1"}),
    ];
    for frame in wrong_types {
        expect_error(&mut c, &frame.to_string(), &[1000]).await;
    }
    let long = "a".repeat(201);
    let bad_channels = [
        "",
        &long,
        "../etc/passwd",
        "..\\x",
        "a\u{0}b",
        "café",
        "a b",
        " chat",
        "chat:1/2",
        "#healthy",
        "\u{202e}x",
        "🎉",
        "chat:1\n",
        "chat:*",
    ];
    for name in bad_channels {
        for kind in ["subscribe", "unsubscribe"] {
            let frame = json!({"type": kind, "id": 9, "channel": name});
            expect_error(&mut c, &frame.to_string(), &[1003]).await;
        }
        let frame = json!({"type": "publish", "channel": name, "data": 1});
        expect_error(&mut c, &frame.to_string(), &[1003]).await;
    }
    // A lone surrogate is not valid JSON text.
    expect_error(
        &mut c,
        r#"{"type":"subscribe","channel":"\ud800"}"#,
        &[1000, 1003],
    )
    .await;
    // After all that (fewer strikes than the abuse threshold) it still works.
    let pong = c.request(json!({"type": "ping"})).await.unwrap();
    assert_eq!(pong["type"], "pong");
}

async fn oversized_frame(s: &TestServer) {
    let mut c = s.connected(None).await;
    c.send_text(&format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(5000)
    ))
    .await
    .unwrap();
    assert_eq!(c.until_closed().await.unwrap().1, Some(1009));
}

async fn binary_frames(s: &TestServer) {
    let mut c = s.connected(None).await;
    for bytes in [
        vec![0u8; 16],
        b"{\"type\":\"ping\"}".to_vec(),
        vec![0xff; 3000],
    ] {
        c.send_binary(bytes).await.unwrap();
        let reply = c.next_frame().await.unwrap();
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_u64()),
            (Some("error"), Some(1000))
        );
    }
    assert_eq!(
        c.request(json!({"type": "ping"})).await.unwrap()["type"],
        "pong"
    );
}

async fn command_flood(s: &TestServer) {
    let mut c = s.connected(None).await;
    for i in 0..400 {
        if c.send(&json!({"type": "ping", "id": i})).await.is_err() {
            break;
        }
    }
    let (disconnect, code) = c.until_closed().await.unwrap();
    assert_eq!(code, Some(4004));
    assert_eq!(disconnect.unwrap()["reconnect"], true);
}

/// Sockets that connect, start an upgrade and never finish it.
async fn half_open_sockets(s: &TestServer) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for i in 0..20 {
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        let partial = format!("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-{i}: ");
        tcp.write_all(partial.as_bytes()).await.unwrap();
        held.push(tcp);
    }
    held
}

async fn http_garbage(s: &TestServer) {
    let check = |what: String, status: u16, body: &Value, want: u16, code: u16| {
        assert_eq!(status, want, "{what}: {body}");
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
    };
    let big = format!("\"{}\"", "x".repeat(20_000));
    let (st, b) = s
        .post_raw(
            "/api/channels/chat:x/messages",
            "application/json",
            big.clone(),
        )
        .await;
    check("big publish".into(), st, &b, 413, 1006);
    let batch =
        format!(r#"{{"items":[{{"action":"broadcast","channel":"chat:x","data":{big}}}]}}"#);
    let (st, b) = s.post_raw("/api/batch", "application/json", batch).await;
    check("big batch".into(), st, &b, 413, 1006);
    let (st, b) = s
        .post_raw(
            "/api/channels/chat:x/messages",
            "application/json",
            "{\"a\":",
        )
        .await;
    check("truncated JSON".into(), st, &b, 400, 1000);
    let (st, b) = s
        .post_raw("/api/websocket", "application/json", "[1,2]")
        .await;
    check("array action".into(), st, &b, 400, 1000);
    let (st, b) = s
        .post_raw("/api/channels/chat:x/messages", "text/plain", "1")
        .await;
    check("text/plain".into(), st, &b, 415, 1000);
    for path in [
        "a%20b",
        "..%2F..%2Fetc",
        "caf%C3%A9",
        "a%00b",
        &"a".repeat(201),
        "%23healthy",
    ] {
        let (st, b) = s
            .post_raw(
                &format!("/api/channels/{path}/messages"),
                "application/json",
                "1",
            )
            .await;
        check(format!("publish to {path}"), st, &b, 400, 1003);
        let (st, b) = s.get(&format!("/api/channels/{path}/messages"), None).await;
        check(format!("poll {path}"), st, &b, 400, 1003);
    }
    let long_since = format!("since={}", "9".repeat(300));
    for query in [
        "since=garbage",
        "limit=abc",
        "wait=1e9",
        "since=e:%00",
        "since=%ff%fe",
        "limit=%ff",
        &long_since,
    ] {
        let (st, b) = s
            .get(&format!("/api/channels/chat:x/messages?{query}"), None)
            .await;
        check(format!("poll ?{query}"), st, &b, 400, 1000);
    }
    let r = s.http.get(s.url("/ws")).send().await.unwrap();
    assert_eq!(r.status(), 400, "an upgrade without its headers");
    // Not HTTP at all, and a header far past any sane size.
    let huge_header = format!("GET /health HTTP/1.1\r\nX: {}\r\n\r\n", "h".repeat(1 << 20));
    let garbage: [&[u8]; 3] = [
        b"\x00\xff\xfe\x16\x03 not http\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        huge_header.as_bytes(),
    ];
    for bytes in garbage {
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        let (answer, closed) = raw_exchange(&mut tcp, bytes, Duration::from_secs(5), true).await;
        assert!(closed, "{answer}");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_battery_of_bad_input_leaves_the_server_serving_everyone_else() {
    let s = Arc::new(
        TestServer::with(|c| {
            c.limits.max_frame_bytes = 4096;
            c.limits.max_message_bytes = 1024;
            c.limits.max_body_bytes = 8192;
            c.limits.header_read_timeout = Duration::from_secs(1);
        })
        .await,
    );
    let mut healthy = s.connected(Some("healthy")).await;
    let reply = healthy.subscribe("chat:live", None).await.unwrap();
    assert_eq!(reply["type"], "subscribed");

    const PUBLISHED: u64 = 60;
    let publisher = {
        let s = s.clone();
        tokio::spawn(async move {
            for n in 1..=PUBLISHED {
                s.publish("chat:live", json!({"n": n})).await;
                // Paced (not synchronising) so publishes overlap the attacks.
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    let half_open = half_open_sockets(&s).await;
    tokio::join!(
        malformed_and_mistyped_frames(&s),
        oversized_frame(&s),
        binary_frames(&s),
        command_flood(&s),
        http_garbage(&s),
    );
    publisher.await.unwrap();

    // The half-open sockets were closed by the server, not left hanging.
    for mut tcp in half_open {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }
    assert_eq!(s.get("/health", None).await.0, 200);
    for n in 1..=PUBLISHED {
        let push = healthy.next_push().await.unwrap();
        assert_eq!(push["data"]["n"], n, "{push}");
        assert_eq!(push["offset"], n, "{push}");
    }
    assert!(
        eventually(Duration::from_secs(5), || s.node.stats().connections == 1).await,
        "only the healthy subscriber is left: {:?}",
        s.node.stats()
    );
}
