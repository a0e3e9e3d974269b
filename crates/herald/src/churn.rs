//! `herald bench presence`: join/leave rates (SPEC §11). `--clients`
//! churners each subscribe to one channel and unsubscribe again, over and
//! over, for `--duration`; `--watchers` passive clients stay subscribed
//! throughout and count the `join` and `leave` frames they get. Reported:
//! joins/s and leaves/s, the `subscribe` and `unsubscribe` round trips
//! (p50/p99), the frames the watchers got against what they should have
//! (with `--join-leave`, every watcher must see every join and leave of
//! every churner; without it, none), the presence entries left once the
//! churn stops (the watchers' own, no ghosts), and the server's CPU per
//! join or leave.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use herald_client::Client;
use serde_json::json;
use tokio::sync::watch;

use crate::bench::{cpu_time, join, lean_receive, percentile, Common, MAX_SUBSCRIBERS};

/// The scenario's knobs.
pub(crate) struct Churn {
    pub clients: usize,
    pub watchers: usize,
    /// Subscribe/unsubscribe cycles per second per client; 0: as fast as answered.
    pub rate: u32,
    pub join_leave: bool,
    pub run_for: Duration,
    pub token: Option<String>,
}

/// Most watchers: each join or leave is one frame to each of them.
pub(crate) const MAX_WATCHERS: usize = 1000;

/// A `join` or `leave` push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Join,
    Leave,
}

