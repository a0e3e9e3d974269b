//! `herald bench`: a load generator for a running Herald (SPEC §10).
//!
//! Every scenario is bounded in time and in count, talks only to the URL it
//! is given (loopback in practice), and prints one summary line that
//! BENCHMARKS.md records next to the exact command. Pass `--server-pid` to
//! also measure the server's CPU time (from /proc) per operation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use herald_client::Client;
use serde_json::json;

/// Most connections one fan-out run opens (the process's file limit is 20,000).
pub(crate) const MAX_SUBSCRIBERS: usize = 19_000;
/// Longest run.
const MAX_DURATION: Duration = Duration::from_secs(600);

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Args)]
pub(crate) struct Common {
    /// The server's HTTP origin.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    /// API key (default: dev mode's herald-data/dev.env).
    #[arg(long, env = "HERALD_API_KEY")]
    pub(crate) api_key: Option<String>,
    /// How long to run, e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub(crate) duration: String,
    /// Channel to use.
    #[arg(long, default_value = "bench")]
    pub(crate) channel: String,
    /// Bytes of padding in each message's data.
    #[arg(long, default_value_t = 64)]
    pub(crate) payload: usize,
    /// The server's process id, to measure its CPU time per operation.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// The wire protocol: Herald's, or Socket.IO's (for the Socket.IO peer
    /// server of bench/peers, fanout and idle only).
    #[arg(long, value_enum, default_value = "herald")]
    pub(crate) protocol: Protocol,
}

/// What the load generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Protocol {
    Herald,
    /// Engine.IO 4 over a WebSocket: `40` to join the namespace, then
    /// `42["subscribe", channel]`, answered by `42["subscribed", {cursor}]`;
    /// messages arrive as `42["message", {…Herald's fields…}]`.
    Socketio,
}

/// A client of `common.url` subscribed to `channel`, and the offset it
/// starts from. `user` names it where no token is given (dev mode).
pub(crate) async fn join(
    url: &str,
    protocol: Protocol,
    channel: &str,
    token: Option<&str>,
    user: &str,
) -> Result<(Client, u64)> {
    let base = url.replacen("http", "ws", 1);
    match protocol {
        Protocol::Herald => {
            let mut c = Client::open(&format!("{base}/ws")).await?;
            c.timeout = Duration::from_secs(30);
            let connect = match token {
                Some(t) => json!({"type": "connect", "token": t}),
                None => json!({"type": "connect", "user": user}),
            };
            let reply = c.request(connect).await?;
            if reply["type"] != "connected" {
                bail!("connect refused: {reply}");
            }
            let reply = c.subscribe(channel, None).await?;
            if reply["type"] != "subscribed" {
                bail!("subscribe refused: {reply}");
            }
            let last = reply["cursor"]
                .as_str()
                .and_then(|s| s.rsplit(':').next())
                .and_then(|o| o.parse().ok())
                .unwrap_or(0u64);
            Ok((c, last))
        }
        Protocol::Socketio => {
            let mut c =
                Client::open(&format!("{base}/socket.io/?EIO=4&transport=websocket")).await?;
            c.timeout = Duration::from_secs(30);
            c.auto_pong = false;
            let open = c.next_raw().await?;
            if !open.starts_with('0') {
                bail!("no Engine.IO open packet: {open}");
            }
            c.send_text("40").await?;
            while !c.next_raw().await?.starts_with("40") {}
            c.send_text(
                &json!(["subscribe", channel])
                    .to_string()
                    .replacen('[', "42[", 1),
            )
            .await?;
            loop {
                let frame = c.next_raw().await?;
                if frame.starts_with(r#"42["subscribed""#) {
                    let last = frame
                        .split("\"cursor\":\"")
                        .nth(1)
                        .and_then(|rest| rest.split('"').next())
                        .and_then(|cursor| cursor.rsplit(':').next())
                        .and_then(|o| o.parse().ok())
                        .unwrap_or(0);
                    return Ok((c, last));
                }
            }
        }
    }
}

