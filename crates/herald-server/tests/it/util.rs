//! Test helpers: a real server on an ephemeral loopback port, real clients.

use std::sync::Arc;
use std::time::Duration;

use herald_client::Client;
use herald_server::auth::{sign_hs256, unix_now, Claims};
use herald_server::config::{EngineKind, NamespaceConfig, SubscribeRule};
use herald_server::{Config, Node, Server};
use serde_json::Value;

pub const SECRET: &str = "test-secret-0123456789";
pub const API_KEY: &str = "test-api-key-123";

/// A server running in this process, stopped (gracefully) on `stop`.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub node: Arc<Node>,
    pub http: reqwest::Client,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: Arc<tempfile::TempDir>,
}

pub fn ns(name: &str, subscribe: SubscribeRule, client_publish: bool) -> NamespaceConfig {
    NamespaceConfig {
        name: name.into(),
        subscribe,
        history_size: None,
        history_ttl: None,
        client_publish,
        presence: false,
        join_leave: false,
    }
}

/// The configuration every test starts from: memory engine, a public `chat`
/// namespace with client publish, a `claim` namespace `priv`.
pub fn base_config(dir: &std::path::Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    c.auth.hmac_secret = Some(SECRET.into());
    c.auth.api_keys = vec![API_KEY.into()];
    c.auth.allow_anonymous = true;
    c.engine.kind = EngineKind::Memory;
    c.engine.path = dir.join("data");
    c.namespaces = vec![
        ns("chat", SubscribeRule::Public, true),
        ns("priv", SubscribeRule::Claim, false),
    ];
    c
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(edit: impl FnOnce(&mut Config)) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::in_dir(dir, edit).await
    }

    /// Starts a server whose data lives in `dir` (reuse it to test restarts).
    pub async fn in_dir(dir: Arc<tempfile::TempDir>, edit: impl FnOnce(&mut Config)) -> Self {
        let mut config = base_config(dir.path());
        edit(&mut config);
        let server = Server::bind(config).await.expect("server binds");
        let addr = server.local_addr();
        let node = server.node().clone();
        let task = tokio::spawn(server.run());
        herald_server::outbound::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            // Shorter than the server's idle bound (limits.header_read_timeout),
            // so a pooled connection is never reused just as the server closes it.
            .pool_idle_timeout(Duration::from_millis(250))
            .build()
            .unwrap();
        Self {
            addr,
            node,
            http,
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// An open socket, not yet connected.
    pub async fn open(&self) -> Client {
        Client::open(&self.ws_url()).await.expect("websocket opens")
    }

    /// A socket connected as `user` (with a token) or anonymously.
    pub async fn connected(&self, user: Option<&str>) -> Client {
        let mut c = self.open().await;
        let token = user.map(|u| token(u, 3600));
        let reply = c.connect(token.as_deref()).await.unwrap();
        assert_eq!(reply["type"], "connected", "{reply}");
        c
    }

    /// Publishes through the HTTP API; returns the answer.
    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        let r = self
            .http
            .post(self.url(&format!("/api/channels/{channel}/messages")))
            .bearer_auth(API_KEY)
            .json(&data)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "publish to {channel}");
        r.json().await.unwrap()
    }

    pub async fn notify(&self, user: &str, data: Value) -> Value {
        let r = self
            .http
            .post(self.url(&format!("/api/users/{user}/notifications")))
            .bearer_auth(API_KEY)
            .json(&data)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// GET with an optional bearer credential; returns status and JSON body.
    pub async fn get(&self, path: &str, bearer: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{path}: body is not JSON: {text}")),
        )
    }

    /// POST raw bytes with a content type and the API key; returns status and JSON body.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{path}: body is not JSON: {text}")),
        )
    }

    /// Graceful shutdown; waits for the server task.
    pub async fn stop(mut self) {
        self.node.begin_shutdown();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("server stops")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.node.begin_shutdown();
    }
}

/// A token for `user` valid for `ttl_secs` (negative: already expired).
pub fn token(user: &str, ttl_secs: i64) -> String {
    token_with(user, ttl_secs, None, None)
}

pub fn token_with(
    user: &str,
    ttl_secs: i64,
    role: Option<&str>,
    channels: Option<Vec<&str>>,
) -> String {
    let claims = Claims {
        sub: user.into(),
        exp: Some((unix_now() as i64 + ttl_secs) as u64),
        iat: None,
        role: role.map(str::to_owned),
        channels: channels.map(|c| c.into_iter().map(str::to_owned).collect()),
    };
    sign_hs256(SECRET, &claims).unwrap()
}

/// Polls `check` until it is true or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}
