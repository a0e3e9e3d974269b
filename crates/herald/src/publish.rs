//! `herald publish` and `herald notify`: one publish through the HTTP API,
//! exactly once even when it has to be retried.
//!
//! Each run picks a random idempotency key and sends it with every attempt.
//! An answer that leaves the outcome unknown (408, 503, a lost connection, a
//! timeout) is retried a few times with backoff under that same key, so the
//! server answers the original publish if the first attempt landed after all
//! (SPEC §5). 429 is retried too, after its `Retry-After`.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};

use crate::cli::ApiArgs;

/// Attempts in all, the first included.
const ATTEMPTS: u32 = 4;
/// Wait before the first retry; doubled for each one after it.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between attempts, whatever `Retry-After` says.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// One attempt's bound: the server's own default `request_timeout` is 30 s
/// for the body and as much for the store, so give it both.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(65);

/// What to publish to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// `herald publish <channel>`.
    Channel(&'a str),
    /// `herald notify <user>`.
    User(&'a str),
}

/// Publishes `json` (text given on the command line) and prints the answer.
pub(crate) async fn run(api: &ApiArgs, target: Target<'_>, json: &str) -> Result<()> {
    let data: Value = serde_json::from_str(json).context("the data argument is not valid JSON")?;
    let key = api_key(api)?;
    let (url, body) = request(&api.url, target, data)?;
    let idempotency_key = herald_server::ids::random_token(32);
    let client = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .build()?;
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let outcome = client
            .post(url.clone())
            .bearer_auth(&key)
            .header("Idempotency-Key", &idempotency_key)
            .json(&body)
            .send()
            .await;
        let last = attempt == ATTEMPTS;
        let wait = match outcome {
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let text = response.text().await.unwrap_or_default();
                if status.is_success() {
                    println!("{text}");
                    return Ok(());
                }
                if !retryable(status) || last {
                    bail!("{status}: {text}");
                }
                eprintln!("herald: {status}: {text}; retrying with the same idempotency key");
                retry_after.unwrap_or(backoff)
            }
            Err(e) if last => return Err(e).with_context(|| format!("cannot reach {url}")),
            Err(e) => {
                eprintln!("herald: {url}: {e}; retrying with the same idempotency key");
                backoff
            }
        };
        tokio::time::sleep(wait.min(MAX_BACKOFF)).await;
        backoff = backoff.saturating_mul(2);
    }
    unreachable!("the last attempt returns")
}

/// Answers whose outcome is unknown or that ask to come back later.
fn retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::REQUEST_TIMEOUT
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::TOO_MANY_REQUESTS
    )
}

fn api_key(api: &ApiArgs) -> Result<String> {
    match &api.api_key {
        Some(k) => Ok(k.clone()),
        None => crate::dev::read_env(&api.data_dir)
            .and_then(|env| {
                env.get("HERALD_AUTH_API_KEYS")
                    .and_then(|k| k.split(',').next().map(str::to_owned))
            })
            .context("no API key: pass --api-key or set HERALD_API_KEY"),
    }
}

/// The URL and body for `target`. Names go into the path as percent-encoded
/// segments (a user id may hold spaces, `/`, `?` or `#`). `.` and `..` are
/// valid names but no HTTP client sends them as path segments (URL parsing
/// removes them, encoded or not), so those go by name in the body of the
/// seed's `POST /api/websocket` instead.
fn request(base: &str, target: Target<'_>, data: Value) -> Result<(Url, Value)> {
    let (name, dot_body) = match target {
        Target::Channel(c) => (
            c,
            json!({"action": "broadcast", "channel": c, "data": data}),
        ),
        Target::User(u) => (u, json!({"action": "notify", "userId": u, "data": data})),
    };
    if name == "." || name == ".." {
        return Ok((endpoint(base, &["api", "websocket"])?, dot_body));
    }
    let segments = match target {
        Target::Channel(c) => ["api", "channels", c, "messages"],
        Target::User(u) => ["api", "users", u, "notifications"],
    };
    Ok((endpoint(base, &segments)?, data))
}

/// `base` (any path it has kept, e.g. behind a proxy) plus `segments`, each
/// percent-encoded, `/` included.
fn endpoint(base: &str, segments: &[&str]) -> Result<Url> {
    let mut url = Url::parse(base).with_context(|| format!("--url {base:?} is not a URL"))?;
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| anyhow!("--url {base:?} cannot have a path"))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_encoded_path_segments() {
        let (url, body) = request(
            "http://127.0.0.1:8080/",
            Target::User("a b/c?d#e%"),
            json!(1),
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8080/api/users/a%20b%2Fc%3Fd%23e%25/notifications"
        );
        assert_eq!(body, json!(1));
        let (url, _) = request("https://h/herald", Target::Channel("venue:42"), json!(1)).unwrap();
        assert_eq!(
            url.as_str(),
            "https://h/herald/api/channels/venue:42/messages"
        );
    }

    #[test]
    fn dot_names_travel_in_the_body() {
        let (url, body) = request("http://h", Target::Channel(".."), json!({"x": 1})).unwrap();
        assert_eq!(url.as_str(), "http://h/api/websocket");
        assert_eq!(
            body,
            json!({"action": "broadcast", "channel": "..", "data": {"x": 1}})
        );
        let (_, body) = request("http://h", Target::User("."), json!(2)).unwrap();
        assert_eq!(body["userId"], ".");
    }
}