/// The kind of a `join`/`leave` frame and the client id in its entry,
/// found without parsing the frame: `{"type":"join","channel":C,"info":
/// {"client":"<id>",…}}`. Channel names hold no quotes, so the first
/// `"client":"` is the entry's.
fn presence_event(frame: &str) -> Option<(Event, &str)> {
    let event = if frame.starts_with(r#"{"type":"join""#) {
        Event::Join
    } else if frame.starts_with(r#"{"type":"leave""#) {
        Event::Leave
    } else {
        return None;
    };
    let start = frame.find(r#""client":""#)? + 10;
    let rest = &frame[start..];
    Some((event, &rest[..rest.find('"')?]))
}

/// The `id` of a reply (`{"type":T,"id":N,…}`) and whether it is an error.
fn reply_id(frame: &str) -> Option<(u64, bool)> {
    let rest = frame.strip_prefix(r#"{"type":""#)?;
    let (kind, rest) = rest.split_once("\",")?;
    let digits = rest.strip_prefix(r#""id":"#)?;
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    Some((digits[..end].parse().ok()?, kind == "error"))
}

/// What one watcher saw of the churners' entries.
#[derive(Debug, Default)]
struct Seen {
    joins: u64,
    leaves: u64,
    /// A join of a client already present, or a leave of one absent.
    misordered: u64,
    present: HashMap<String, bool>,
}

impl Seen {
    fn take(&mut self, event: Event, client: &str) {
        let is_join = event == Event::Join;
        match event {
            Event::Join => self.joins += 1,
            Event::Leave => self.leaves += 1,
        }
        if self.present.get(client).copied().unwrap_or(false) == is_join {
            self.misordered += 1;
        }
        match self.present.get_mut(client) {
            Some(p) => *p = is_join,
            None => {
                self.present.insert(client.to_owned(), is_join);
            }
        }
    }
}

/// One churner's round trips (µs) and the joins and leaves it made.
#[derive(Default)]
struct Made {
    subscribe: Vec<u64>,
    unsubscribe: Vec<u64>,
}

async fn connect(ws_url: &str, token: Option<&str>, user: &str) -> Result<(Client, String)> {
    let mut c = Client::open(ws_url).await?;
    c.timeout = Duration::from_secs(30);
    let connect = match token {
        Some(t) => json!({"type": "connect", "token": t}),
        None => json!({"type": "connect", "user": user}),
    };
    let reply = c.request(connect).await?;
    if reply["type"] != "connected" {
        bail!("connect refused: {reply}");
    }
    let id = reply["client"]
        .as_str()
        .context("`connected` without a client id")?
        .to_owned();
    Ok((c, id))
}

/// Sends `command` (which carries `id`) and waits for its reply, dropping
/// the `join`/`leave` frames of the others on the way; the reply's round
/// trip in µs.
async fn round_trip(c: &mut Client, id: u64, command: &str, expect: &str) -> Result<u64> {
    let t = Instant::now();
    c.send_text(command).await?;
    loop {
        let frame = c.next_raw().await?;
        match reply_id(&frame) {
            Some((n, false)) if n == id => {
                if !frame.starts_with(expect) {
                    bail!("unexpected reply: {frame}");
                }
                return Ok(t.elapsed().as_micros() as u64);
            }
            Some((n, true)) if n == id => {
                let hint = if frame.contains("\"code\":1004") {
                    " (rate-limited: raise limits.commands_per_second and limits.burst, or pass --rate)"
                } else {
                    ""
                };
                bail!("refused: {frame}{hint}");
            }
            _ => {}
        }
    }
}

async fn churner(
    mut c: Client,
    channel: String,
    rate: u32,
    mut go: watch::Receiver<bool>,
    deadline: Arc<std::sync::OnceLock<Instant>>,
) -> Result<Made> {
    go.wait_for(|g| *g).await?;
    let deadline = *deadline.get().context("no deadline")?;
    let mut made = Made::default();
    let mut tick = (rate > 0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut id = 0u64;
    while Instant::now() < deadline {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        id += 1;
        let sub = format!(r#"{{"type":"subscribe","id":{id},"channel":"{channel}"}}"#);
        let rtt = round_trip(&mut c, id, &sub, r#"{"type":"subscribed""#)
            .await
            .context("subscribe")?;
        made.subscribe.push(rtt);
        id += 1;
        let unsub = format!(r#"{{"type":"unsubscribe","id":{id},"channel":"{channel}"}}"#);
        let rtt = round_trip(&mut c, id, &unsub, r#"{"type":"unsubscribed""#)
            .await
            .context("unsubscribe")?;
        made.unsubscribe.push(rtt);
    }
    c.close().await;
    Ok(made)
}

/// `presence_stats` of `channel` from a fresh connection: `Some(entries)`,
/// or `None` where the namespace keeps no presence (1012).
async fn presence_entries(ws_url: &str, token: Option<&str>, channel: &str) -> Result<Option<u64>> {
    let (mut c, _) = connect(ws_url, token, "bench-control").await?;
    let reply = c
        .request(json!({"type": "presence_stats", "channel": channel}))
        .await?;
    c.close().await;
    match reply["type"].as_str() {
        Some("presence_stats") => Ok(reply["clients"].as_u64()),
        Some("error") if reply["code"] == 1012 => Ok(None),
        _ => bail!("presence_stats refused: {reply}"),
    }
}

pub(crate) async fn run(common: &Common, churn: Churn) -> Result<()> {
    let (k, w) = (churn.clients, churn.watchers);
    if k == 0 || k + w > MAX_SUBSCRIBERS {
        bail!("--clients must be at least 1, and --clients + --watchers at most {MAX_SUBSCRIBERS}");
    }
    if w > MAX_WATCHERS {
        bail!("--watchers must be at most {MAX_WATCHERS}");
    }
    if churn.join_leave && w == 0 {
        bail!("--join-leave needs at least one watcher to check");
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let ws_url = format!("{}/ws", common.url.replacen("http", "ws", 1));
    let token = churn.token.as_deref();
    let channel = common.channel.clone();

    // The churners connect first (not subscribed), so their ids are known
    // before any watcher counts.
    let mut opening = Vec::with_capacity(k);
    for i in 0..k {
        let (ws_url, token) = (ws_url.clone(), churn.token.clone());
        opening.push(tokio::spawn(async move {
            connect(&ws_url, token.as_deref(), &format!("churn-{i}")).await
        }));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut churners = Vec::with_capacity(k);
    let mut ids = HashSet::with_capacity(k);
    for o in opening {
        let (c, id) = o.await?.context("a churner could not connect")?;
        ids.insert(id);
        churners.push(c);
    }
    let ids = Arc::new(ids);

    let stop = tokio_util::sync::CancellationToken::new();
    let seen_total = Arc::new(AtomicU64::new(0));
    let mut watchers = Vec::with_capacity(w);
    for i in 0..w {
        let (c, _) = join(
            &common.url,
            common.protocol,
            &channel,
            token,
            &format!("watch-{i}"),
        )
        .await
        .context("a watcher could not subscribe")?;
        let tcp = c
            .into_tcp()
            .context("the bench reads plain TCP (no TLS) itself")?;
        let (stop, ids, seen_total) = (stop.clone(), ids.clone(), seen_total.clone());
        watchers.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            lean_receive(tcp, &stop, |text| {
                if let Some((event, client)) = presence_event(text) {
                    if ids.contains(client) {
                        seen.take(event, client);
                        seen_total.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .await?;
            Ok::<_, anyhow::Error>(seen)
        }));
    }
    let before = presence_entries(&ws_url, token, &channel).await?;
    if churn.join_leave && before.is_none() {
        bail!("--join-leave, but {channel}'s namespace keeps no presence (1012): set `join_leave = true` on it");
    }
    eprintln!("{k} churners connected, {w} watchers subscribed");

    let (go_tx, go) = watch::channel(false);
    let deadline = Arc::new(std::sync::OnceLock::new());
    let tasks: Vec<_> = churners
        .into_iter()
        .map(|c| {
            tokio::spawn(churner(
                c,
                channel.clone(),
                churn.rate,
                go.clone(),
                deadline.clone(),
            ))
        })
        .collect();
    let cpu_before = common.server_pid.and_then(cpu_time);
    let started = Instant::now();
    let _ = deadline.set(started + churn.run_for);
    go_tx.send_replace(true);
    let mut made = Made::default();
    let mut failed = 0usize;
    for t in tasks {
        match t.await? {
            Ok(m) => {
                made.subscribe.extend(m.subscribe);
                made.unsubscribe.extend(m.unsubscribe);
            }
            Err(e) => {
                failed += 1;
                eprintln!("churner failed: {e:#}");
            }
        }
    }
    let churned = started.elapsed().as_secs_f64();
    let (joins, leaves) = (made.subscribe.len() as u64, made.unsubscribe.len() as u64);
    // Joins and leaves still on their way to the watchers: wait for them
    // (or 10 s).
    let per_watcher = if churn.join_leave { joins + leaves } else { 0 };
    let expected = per_watcher * w as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while seen_total.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !churn.join_leave {
        // Nothing should come; give a stray frame the time to show.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu = cpu_before
        .zip(common.server_pid.and_then(cpu_time))
        .map(|(a, b)| b.saturating_sub(a));
    let after = presence_entries(&ws_url, token, &channel).await?;
    stop.cancel();
    let (mut got, mut misordered, mut short) = (0u64, 0u64, 0usize);
    for t in watchers {
        match t.await? {
            Ok(s) => {
                let n = s.joins + s.leaves;
                got += n;
                misordered += s.misordered;
                if s.joins != if churn.join_leave { joins } else { 0 }
                    || s.leaves != if churn.join_leave { leaves } else { 0 }
                {
                    short += 1;
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("watcher failed: {e:#}");
            }
        }
    }
    made.subscribe.sort_unstable();
    made.unsubscribe.sort_unstable();
    let ms = |v: &[u64], p| percentile(v, p) as f64 / 1000.0;
    let mode = match (before.is_some(), churn.join_leave) {
        (false, _) => "presence off",
        (true, false) => "presence on",
        (true, true) => "presence with join/leave",
    };
    let entries = match after {
        Some(n) => format!(", presence entries after {n} (expected {w})"),
        None => String::new(),
    };
    let cpu_note = cpu.map_or(String::new(), |c| {
        format!(
            ", server CPU {:.1} µs per join or leave ({:.0}% of a core)",
            c.as_secs_f64() * 1e6 / (joins + leaves).max(1) as f64,
            c.as_secs_f64() / started.elapsed().as_secs_f64() * 100.0
        )
    });
    let pace = if churn.rate == 0 {
        "as fast as answered".to_owned()
    } else {
        format!("{}/s each", churn.rate)
    };
    println!(
        "{k} clients subscribing and unsubscribing ({pace}, {mode}), {w} watchers: {:.0} joins/s, {:.0} leaves/s, subscribe p50 {:.2} ms p99 {:.2} ms, unsubscribe p50 {:.2} ms p99 {:.2} ms, watchers got {got}/{expected} join/leave frames ({misordered} out of order, {short} watchers short){entries}, failed {failed}{cpu_note}",
        joins as f64 / churned,
        leaves as f64 / churned,
        ms(&made.subscribe, 0.5),
        ms(&made.subscribe, 0.99),
        ms(&made.unsubscribe, 0.5),
        ms(&made.unsubscribe, 0.99),
    );
    if failed > 0 || got != expected || short > 0 {
        bail!("the watchers did not see every join and leave exactly once: got {got} of {expected}, {short} watchers short, {failed} clients failed");
    }
    if after.is_some_and(|n| n != w as u64) {
        bail!(
            "{} presence entries left after the churn, expected {w} (the watchers')",
            after.unwrap_or(0)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_presence_events_and_reply_ids_without_parsing() {
        let join = r#"{"type":"join","channel":"room:1","info":{"client":"1f","user":"bench","info":null}}"#;
        assert_eq!(presence_event(join), Some((Event::Join, "1f")));
        let leave = r#"{"type":"leave","channel":"room:1","info":{"client":"a0","user":"","info":{"client":"x"}}}"#;
        assert_eq!(presence_event(leave), Some((Event::Leave, "a0")));
        assert_eq!(presence_event(r#"{"type":"ping"}"#), None);
        assert_eq!(
            reply_id(
                r#"{"type":"subscribed","id":12,"channel":"c","cursor":"E:0","recovered":true,"missed":0}"#
            ),
            Some((12, false))
        );
        assert_eq!(
            reply_id(r#"{"type":"error","id":3,"code":1004,"message":"slow down"}"#),
            Some((3, true))
        );
        assert_eq!(reply_id(join), None);
        assert_eq!(reply_id(r#"{"type":"ping"}"#), None);
    }

    #[test]
    fn watchers_count_each_event_and_spot_misorder() {
        let mut s = Seen::default();
        s.take(Event::Join, "a");
        s.take(Event::Join, "b");
        s.take(Event::Leave, "a");
        s.take(Event::Join, "a");
        assert_eq!((s.joins, s.leaves, s.misordered), (3, 1, 0));
        s.take(Event::Join, "a"); // twice in a row
        s.take(Event::Leave, "c"); // never joined
        assert_eq!((s.joins, s.leaves, s.misordered), (4, 2, 2));
    }
}
