//! `herald bench storm`: the reconnect storm (SPEC §10). Subscribers on one
//! channel, a publisher at a fixed rate; at one instant every subscriber's
//! socket is dropped (as when a load balancer or a network path fails), and
//! each reconnects as the SDK does — after a random wait in
//! `[0, 500 ms × 2^attempt]` (full jitter, capped at 20 s) — and resumes
//! from its cursor while publishing goes on. Reported: the time until every
//! subscriber has caught up (received everything up to where the channel
//! stood when it resubscribed), messages lost (any gap, or a resume that
//! was not `recovered`: must be 0), the server's CPU during the storm and
//! its peak resident memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use herald_client::Client;
use serde_json::json;
use tokio::sync::watch;

use crate::bench::{api_key, cpu_time, micros_now, offset_of, percentile, Common, MAX_SUBSCRIBERS};

/// The scenario's knobs.
pub(crate) struct Storm {
    pub subscribers: usize,
    pub rate: u32,
    pub before: Duration,
    pub within: Duration,
    pub token: Option<String>,
}

/// The SDK's reconnect delays (`minReconnectDelay`, `maxReconnectDelay`).
const MIN_DELAY_MS: u64 = 500;
const MAX_DELAY_MS: u64 = 20_000;

/// What one subscriber saw.
struct Outcome {
    /// From the cut to caught up.
    caught_up_after: Option<Duration>,
    /// Offsets skipped, or resumes answered `recovered: false`.
    lost: u64,
    /// Connection attempts after the cut.
    attempts: u32,
}

/// A small xorshift generator: the jitter needs no cryptographic quality,
/// and one seeded per subscriber keeps runs comparable.
struct Jitter(u64);

impl Jitter {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        if n == 0 {
            0
        } else {
            self.0 % n
        }
    }
}

fn cursor_of(frame: &str) -> Option<&str> {
    let start = frame.find("\"cursor\":\"")? + 10;
    let rest = &frame[start..];
    Some(&rest[..rest.find('"')?])
}

/// Peak resident memory of a process (VmHWM), from /proc.
fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

struct Shared {
    ws_url: String,
    channel: String,
    token: Option<String>,
    /// Flips to true at the cut.
    cut: watch::Receiver<bool>,
    /// Flips to true when the run is over.
    done: watch::Receiver<bool>,
    caught_up: AtomicU64,
    cut_at: std::sync::OnceLock<Instant>,
}

async fn open(shared: &Shared, i: usize) -> Result<Client> {
    let mut c = Client::open(&shared.ws_url).await?;
    c.timeout = Duration::from_secs(30);
    let connect = match &shared.token {
        Some(t) => json!({"type": "connect", "token": t}),
        None => json!({"type": "connect", "user": format!("storm-{i}")}),
    };
    let reply = c.request(connect).await?;
    if reply["type"] != "connected" {
        bail!("connect refused: {reply}");
    }
    Ok(c)
}

async fn subscriber(
    shared: Arc<Shared>,
    i: usize,
    ready: tokio::sync::mpsc::Sender<()>,
) -> Result<Outcome> {
    let mut c = open(&shared, i).await?;
    let reply = c.subscribe(&shared.channel, None).await?;
    if reply["type"] != "subscribed" {
        bail!("subscribe refused: {reply}");
    }
    let mut cursor = reply["cursor"].as_str().unwrap_or_default().to_owned();
    let mut last = offset_in(&cursor);
    let _ = ready.send(()).await;
    let mut lost = 0u64;
    // Live until the cut.
    let mut cut = shared.cut.clone();
    c.timeout = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = cut.wait_for(|c| *c) => break,
            frame = c.next_raw() => match frame {
                Ok(text) => take(&text, &mut last, &mut cursor, &mut lost),
                Err(herald_client::Error::Timeout(_)) => {}
                Err(e) => return Err(e.into()),
            },
        }
    }
    // The cut: the socket goes without a goodbye.
    drop(c);
    let cut_at = shared.cut_at.get().copied().unwrap_or_else(Instant::now);
    let mut jitter = Jitter(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1).wrapping_mul(0x2545_F491));
    let mut attempts = 0u32;
    let (mut c, target) = loop {
        let ceiling = (MIN_DELAY_MS << attempts.min(10)).min(MAX_DELAY_MS);
        tokio::time::sleep(Duration::from_millis(jitter.below(ceiling))).await;
        attempts += 1;
        let resumed = async {
            let mut c = open(&shared, i).await?;
            let reply = c.subscribe(&shared.channel, Some(&cursor)).await?;
            if reply["type"] != "subscribed" {
                bail!("resubscribe refused: {reply}");
            }
            Ok::<_, anyhow::Error>((c, reply))
        };
        match resumed.await {
            Ok((c, reply)) => {
                if reply["recovered"] != true {
                    lost += 1;
                }
                let target = offset_in(reply["cursor"].as_str().unwrap_or_default());
                break (c, target);
            }
            Err(_) if cut_at.elapsed() < Duration::from_secs(120) => continue,
            Err(e) => return Err(e),
        }
    };
    let mut caught_up_after = None;
    let mut done = shared.done.clone();
    loop {
        if caught_up_after.is_none() && last >= target {
            caught_up_after = Some(cut_at.elapsed());
            shared.caught_up.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            _ = done.wait_for(|d| *d) => break,
            frame = c.next_raw() => match frame {
                Ok(text) => take(&text, &mut last, &mut cursor, &mut lost),
                Err(herald_client::Error::Timeout(_)) => {}
                Err(e) => return Err(e.into()),
            },
        }
    }
    Ok(Outcome {
        caught_up_after,
        lost,
        attempts,
    })
}

/// The offset part of a cursor `"<epoch>:<offset>"`.
fn offset_in(cursor: &str) -> u64 {
    cursor
        .rsplit(':')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or(0)
}

