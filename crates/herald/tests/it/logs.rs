//! Logs (issue 10.3): JSON lines with `--log-format json`, a span per
//! connection carrying its id and user, an access line per HTTP request, and
//! never a token, an API key or the HMAC secret — checked by grepping the log
//! of a run that used them all, valid and invalid.

use std::time::Duration;

use herald_server::auth::{sign_hs256, unix_now, Claims};
use serde_json::{json, Value};

use crate::util::{herald, write_config, Proc, API_KEY, SECRET};

fn token(user: &str, secret: &str) -> String {
    let claims = Claims {
        sub: user.into(),
        exp: Some(unix_now() + 3600),
        iat: None,
        role: None,
        channels: None,
    };
    sign_hs256(secret, &claims).unwrap()
}

#[tokio::test]
async fn json_logs_carry_spans_and_access_lines_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[namespaces]]\nname = \"live\"\nsubscribe = \"public\"\n",
    );
    let mut cmd = herald(dir.path());
    cmd.env("HERALD_LOG", "debug")
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config);
    let mut server = Proc::start_command(dir.path(), cmd);
    let origin = server.origin.clone();
    let http = crate::util::http();

    let good = token("log-user", SECRET);
    let forged = token("log-user", "not-the-secret-at-all-0123456789");
    let wrong_key = "wrong-api-key-0123456789";

    // Publishing with the API key, and with a wrong one.
    let r = http
        .post(format!("{origin}/api/channels/live:1/messages"))
        .bearer_auth(API_KEY)
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{origin}/api/channels/live:1/messages"))
        .bearer_auth(wrong_key)
        .json(&json!({"n": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Polling with a token in the header, and with one pasted into the URL.
    let r = http
        .get(format!("{origin}/api/notifications"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!(
            "{origin}/api/channels/live:1/messages?token={forged}"
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success() || r.status().is_client_error());
    // A socket with the good token, one with a forged one.
    let mut c = herald_client::Client::open(&server.ws_url()).await.unwrap();
    assert_eq!(c.connect(Some(&good)).await.unwrap()["type"], "connected");
    c.close().await;
    let mut c = herald_client::Client::open(&server.ws_url()).await.unwrap();
    let refused = c.connect(Some(&forged)).await;
    assert!(
        refused.is_err() || refused.as_ref().unwrap()["type"] == "error",
        "{refused:?}"
    );
    drop(c);

    server.signal("-TERM");
    server.wait_exit(Duration::from_secs(15));
    let log = server.stderr();

    for (what, secret) in [
        ("the API key", API_KEY),
        ("the wrong API key", wrong_key),
        ("the HMAC secret", SECRET),
        ("the token", good.as_str()),
        ("the forged token", forged.as_str()),
    ] {
        assert!(!log.contains(secret), "{what} appears in the log:\n{log}");
        // Nor its signature alone (a log that cut the token would still leak it).
        if let Some(signature) = secret.rsplit('.').next().filter(|s| s.len() > 20) {
            assert!(
                !log.contains(signature),
                "{what}'s signature appears in the log"
            );
        }
    }

    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let access = lines
        .iter()
        .find(|l| {
            l["target"] == "herald::access"
                && l["fields"]["path"] == "/api/channels/live:1/messages"
                && l["fields"]["status"] == 200
        })
        .unwrap_or_else(|| panic!("no access line for the publish:\n{log}"));
    assert_eq!(access["fields"]["method"], "POST");
    assert!(
        lines
            .iter()
            .any(|l| l["target"] == "herald::access" && l["fields"]["status"] == 401),
        "the refused publish is logged too"
    );
    let connected = lines
        .iter()
        .find(|l| l["fields"]["message"] == "connected")
        .unwrap_or_else(|| panic!("no connected line:\n{log}"));
    assert_eq!(connected["span"]["name"], "conn");
    assert_eq!(connected["span"]["user"], "log-user");
    assert!(connected["span"]["id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
}
