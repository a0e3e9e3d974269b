//! Metrics (issue 10.4): after a scripted workload the counters moved by
//! exactly what it did, every metric has HELP text, and the Grafana
//! dashboard and alert rules under deploy/ name only metrics the server
//! exports.

use std::collections::BTreeSet;

use serde_json::json;

use crate::util::{metric_in, scrape, user_token, write_config, Proc, API_KEY};

/// Every sample name the exposition can hold: samples present, and those of
/// families declared without samples yet (a labelled counter before its
/// first increment).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        } else if !line.starts_with('#') {
            if let Some(name) = line.split([' ', '{']).next().filter(|n| !n.is_empty()) {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

fn named_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("herald_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        out.insert(text[start..end].to_owned());
        i = end;
    }
    out
}

#[tokio::test]
async fn counters_move_by_what_the_workload_did_and_deploy_names_only_real_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[namespaces]]\nname = \"live\"\nsubscribe = \"public\"\n",
    );
    let server = Proc::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let origin = server.origin.clone();
    let http = crate::util::http();
    let before = scrape(&http, &origin).await;

    // Two subscribers on live:1, one on live:2; one user connected with a token.
    let mut subs = Vec::new();
    for channel in ["live:1", "live:1", "live:2"] {
        let mut c = herald_client::Client::open(&server.ws_url()).await.unwrap();
        c.connect(None).await.unwrap();
        assert_eq!(
            c.subscribe(channel, None).await.unwrap()["type"],
            "subscribed"
        );
        subs.push(c);
    }
    let mut user = herald_client::Client::open(&server.ws_url()).await.unwrap();
    assert_eq!(
        user.connect(Some(&user_token("m-user"))).await.unwrap()["type"],
        "connected"
    );

    // 5 publishes to live:1, 2 to live:2, 3 notifications to m-user.
    for (path, n) in [
        ("/api/channels/live:1/messages", 5),
        ("/api/channels/live:2/messages", 2),
        ("/api/users/m-user/notifications", 3),
    ] {
        for i in 0..n {
            let r = http
                .post(format!("{origin}{path}"))
                .bearer_auth(API_KEY)
                .json(&json!({"i": i}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    // Every delivery arrived before we look.
    for (c, n) in subs.iter_mut().zip([5, 5, 2]) {
        for _ in 0..n {
            c.next_push().await.unwrap();
        }
    }
    for _ in 0..3 {
        assert_eq!(user.next_push().await.unwrap()["type"], "notification");
    }

    let after = scrape(&http, &origin).await;
    let moved = |name: &str| metric_in(&after, name) - metric_in(&before, name);
    assert_eq!(moved("herald_messages_published_total"), 10.0);
    // 5 × 2 subscribers + 2 × 1 + 3 notifications × 1 connection.
    assert_eq!(moved("herald_messages_delivered_total"), 15.0);
    assert_eq!(moved("herald_messages_dropped_total"), 0.0);
    assert!(moved("herald_publish_to_send_seconds_count") >= 1.0);
    assert_eq!(metric_in(&after, "herald_connections"), 4.0);
    // Three channel subscriptions and one inbox listener.
    assert_eq!(metric_in(&after, "herald_subscriptions"), 4.0);
    assert_eq!(moved("herald_engine_errors_total"), 0.0);

    // Every family has HELP text.
    for line in after.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            after
                .lines()
                .any(|l| l.starts_with(&format!("# HELP {name} ")) && l.len() > 10 + name.len()),
            "{name} has no HELP text"
        );
    }

    // The dashboard and the alert rules name only exported metrics.
    let have = exported(&after);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
    for file in ["grafana/herald.json", "prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let named = named_metrics(&text);
        assert!(!named.is_empty(), "{file} names no metric");
        for name in named {
            assert!(
                have.contains(&name),
                "{file} uses {name}, which /metrics does not export"
            );
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/grafana/herald.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 6));
    drop(subs);
}
