//! Dev mode, `config`, `token`, `publish`, `notify`, and graceful shutdown.

use std::time::Duration;

use herald_client::Client;
use serde_json::json;

use crate::util::*;

#[tokio::test]
async fn a_bare_serve_is_dev_mode_and_the_cli_works_against_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Proc::start(dir.path(), &["--port", "0"]);
    assert!(
        server.origin.starts_with("http://127.0.0.1:"),
        "loopback only: {}",
        server.origin
    );
    let stderr = server.stderr();
    assert!(stderr.contains("dev mode"), "{stderr}");
    let env = std::fs::read_to_string(dir.path().join("herald-data/dev.env")).unwrap();
    let key = env
        .lines()
        .find_map(|l| l.strip_prefix("HERALD_AUTH_API_KEYS="))
        .unwrap()
        .to_owned();
    assert!(stderr.contains(&key), "the generated key is printed once");

    // Dev mode lets a demo name its user without a token and publish anywhere.
    let mut alice = Client::open(&server.ws_url()).await.unwrap();
    let reply = alice
        .request(json!({"type": "connect", "user": "alice"}))
        .await
        .unwrap();
    assert_eq!(reply["user"], "alice");
    alice.subscribe("venue:1", None).await.unwrap();

    // `herald token` signs with the dev secret it finds in herald-data/dev.env.
    let out = herald(dir.path())
        .args(["token", "--user", "bob", "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut bob = Client::open(&server.ws_url()).await.unwrap();
    assert_eq!(bob.connect(Some(&token)).await.unwrap()["user"], "bob");

    // `herald publish` and `herald notify` go through the HTTP API with the dev key.
    let out = herald(dir.path())
        .args([
            "publish",
            "venue:1",
            r#"{"name":"Bar"}"#,
            "--url",
            &server.origin,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (answer["ok"].clone(), answer["offset"].clone()),
        (json!(true), json!(1))
    );
    assert_eq!(
        alice.next_push().await.unwrap()["data"],
        json!({"name": "Bar"})
    );
    let out = herald(dir.path())
        .args([
            "notify",
            "alice",
            r#"{"title":"hi"}"#,
            "--url",
            &server.origin,
            "--api-key",
            &key,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = alice.next_push().await.unwrap();
    assert_eq!(
        (n["type"].clone(), n["data"].clone()),
        (json!("notification"), json!({"title": "hi"}))
    );
    let out = herald(dir.path())
        .args(["publish", "venue:1", "not json", "--url", &server.origin])
        .output()
        .unwrap();
    assert!(!out.status.success());

    // SIGTERM: every client is told to reconnect, the process exits 0.
    server.signal("-TERM");
    let (disconnect, code) = alice.until_closed().await.unwrap();
    assert_eq!(disconnect.unwrap()["code"], 4000);
    assert_eq!(code, Some(4000));
    assert!(server.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn config_prints_the_effective_settings_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "");
    let out = herald(dir.path())
        .args(["config", "--config", path.to_str().unwrap()])
        .env("HERALD_LIMITS_BURST", "7")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("burst = 7"), "env beats file:\n{text}");
    assert!(
        !text.contains(SECRET) && !text.contains(API_KEY),
        "secrets masked:\n{text}"
    );
    assert!(text.contains("********"));
    let out = herald(dir.path())
        .args([
            "config",
            "--config",
            path.to_str().unwrap(),
            "--port",
            "9999",
        ])
        .env("HERALD_PORT", "7777")
        .output()
        .unwrap();
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("listen = \"127.0.0.1:9999\""),
        "flags beat env"
    );
}

#[test]
fn a_bad_config_names_the_key_and_exits_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, key) in [
        ("[limits]\nmax_connections = -1", "limits.max_connections"),
        (
            "[heartbeat]\nping_interval = \"often\"",
            "heartbeat.ping_interval",
        ),
        ("bogus = 1", "bogus"),
    ] {
        // Sections in `extra` come after the top-level keys; the [auth] etc. that follow still parse.
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, format!("{extra}\n")).unwrap();
        let out = herald(dir.path())
            .args(["serve", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{extra:?}: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    }
    let out = herald(dir.path())
        .args(["serve", "--listen", "0.0.0.0:0", "--engine", "memory"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "dev mode never binds a public address"
    );
    let path = dir.path().join("public.toml");
    std::fs::write(
        &path,
        "listen = \"0.0.0.0:0\"\n[auth]\nallow_anonymous = true\n",
    )
    .unwrap();
    let out = herald(dir.path())
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "no public bind without secrets");
    assert!(String::from_utf8_lossy(&out.stderr).contains("api_keys"));
}

/// docs/configuration.md is what `herald config --reference` prints: the
/// reference is generated from the config types, and a stale copy fails here.
#[test]
fn the_configuration_reference_in_docs_is_current() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald(dir.path())
        .args(["config", "--reference"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.md"
    ))
    .unwrap();
    assert!(
        generated == committed,
        "docs/configuration.md is stale: run `cargo run -p herald-realtime -- config --reference > docs/configuration.md`"
    );
}

/// `herald config --example` prints a configuration `herald serve` accepts.
#[test]
fn the_example_configuration_is_accepted_by_serve() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald(dir.path())
        .args(["config", "--example"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let example = dir.path().join("example.toml");
    std::fs::write(&example, &out.stdout).unwrap();
    let check = herald(dir.path())
        .args(["config", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // And it serves (on a free port instead of the example's 8080).
    let mut server = Proc::start(
        dir.path(),
        &[
            "--config",
            example.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    server.signal("-TERM");
    assert!(server.wait_exit(Duration::from_secs(15)).success());
}
