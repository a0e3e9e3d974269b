//! The embedded engine keeps every answered publish across `kill -9` and
//! restarts, with the same epoch.

use std::time::Duration;

use serde_json::{json, Value};

use crate::util::*;

async fn history(http: &reqwest::Client, origin: &str, channel: &str) -> Value {
    http.get(format!(
        "{origin}/api/channels/{channel}/messages?limit=1000"
    ))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap()
}

/// POSTs `body` to the server API with the API key; the answer must be 200.
async fn post_api(http: &reqwest::Client, url: &str, body: &Value) -> Value {
    let r = http
        .post(url)
        .bearer_auth(API_KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.json().await.unwrap()
}

#[tokio::test]
async fn kill_9_loses_no_answered_publish() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[namespaces]]\nname = \"d\"\nsubscribe = \"public\"",
    );
    let config = config.to_str().unwrap().to_owned();
    let server = Proc::start(dir.path(), &["--config", &config]);
    let http = crate::util::http();
    // Publishers race each other; everything answered 200 must survive.
    let mut tasks = Vec::new();
    for p in 0..8 {
        let http = http.clone();
        let origin = server.origin.clone();
        tasks.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for i in 0..40 {
                let url = format!("{origin}/api/channels/d:1/messages");
                let body = post_api(&http, &url, &json!({"p": p, "i": i})).await;
                answered.push((
                    body["offset"].as_u64().unwrap(),
                    json!({"p": p, "i": i}),
                    body["cursor"].clone(),
                ));
            }
            answered
        }));
    }
    let items: Vec<Value> = (0..100)
        .map(|i| json!({"action": "notify", "userId": "u1", "data": {"b": i}}))
        .collect();
    let url = format!("{}/api/batch", server.origin);
    let batch = post_api(&http, &url, &json!({ "items": items })).await;
    assert_eq!(batch["results"].as_array().unwrap().len(), 100);
    let mut answered = Vec::new();
    for t in tasks {
        answered.extend(t.await.unwrap());
    }
    server.signal("-KILL");
    drop(server);

    let server = Proc::start(dir.path(), &["--config", &config]);
    let page = history(&http, &server.origin, "d:1").await;
    let kept: std::collections::HashMap<u64, Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["offset"].as_u64().unwrap(), m["data"].clone()))
        .collect();
    assert_eq!(kept.len(), 320);
    for (offset, data, cursor) in &answered {
        assert_eq!(
            kept.get(offset),
            Some(data),
            "answered publish {offset} survived kill -9"
        );
        assert_eq!(
            cursor.as_str().unwrap().split(':').next(),
            page["cursor"].as_str().unwrap().split(':').next(),
            "same epoch"
        );
    }
    // The inbox too.
    let token = String::from_utf8(
        herald(dir.path())
            .args(["token", "--user", "u1", "--config", &config])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let inbox: Value = http
        .get(format!("{}/api/notifications?limit=1000", server.origin))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(inbox["messages"].as_array().unwrap().len(), 100);
    assert_eq!(inbox["messages"][99]["data"], json!({"b": 99}));
    // And new publishes continue the offsets.
    let url = format!("{}/api/channels/d:1/messages", server.origin);
    let r = post_api(&http, &url, &json!("after")).await;
    assert_eq!(r["offset"], 321);
}

#[tokio::test]
async fn sigterm_flushes_and_a_restart_has_everything() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[namespaces]]\nname = \"d\"\nsubscribe = \"public\"",
    );
    let config = config.to_str().unwrap().to_owned();
    let mut server = Proc::start(dir.path(), &["--config", &config]);
    let http = crate::util::http();
    for i in 0..20 {
        let url = format!("{}/api/channels/d:2/messages", server.origin);
        post_api(&http, &url, &json!(i)).await;
    }
    server.signal("-TERM");
    assert!(server.wait_exit(Duration::from_secs(15)).success());
    let server = Proc::start(dir.path(), &["--config", &config]);
    let page = history(&http, &server.origin, "d:2").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 20);
    assert!(
        server.stderr().contains("connection_ceiling"),
        "the ceiling is logged at start"
    );
}