/// One frame: a message moves `last` and `cursor`, counting any gap.
fn take(text: &str, last: &mut u64, cursor: &mut String, lost: &mut u64) {
    if !text.starts_with(r#"{"type":"message""#) {
        return;
    }
    if let Some(o) = offset_of(text) {
        if o <= *last {
            return; // a repeat: never counted twice
        }
        *lost += o - *last - 1;
        *last = o;
        if let Some(c) = cursor_of(text) {
            *cursor = c.to_owned();
        }
    }
}

pub(crate) async fn run(common: &Common, storm: Storm) -> Result<()> {
    let n = storm.subscribers;
    if n == 0 || n > MAX_SUBSCRIBERS {
        bail!("--subscribers must be 1 to {MAX_SUBSCRIBERS}");
    }
    if storm.rate == 0 {
        bail!("--rate must be at least 1");
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let key = api_key(common)?;
    let (cut_tx, cut) = watch::channel(false);
    let (done_tx, done) = watch::channel(false);
    let shared = Arc::new(Shared {
        ws_url: format!("{}/ws", common.url.replacen("http", "ws", 1)),
        channel: common.channel.clone(),
        token: storm.token.clone(),
        cut,
        done,
        caught_up: AtomicU64::new(0),
        cut_at: std::sync::OnceLock::new(),
    });
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n);
    let mut tasks = Vec::with_capacity(n);
    // Opened a hundred at a time, so the listen backlog is not what is measured here.
    for chunk in 0..n.div_ceil(100) {
        for i in chunk * 100..((chunk + 1) * 100).min(n) {
            tasks.push(tokio::spawn(subscriber(
                shared.clone(),
                i,
                ready_tx.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(ready_tx);
    let mut ready = 0;
    while ready < n {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            _ => bail!("only {ready} of {n} subscribers connected"),
        }
    }
    eprintln!("{n} subscribers ready");

    // The publisher runs until the end.
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (url, key, published, mut done) = (
            format!("{}/api/channels/{}/messages", common.url, common.channel),
            key.clone(),
            published.clone(),
            shared.done.clone(),
        );
        let pad = "x".repeat(common.payload);
        let rate = storm.rate;
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = done.wait_for(|d| *d) => return Ok::<_, anyhow::Error>(()),
                    _ = tick.tick() => {}
                }
                let r = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"t": micros_now(), "pad": pad}))
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("publish failed: {}", r.status());
                }
                published.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(storm.before).await;

    let cpu_before = common.server_pid.and_then(cpu_time);
    let cut_at = Instant::now();
    let _ = shared.cut_at.set(cut_at);
    cut_tx.send_replace(true);
    while (shared.caught_up.load(Ordering::Relaxed) as usize) < n && cut_at.elapsed() < storm.within
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let storm_time = cut_at.elapsed();
    let cpu = cpu_before
        .zip(common.server_pid.and_then(cpu_time))
        .map(|(a, b)| b.saturating_sub(a));
    // A second more of live traffic, so a gap right after catching up shows.
    tokio::time::sleep(Duration::from_secs(1)).await;
    done_tx.send_replace(true);
    publisher.await??;

    let mut after = Vec::with_capacity(n);
    let (mut lost, mut failed, mut attempts) = (0u64, 0usize, 0u64);
    for t in tasks {
        match t.await? {
            Ok(o) => {
                lost += o.lost;
                attempts += u64::from(o.attempts);
                if let Some(d) = o.caught_up_after {
                    after.push(d.as_millis() as u64);
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("subscriber failed: {e:#}");
            }
        }
    }
    after.sort_unstable();
    let caught_up = after.len();
    let server = common.server_pid.map_or(String::new(), |pid| {
        format!(
            ", server CPU {:.2} s during the storm, peak RSS {:.1} MiB",
            cpu.map_or(0.0, |c| c.as_secs_f64()),
            peak_rss_bytes(pid).unwrap_or(0) as f64 / 1048576.0
        )
    });
    println!(
        "storm: {n} subscribers cut at once, {rate}/s publishing throughout ({total} published): {caught_up}/{n} caught up, all within {all:.2} s (p50 {p50:.2} s, p99 {p99:.2} s), {attempts} reconnect attempts, lost {lost}, failed {failed}{server}",
        rate = storm.rate,
        total = published.load(Ordering::Relaxed),
        all = storm_time.as_secs_f64(),
        p50 = percentile(&after, 0.5) as f64 / 1000.0,
        p99 = percentile(&after, 0.99) as f64 / 1000.0,
    );
    if caught_up < n || lost > 0 || failed > 0 {
        bail!("the storm lost something: {caught_up}/{n} caught up, lost {lost}, failed {failed}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_move_the_cursor_and_count_gaps_once() {
        let (mut last, mut cursor, mut lost) = (3u64, "E:3".to_owned(), 0u64);
        let f = |o: u64| {
            format!(
                r#"{{"type":"message","channel":"b","offset":{o},"cursor":"E:{o}","ts":1,"data":{{}}}}"#
            )
        };
        take(&f(4), &mut last, &mut cursor, &mut lost);
        take(&f(4), &mut last, &mut cursor, &mut lost);
        take(&f(7), &mut last, &mut cursor, &mut lost);
        assert_eq!((last, cursor.as_str(), lost), (7, "E:7", 2));
        take(r#"{"type":"pong"}"#, &mut last, &mut cursor, &mut lost);
        assert_eq!(offset_in("abc:12"), 12);
    }

    #[test]
    fn jitter_stays_below_its_ceiling() {
        let mut j = Jitter(42);
        assert!((0..1000).all(|_| j.below(500) < 500));
        assert_eq!(j.below(0), 0);
    }
}