/// Whether a frame is a published message, in either protocol.
fn is_message(frame: &str) -> bool {
    frame.starts_with(r#"{"type":"message""#)
        || frame.starts_with(r#"42["message",{"type":"message""#)
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Single HTTP publishes from keep-alive clients, as fast as they are answered.
    Publish {
        #[command(flatten)]
        common: Common,
        /// Concurrent HTTP clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
    },
    /// `/api/batch` publishes of `--batch` messages each.
    Batch {
        #[command(flatten)]
        common: Common,
        /// Concurrent HTTP clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Messages per batch (at most 1000).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Subscribers on one channel, a publisher at a fixed rate; reports
    /// deliveries/s, publish-to-receive latency and loss.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// WebSocket subscribers.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Publish requests per second.
        #[arg(long, default_value_t = 10)]
        rate: u32,
        /// Messages per publish request (>1 uses /api/batch: a burst to one channel).
        #[arg(long, default_value_t = 1)]
        burst: usize,
        /// Client token for `connect` (default: dev mode's `user`).
        #[arg(long)]
        token: Option<String>,
        /// Publish through this origin instead of `--url` (another node of
        /// the redis engine: cross-node fan-out).
        #[arg(long)]
        publish_url: Option<String>,
    },
    /// A reconnect storm: subscribers on one channel all lose their
    /// sockets at once while publishing continues, then all reconnect and
    /// resume from their cursors; reports the time until every one is
    /// caught up, messages lost (must be 0), server CPU and peak memory.
    Storm {
        #[command(flatten)]
        common: Common,
        /// WebSocket subscribers.
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// Publishes per second, before, during and after the storm.
        #[arg(long, default_value_t = 10)]
        rate: u32,
        /// Publishing before the cut, e.g. 3s.
        #[arg(long, default_value = "3s")]
        before: String,
        /// Longest wait for every subscriber to catch up, e.g. 60s.
        #[arg(long, default_value = "60s")]
        within: String,
        /// Client token for `connect` (default: dev mode's `user`).
        #[arg(long)]
        token: Option<String>,
    },
    /// Join/leave rates (SPEC §11): clients subscribe to one channel and
    /// unsubscribe again, over and over, while watchers subscribed
    /// throughout count the `join`/`leave` frames they get; reports
    /// joins/s, leaves/s, subscribe and unsubscribe round trips, frames
    /// seen against expected, and server CPU per join or leave.
    Presence {
        #[command(flatten)]
        common: Common,
        /// Clients that subscribe and unsubscribe.
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Clients subscribed throughout that count the join/leave frames.
        #[arg(long, default_value_t = 10)]
        watchers: usize,
        /// Subscribe/unsubscribe cycles per second per client (0: as fast
        /// as answered; the server's `limits.commands_per_second` must allow it).
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// The channel's namespace has `join_leave = true`: every watcher
        /// must see every join and leave (without it, none).
        #[arg(long)]
        join_leave: bool,
        /// Client token for `connect` (default: dev mode's `user`).
        #[arg(long)]
        token: Option<String>,
    },
    /// Idle connected sockets, each subscribed to one channel; reports the
    /// server's memory per connection (needs --server-pid).
    Idle {
        #[command(flatten)]
        common: Common,
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Time to wait before reading the server's memory, e.g. 15s (the
        /// allocator returns freed handshake buffers over some seconds).
        #[arg(long, default_value = "15s")]
        settle: String,
        /// Client token for `connect` (default: dev mode's `user`).
        #[arg(long)]
        token: Option<String>,
    },
}

pub(crate) async fn run(args: BenchArgs) -> Result<()> {
    match args.scenario {
        Scenario::Storm {
            common,
            subscribers,
            rate,
            before,
            within,
            token,
        } => {
            let before = humantime::parse_duration(&before).context("--before")?;
            let within = humantime::parse_duration(&within).context("--within")?;
            crate::storm::run(
                &common,
                crate::storm::Storm {
                    subscribers,
                    rate,
                    before,
                    within,
                    token,
                },
            )
            .await
        }
        Scenario::Presence {
            common,
            clients,
            watchers,
            rate,
            join_leave,
            token,
        } => {
            if common.protocol != Protocol::Herald {
                bail!("the presence scenario speaks Herald's protocol only");
            }
            let run_for = duration(&common)?;
            crate::churn::run(
                &common,
                crate::churn::Churn {
                    clients,
                    watchers,
                    rate,
                    join_leave,
                    run_for,
                    token,
                },
            )
            .await
        }
        Scenario::Publish { common, clients } => publish(&common, clients, 1).await,
        Scenario::Batch {
            common,
            clients,
            batch,
        } => {
            if !(1..=1000).contains(&batch) {
                bail!("--batch must be 1 to 1000");
            }
            publish(&common, clients, batch).await
        }
        Scenario::Fanout {
            common,
            subscribers,
            rate,
            burst,
            token,
            publish_url,
        } => {
            let publish_url = publish_url.unwrap_or_else(|| common.url.clone());
            fanout(&common, subscribers, rate, burst, token, &publish_url).await
        }
        Scenario::Idle {
            common,
            connections,
            settle,
            token,
        } => {
            let settle =
                humantime::parse_duration(&settle).context("--settle is not a duration")?;
            idle(&common, connections, settle.min(MAX_DURATION), token).await
        }
    }
}

fn duration(common: &Common) -> Result<Duration> {
    let d = humantime::parse_duration(&common.duration).context("--duration is not a duration")?;
    if d > MAX_DURATION {
        bail!("--duration is at most {}s", MAX_DURATION.as_secs());
    }
    Ok(d)
}

pub(crate) fn api_key(common: &Common) -> Result<String> {
    match &common.api_key {
        Some(k) => Ok(k.clone()),
        None => crate::dev::read_env(&crate::default_data_dir())
            .and_then(|env| {
                env.get("HERALD_AUTH_API_KEYS")
                    .and_then(|k| k.split(',').next().map(str::to_owned))
            })
            .context("no API key: pass --api-key (or run next to a dev server's herald-data/)"),
    }
}

pub(crate) fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used, from /proc.
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports these in USER_HZ, which is 100 on every mainstream platform.
    Some(Duration::from_millis(ticks * 10))
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn publish(common: &Common, clients: usize, batch: usize) -> Result<()> {
    let run_for = duration(common)?;
    let key = api_key(common)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let pad = "x".repeat(common.payload);
    let (url, body) = if batch == 1 {
        (
            format!("{}/api/channels/{}/messages", common.url, common.channel),
            json!({"pad": pad}).to_string(),
        )
    } else {
        let items: Vec<_> = (0..batch)
            .map(
                |_| json!({"action": "broadcast", "channel": common.channel, "data": {"pad": pad}}),
            )
            .collect();
        (
            format!("{}/api/batch", common.url),
            json!({ "items": items }).to_string(),
        )
    };
    let cpu_before = common.server_pid.and_then(cpu_time);
    let started = Instant::now();
    let deadline = started + run_for;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, body, key) = (http.clone(), url.clone(), body.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(t.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_before
        .zip(common.server_pid.and_then(cpu_time))
        .map(|(a, b)| b.saturating_sub(a));
    latencies.sort_unstable();
    let requests = latencies.len() as f64;
    let messages = requests * batch as f64;
    let cpu_note = cpu.map_or(String::new(), |c| {
        format!(
            ", server CPU {:.1} µs/message ({:.0}% of a core)",
            c.as_secs_f64() * 1e6 / messages.max(1.0),
            c.as_secs_f64() / elapsed * 100.0
        )
    });
    println!(
        "{} clients, batch {batch}: {:.0} requests/s, {:.0} messages/s, latency p50 {:.2} ms p99 {:.2} ms, {errors} errors{cpu_note}",
        clients,
        requests / elapsed,
        messages / elapsed,
        percentile(&latencies, 0.5) as f64 / 1000.0,
        percentile(&latencies, 0.99) as f64 / 1000.0,
    );
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}

/// Finds `"t":<digits>` in a frame without parsing it all: the load
/// generator must not be the bottleneck it measures.
pub(crate) fn sent_at(frame: &str) -> Option<u64> {
    let start = frame.find("\"t\":")? + 4;
    let digits: &str = &frame[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

pub(crate) fn offset_of(frame: &str) -> Option<u64> {
    let start = frame.find("\"offset\":")? + 9;
    let digits = &frame[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// What one subscriber saw: latencies (µs) and gaps in the offsets.
#[derive(Default)]
struct Tally {
    last: u64,
    latencies: Vec<u64>,
    gaps: u64,
}

impl Tally {
    fn message(&mut self, text: &str) {
        if let Some(t) = sent_at(text) {
            self.latencies.push(micros_now().saturating_sub(t));
        }
        if let Some(o) = offset_of(text) {
            if o != self.last + 1 {
                self.gaps += 1;
            }
            self.last = o;
        }
    }
}

/// Reads WebSocket frames off `tcp` until `stop`, handing each text frame
/// to `on_text` and answering heartbeats (Herald's `ping`, Engine.IO's `2`).
///
/// Written by hand rather than through the client's tungstenite stream:
/// at 100,000 deliveries/s on one core the load generator must cost less
/// than the server it measures, and a timer, a copy and an allocation per
/// frame made it the bottleneck. Server frames are unmasked; anything but
/// a complete text, ping or close frame is skipped by its length.
pub(crate) async fn lean_receive(
    mut tcp: tokio::net::TcpStream,
    stop: &tokio_util::sync::CancellationToken,
    mut on_text: impl FnMut(&str),
) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const HERALD_PONG: &[u8] = br#"{"type":"pong"}"#;
    let mut buf = vec![0u8; 4096];
    let mut held = 0;
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        if held == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = tokio::select! {
            biased;
            r = tcp.read(&mut buf[held..]) => r?,
            _ = &mut stopped => return Ok(()),
        };
        if n == 0 {
            bail!("the server closed the connection");
        }
        held += n;
        let mut at = 0;
        let mut answers: Vec<&[u8]> = Vec::new();
        while let Some((opcode, start, end)) = frame_at(&buf[at..held]) {
            let payload = &buf[at + start..at + end];
            match opcode {
                0x1 => {
                    let text = std::str::from_utf8(payload).unwrap_or("");
                    match text {
                        r#"{"type":"ping"}"# => answers.push(HERALD_PONG),
                        "2" => answers.push(b"3"),
                        _ => on_text(text),
                    }
                }
                0x8 => bail!("the server closed the connection"),
                _ => {}
            }
            at += end;
        }
        for answer in answers {
            // A masked text frame with a zero key (so the payload goes as is).
            let mut frame = vec![0x81, 0x80 | answer.len() as u8, 0, 0, 0, 0];
            frame.extend_from_slice(answer);
            tcp.write_all(&frame).await?;
        }
        buf.copy_within(at..held, 0);
        held -= at;
    }
}

/// The complete unmasked frame at the start of `buf`: its opcode and where
/// its payload starts and ends.
fn frame_at(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, start): (usize, usize) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (
            usize::try_from(u64::from_be_bytes(buf[2..10].try_into().ok()?)).ok()?,
            10,
        ),
        126 | 127 => return None,
        n => (usize::from(n), 2),
    };
    let end = start.checked_add(len)?;
    (buf.len() >= end).then_some((buf[0] & 0x0F, start, end))
}

async fn fanout(
    common: &Common,
    subscribers: usize,
    rate: u32,
    burst: usize,
    token: Option<String>,
    publish_url: &str,
) -> Result<()> {
    if subscribers == 0 || subscribers > MAX_SUBSCRIBERS {
        bail!("--subscribers must be 1 to {MAX_SUBSCRIBERS}");
    }
    if rate == 0 || !(1..=1000).contains(&burst) {
        bail!("--rate must be at least 1 and --burst 1 to 1000");
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let run_for = duration(common)?;
    let key = api_key(common)?;
    let protocol = common.protocol;
    let stop = tokio_util::sync::CancellationToken::new();
    let received = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(subscribers);
    let mut tasks = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let (url, channel, token, received, ready_tx) = (
            common.url.clone(),
            common.channel.clone(),
            token.clone(),
            received.clone(),
            ready_tx.clone(),
        );
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (c, last) = join(
                &url,
                protocol,
                &channel,
                token.as_deref(),
                &format!("bench-{i}"),
            )
            .await?;
            let tcp = c
                .into_tcp()
                .context("the bench reads plain TCP (no TLS) itself")?;
            let _ = ready_tx.send(()).await;
            let mut tally = Tally {
                last,
                ..Tally::default()
            };
            lean_receive(tcp, &stop, |text| {
                if is_message(text) {
                    tally.message(text);
                    received.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await?;
            Ok::<_, anyhow::Error>((tally.latencies, tally.gaps))
        }));
    }
    drop(ready_tx);
    let mut ready = 0;
    let setup = Instant::now();
    while ready < subscribers {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            _ => bail!("only {ready} of {subscribers} subscribers connected"),
        }
    }
    eprintln!(
        "{subscribers} subscribers ready in {:.1}s",
        setup.elapsed().as_secs_f64()
    );

    let http = reqwest::Client::new();
    let pad = "x".repeat(common.payload);
    let cpu_before = common.server_pid.and_then(cpu_time);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut published = 0u64;
    while started.elapsed() < run_for {
        tick.tick().await;
        let (url, body) = if burst == 1 {
            (
                format!("{publish_url}/api/channels/{}/messages", common.channel),
                json!({"t": micros_now(), "pad": pad}),
            )
        } else {
            let t = micros_now();
            let items: Vec<_> = (0..burst).map(|_| json!({"action": "broadcast", "channel": common.channel, "data": {"t": t, "pad": pad}})).collect();
            (
                format!("{publish_url}/api/batch"),
                json!({ "items": items }),
            )
        };
        let r = http.post(url).bearer_auth(&key).json(&body).send().await?;
        if !r.status().is_success() {
            bail!("publish failed: {}", r.status());
        }
        published += burst as u64;
    }
    // Let in-flight messages land: wait until everything arrived or 10 s pass.
    let expected = published * subscribers as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_before
        .zip(common.server_pid.and_then(cpu_time))
        .map(|(a, b)| b.saturating_sub(a));
    stop.cancel();
    let mut latencies = Vec::new();
    let mut gaps = 0;
    let mut failed = 0;
    for t in tasks {
        match t.await? {
            Ok((l, g)) => {
                latencies.extend(l);
                gaps += g;
            }
            Err(e) => {
                failed += 1;
                eprintln!("subscriber failed: {e:#}");
            }
        }
    }
    latencies.sort_unstable();
    let got = received.load(Ordering::Relaxed);
    let cpu_note = cpu.map_or(String::new(), |c| {
        format!(
            ", server CPU {:.2} µs/delivery ({:.0}% of a core)",
            c.as_secs_f64() * 1e6 / got.max(1) as f64,
            c.as_secs_f64() / elapsed * 100.0
        )
    });
    println!(
        "{subscribers} subscribers, {rate} publishes/s × {burst}: {:.0} deliveries/s, latency p50 {:.1} ms p99 {:.1} ms, received {got}/{expected}, gaps {gaps}, failed subscribers {failed}{cpu_note}",
        got as f64 / elapsed,
        percentile(&latencies, 0.5) as f64 / 1000.0,
        percentile(&latencies, 0.99) as f64 / 1000.0,
    );
    if got < expected || gaps > 0 || failed > 0 {
        bail!(
            "lost messages: received {got} of {expected}, {gaps} gaps, {failed} failed subscribers"
        );
    }
    Ok(())
}

/// Resident memory of a process, from /proc.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

async fn idle(
    common: &Common,
    connections: usize,
    settle: Duration,
    token: Option<String>,
) -> Result<()> {
    if connections == 0 || connections > MAX_SUBSCRIBERS {
        bail!("--connections must be 1 to {MAX_SUBSCRIBERS}");
    }
    let pid = common
        .server_pid
        .context("idle needs --server-pid to read the server's memory")?;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let before = rss_bytes(pid).context("cannot read the server's memory")?;
    let started = Instant::now();
    let mut clients = Vec::with_capacity(connections);
    // A few at a time, so the listen backlog is never the limit being measured.
    for chunk in 0..connections.div_ceil(100) {
        let mut opening = Vec::new();
        for i in chunk * 100..((chunk + 1) * 100).min(connections) {
            let (url, protocol, channel, token) = (
                common.url.clone(),
                common.protocol,
                format!("{}:{}", common.channel, i % 100),
                token.clone(),
            );
            opening.push(tokio::spawn(async move {
                let (c, _) = join(
                    &url,
                    protocol,
                    &channel,
                    token.as_deref(),
                    &format!("idle-{i}"),
                )
                .await?;
                Ok::<_, anyhow::Error>(c)
            }));
        }
        for o in opening {
            clients.push(o.await??);
        }
    }
    let opened = started.elapsed();
    tokio::time::sleep(settle).await;
    let after = rss_bytes(pid).context("cannot read the server's memory")?;
    let per = after.saturating_sub(before) as f64 / connections as f64;
    println!(
        "{connections} idle connections (connected, 1 subscription each) opened in {:.1}s: server RSS {:.1} MiB -> {:.1} MiB, {:.2} KiB per connection",
        opened.as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per / 1024.0
    );
    drop(clients);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_frames_without_parsing() {
        let f = r#"{"type":"message","channel":"bench","offset":42,"cursor":"E:42","ts":1,"data":{"t":1764100000123456,"pad":"xx"}}"#;
        assert_eq!(sent_at(f), Some(1764100000123456));
        assert_eq!(offset_of(f), Some(42));
        assert_eq!(percentile(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.5), 6);
    }
}
