//! One WebSocket connection's state machine (SPEC §3): connect, subscribe with
//! exact recovery, publish, refresh, heartbeats, limits, and the goodbye.
//!
//! Each session is one task that owns its socket, so no lock guards its state.
//! Live publications arrive through the connection's bounded queue, already
//! encoded; the session forwards each once, in offset order, skipping offsets
//! it already sent while recovering (recovery subscribes first, then reads
//! history, so a message published meanwhile may arrive by both roads).

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use herald_protocol::{
    encode_message_frame, encode_notification_frame, encode_presence_frame,
    encode_presence_stats_frame, parse_command, CloseCode, Command, CommandError, Cursor,
    ErrorCode, NotificationsState, ServerFrame,
};
use tokio::time::{sleep_until, Instant as TokioInstant};
use tungstenite::Utf8Bytes;

use crate::auth::{unix_now, Identity};
use crate::conns::IpSlot;
use crate::hub::{inbox_key, Batch, Conn, QueueBound, INBOX_PREFIX};
use crate::node::{Node, NodeError, PublishItem, Recovery, SessionSlot};
use crate::presence::{Member, MAX_LISTED};
use crate::proxy::connect::Connect;
use crate::proxy::Transport;
use crate::transport::frame::Violation;
use crate::transport::ws::{Inbound, Socket};

/// Most queued frames written in one go.
const MAX_BATCH: usize = 64;
/// Strikes (rate-limited or malformed commands) are forgotten after this long without one.
const STRIKE_MEMORY: Duration = Duration::from_secs(10);

/// Why the loop stopped.
enum Stop {
    /// Close with this code, after a `disconnect` frame.
    Close(CloseCode),
    /// The client broke the WebSocket protocol: a close frame with the RFC
    /// 6455 code, and no `disconnect` (it is not a Herald close).
    Violation(Violation),
    /// The peer closed or vanished; only its close is answered.
    Gone,
}

type Step = Result<(), Stop>;

/// Runs a session on an upgraded socket until it closes.
///
/// Not an `async fn`: its arguments would be kept in the future beside the
/// session they move into, and every idle connection pays for its future's
/// size. Here they are moved before the future exists.
///
/// `ip_slot` counts the socket against its address until `connect` proves a
/// token (then the per-user slot counts instead); anonymous sessions keep it.
pub(crate) fn run(
    node: Arc<Node>,
    socket: Socket,
    ip_slot: Option<IpSlot>,
) -> impl std::future::Future<Output = ()> + Send {
    let limits = &node.config().limits;
    let bound = QueueBound {
        frames: limits.outbound_queue,
        bytes: limits.outbound_queue_bytes,
    };
    let conn = Arc::new(Conn::new(
        node.next_conn_id(),
        bound,
        node.metrics.outbound_queue_bytes.clone(),
        socket.lane().cloned(),
    ));
    let mut session = Session {
        bucket: TokenBucket::new(limits.commands_per_second, limits.burst),
        streams: Streams {
            node: node.clone(),
            conn: conn.clone(),
        },
        node: node.clone(),
        conn,
        socket,
        identity: None,
        presence: Vec::new(),
        slot: None,
        ip_slot,
        inbox: None,
        last_seen: Instant::now(),
        expiry: Expiry::None,
        strikes: 0,
        last_strike: Instant::now(),
    };
    // One span per connection: every line it logs carries its id, and its
    // user once `connect` names one (never its token).
    let span = tracing::info_span!(
        "conn",
        id = %format_args!("{:x}", session.conn.id),
        user = tracing::field::Empty
    );
    // A block, not an `async fn`, which would copy `session` into its body.
    let session_task = async move {
        let stop = session.run_loop().await;
        match &stop {
            Stop::Close(code) => tracing::debug!(code = code.as_u16(), "closing"),
            Stop::Violation(_) => tracing::debug!("protocol violation"),
            Stop::Gone => tracing::debug!("peer gone"),
        }
        session.streams.leave_all();
        // Each entry leaves as its guard drops (on every path out, this
        // one included): before the goodbye, so others hear it at once.
        session.presence.clear();
        session.slot = None;
        // Boxed: the goodbyes' state would otherwise widen every idle
        // session's future.
        match stop {
            Stop::Close(code) => {
                let goodbye = ServerFrame::Disconnect {
                    code: code.as_u16(),
                    reason: code.reason(),
                    reconnect: code.reconnect(),
                };
                Box::pin(session.socket.close(Some(goodbye.to_json().into()), code)).await;
            }
            Stop::Violation(v) => Box::pin(session.socket.fail(v)).await,
            Stop::Gone => Box::pin(session.socket.finish()).await,
        }
    };
    tracing::Instrument::instrument(session_task, span)
}

enum Expiry {
    None,
    /// Send error 1009 at this instant.
    WarnAt(Instant),
    /// Close with 4005 at this instant unless refreshed.
    CloseAt(Instant),
}

struct Session {
    node: Arc<Node>,
    conn: Arc<Conn>,
    socket: Socket,
    identity: Option<Identity>,
    /// Presence entries held, one per subscribed channel that keeps them.
    presence: Vec<Member>,
    slot: Option<SessionSlot>,
    /// This socket's place under `limits.max_connections_per_ip`.
    ip_slot: Option<IpSlot>,
    /// Every stream this connection listens to, and the last offset sent on each.
    streams: Streams,
    inbox: Option<Arc<str>>,
    last_seen: Instant,
    expiry: Expiry,
    bucket: TokenBucket,
    strikes: u32,
    last_strike: Instant,
}

impl Session {
    async fn run_loop(&mut self) -> Stop {
        let hb = &self.node.config().heartbeat;
        let silence_limit = hb.ping_interval + hb.pong_timeout;
        let mut ping =
            tokio::time::interval_at(TokioInstant::now() + hb.ping_interval, hb.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The waits live across iterations and are reset only when their
        // deadline moves: building them anew for every frame would register
        // and cancel timers and waiters per delivery, the hot path.
        let connect_at = TokioInstant::now() + self.node.config().limits.connect_timeout;
        // One timer for the connect deadline, then for the token's expiry:
        // they never run together, and every idle session carries its timers.
        let deadline = sleep_until(connect_at);
        let silence = sleep_until(TokioInstant::from_std(self.last_seen + silence_limit));
        let shutdown = self.node.shutdown_token().clone().cancelled_owned();
        let kicked = {
            let conn = self.conn.clone();
            async move { conn.kicked().await }
        };
        tokio::pin!(deadline, silence, shutdown, kicked);
        loop {
            let silence_at = TokioInstant::from_std(self.last_seen + silence_limit);
            if silence.deadline() != silence_at {
                silence.as_mut().reset(silence_at);
            }
            let deadline_at = match (&self.identity, &self.expiry) {
                (None, _) => Some(connect_at),
                (Some(_), Expiry::None) => None,
                (Some(_), Expiry::WarnAt(t) | Expiry::CloseAt(t)) => {
                    Some(TokioInstant::from_std(*t))
                }
            };
            if let Some(at) = deadline_at.filter(|at| *at != deadline.deadline()) {
                deadline.as_mut().reset(at);
            }
            // Idle from here: the fan-out may write live frames itself until
            // the session wakes (transport::lane).
            self.conn.offer_lane(self.socket.is_idle());
            let step = tokio::select! {
                biased;
                _ = &mut shutdown => Err(Stop::Close(CloseCode::Shutdown)),
                code = &mut kicked => Err(Stop::Close(code)),
                batch = self.conn.next_batch(MAX_BATCH) => self.forward(batch).await,
                // Boxed: command handling is a large future, and keeping it out of the
                // loop's own state keeps every idle session small.
                inbound = self.socket.recv() => Box::pin(self.on_inbound(inbound)).await,
                _ = &mut deadline, if deadline_at.is_some() => match self.identity {
                    None => Err(Stop::Close(CloseCode::Unauthorized)),
                    // Boxed too (rare, and larger than the waits it follows).
                    Some(_) => Box::pin(self.on_expiry()).await,
                },
                _ = &mut silence => Err(Stop::Close(CloseCode::HeartbeatTimeout)),
                // Boxed too (rare, and larger than the waits they follow).
                _ = ping.tick(), if self.identity.is_some() => Box::pin(self.send(ServerFrame::Ping {})).await,
            };
            if let Err(stop) = step {
                return stop;
            }
        }
    }

    /// Writes frames, giving up if the connection is kicked, the server shuts
    /// down, the client goes silent, or the write stays stuck past
    /// `limits.write_timeout` (a reader that stopped reading: 4003, like a
    /// full queue, so it resumes by cursor).
    async fn write(&mut self, frames: Vec<Utf8Bytes>) -> Step {
        let hb = &self.node.config().heartbeat;
        let silence_deadline =
            TokioInstant::from_std(self.last_seen + hb.ping_interval + hb.pong_timeout);
        let write_deadline = TokioInstant::now() + self.node.config().limits.write_timeout;
        let Session {
            socket, conn, node, ..
        } = self;
        let mut send = std::pin::pin!(socket.send(frames));
        // A write that completes at once (the usual case) never builds the
        // other waits; the ones that don't wait in a box, so the waits take
        // no room in every idle session's future.
        if let Poll::Ready(r) = futures_util::poll!(send.as_mut()) {
            return r.map_err(|_| Stop::Gone);
        }
        Box::pin(async move {
            tokio::select! {
                biased;
                r = send => r.map_err(|_| Stop::Gone),
                code = conn.kicked() => Err(Stop::Close(code)),
                _ = node.shutdown_token().cancelled() => Err(Stop::Close(CloseCode::Shutdown)),
                _ = sleep_until(silence_deadline) => Err(Stop::Close(CloseCode::HeartbeatTimeout)),
                _ = sleep_until(write_deadline) => {
                    node.metrics.slow_consumer_disconnects.inc();
                    Err(Stop::Close(CloseCode::SlowConsumer))
                }
            }
        })
        .await
    }

    async fn send(&mut self, frame: ServerFrame<'_>) -> Step {
        let text = frame.to_json();
        self.write(vec![Utf8Bytes::from(text)]).await
    }

    async fn send_error(&mut self, id: Option<u64>, e: &CommandError) -> Step {
        self.send(ServerFrame::Error {
            id,
            code: e.code.as_u16(),
            message: &e.message,
        })
        .await
    }

    /// Sends an error, then closes with `code` (SPEC §3 for connect failures).
    async fn refuse(&mut self, id: Option<u64>, e: &CommandError, code: CloseCode) -> Step {
        self.send_error(id, e).await?;
        Err(Stop::Close(code))
    }

    /// Forwards queued publications (already rid of what was sent), after
    /// what a stalled lane left.
    async fn forward(&mut self, batch: Batch) -> Step {
        if batch.frames.is_empty() && !batch.stalled {
            return Ok(());
        }
        let sent = batch.frames.len() as u64;
        self.write(batch.frames).await?;
        self.node.metrics.frames_written_by_session.inc_by(sent);
        if let Some(oldest) = batch.oldest.filter(|_| sent > 0) {
            self.node
                .metrics
                .publish_to_send_seconds
                .observe(oldest.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn on_expiry(&mut self) -> Step {
        match self.expiry {
            Expiry::WarnAt(_) => {
                self.expiry =
                    Expiry::CloseAt(Instant::now() + self.node.config().auth.refresh_grace);
                let e = CommandError::new(
                    ErrorCode::TokenExpired,
                    "token expired; send refresh with a new token",
                );
                self.send_error(None, &e).await
            }
            Expiry::CloseAt(_) => Err(Stop::Close(CloseCode::TokenExpired)),
            Expiry::None => Ok(()),
        }
    }

    fn schedule_expiry(&mut self, expires_at: Option<u64>) {
        self.expiry = match expires_at {
            Some(exp) => {
                Expiry::WarnAt(Instant::now() + Duration::from_secs(exp.saturating_sub(unix_now())))
            }
            None => Expiry::None,
        };
    }

    /// Counts a rate-limited or malformed command; too many close the connection.
    fn strike(&mut self) -> Step {
        if self.last_strike.elapsed() > STRIKE_MEMORY {
            self.strikes = 0;
        }
        self.strikes += 1;
        self.last_strike = Instant::now();
        if self.strikes >= self.node.config().limits.abuse_threshold {
            return Err(Stop::Close(CloseCode::Abuse));
        }
        Ok(())
    }

    async fn on_inbound(&mut self, inbound: Inbound) -> Step {
        // A command may subscribe, unsubscribe or answer: no live frame may
        // pass it on the lane meanwhile.
        self.socket.hold_lane();
        self.last_seen = Instant::now();
        match inbound {
            Inbound::Text(text) => self.on_text(&text).await,
            Inbound::Binary => {
                self.strike()?;
                self.send_error(
                    None,
                    &CommandError::bad_request("binary frames are not supported; send JSON text"),
                )
                .await
            }
            Inbound::Control => self.charge_control(),
            Inbound::Closed => Err(Stop::Gone),
            // 1009 is a Herald close code too (SPEC §3): it gets its
            // `disconnect`, with `reconnect: false`.
            Inbound::Protocol(Violation::TooBig) => Err(Stop::Close(CloseCode::FrameTooLarge)),
            Inbound::Protocol(v) => Err(Stop::Violation(v)),
        }
    }

    /// Pings, pongs and unfinished fragments cost a command token like any
    /// command, before `connect` too: each costs the server a wakeup and a
    /// decode, and a flood of them once kept a core busy. Over budget they
    /// are strikes (no error frame: there is no command to answer).
    fn charge_control(&mut self) -> Step {
        if self.bucket.take() {
            return Ok(());
        }
        self.strike()
    }

    async fn on_text(&mut self, text: &str) -> Step {
        let envelope = match parse_command(text) {
            Ok(e) => e,
            Err((id, e)) => {
                self.strike()?;
                return self.send_error(id, &e).await;
            }
        };
        let id = envelope.id;
        if !self.bucket.take() {
            self.node.metrics.rate_limited.inc();
            self.strike()?;
            return self
                .send_error(
                    id,
                    &CommandError::new(ErrorCode::RateLimited, "rate limited: slow down"),
                )
                .await;
        }
        match envelope.command {
            Command::Connect {
                token,
                user,
                notifications_since,
                data,
            } => {
                self.on_connect(id, token, user, notifications_since, data)
                    .await
            }
            Command::Pong => Ok(()),
            // SPEC §3: every command but `connect` waits for `connect`.
            Command::Ping if self.identity.is_some() => self.send(ServerFrame::Pong { id }).await,
            _ if self.identity.is_none() => {
                let e =
                    CommandError::new(ErrorCode::NotConnected, "not connected: send connect first");
                self.send_error(id, &e).await
            }
            Command::Ping => self.send(ServerFrame::Pong { id }).await,
            Command::Subscribe { channel, since } => self.on_subscribe(id, channel, since).await,
            Command::Unsubscribe { channel } => self.on_unsubscribe(id, &channel).await,
            Command::Publish { channel, data } => self.on_publish(id, channel, data.get()).await,
            Command::Refresh { token } => self.on_refresh(id, &token).await,
            Command::Presence { channel } => self.on_presence(id, &channel, false).await,
            Command::PresenceStats { channel } => self.on_presence(id, &channel, true).await,
            Command::Ack { cursor } => self.on_ack(id, &cursor).await,
        }
    }

    async fn on_connect(
        &mut self,
        id: Option<u64>,
        token: Option<String>,
        user: Option<String>,
        notifications_since: Option<Cursor>,
        data: Option<Box<serde_json::value::RawValue>>,
    ) -> Step {
        if self.identity.is_some() {
            return self
                .send_error(id, &CommandError::bad_request("already connected"))
                .await;
        }
        // Kept until `connect`, whatever it says: they are credentials.
        let upgrade = self.socket.take_upgrade_headers();
        let node = self.node.clone();
        let config = node.config();
        // A refused token closes the session below, so past that a token
        // means a verified one (and a proxied connect, a user the backend named).
        let mut has_token = token.is_some();
        let identity = match (token, user) {
            (Some(token), _) => match self.node.auth.verify(&token) {
                Ok(identity) => identity,
                Err(e) => {
                    return self
                        .refuse(
                            id,
                            &CommandError::new(e.code(), e.to_string()),
                            CloseCode::Unauthorized,
                        )
                        .await
                }
            },
            (None, Some(user)) if config.dev => Identity::unverified(Some(user)),
            (None, Some(_)) => {
                let e = CommandError::new(
                    ErrorCode::Unauthorized,
                    "naming a user without a token is allowed in dev mode only",
                );
                return self.refuse(id, &e, CloseCode::Unauthorized).await;
            }
            (None, None) if config.proxy.connect_url.is_some() => {
                let client = format!("{:x}", self.conn.id);
                let asked = node
                    .authenticate_connect(&client, data.as_deref(), upgrade.as_deref())
                    .await;
                match asked {
                    Connect::Identity(identity) => {
                        has_token = identity.user.is_some();
                        identity
                    }
                    Connect::Denied(e) => {
                        return self.refuse(id, &e, CloseCode::Unauthorized).await
                    }
                    Connect::Unavailable(e) => {
                        return self.refuse(id, &e, CloseCode::Shutdown).await
                    }
                }
            }
            (None, None) if config.dev || config.auth.allow_anonymous => Identity::unverified(None),
            (None, None) => {
                let e = CommandError::new(ErrorCode::Unauthorized, "a token is required");
                return self.refuse(id, &e, CloseCode::Unauthorized).await;
            }
        };
        match self.node.open_session(identity.user.as_deref(), &self.conn) {
            Ok(slot) => self.slot = Some(slot),
            Err(e) => return self.refuse(id, &e, CloseCode::ConnectionLimit).await,
        }
        if has_token {
            self.ip_slot = None;
        }
        self.schedule_expiry(identity.expires_at);
        let user = identity.user.clone();
        if let Some(user) = &user {
            tracing::Span::current().record("user", user.as_str());
        }
        tracing::debug!(anonymous = user.is_none(), "connected");
        self.identity = Some(identity);
        let client = format!("{:x}", self.conn.id);
        let ping_interval = config.heartbeat.ping_interval.as_secs().max(1);
        let Some(user) = user else {
            let frame = ServerFrame::Connected {
                id,
                client: &client,
                user: None,
                ping_interval,
                notifications: None,
            };
            return self.send(frame).await;
        };
        let inbox = inbox_key(&user);
        let recovery = match self.listen(&inbox, notifications_since.as_ref()).await {
            Ok(r) => r,
            Err(e) => return self.refuse(id, &e, CloseCode::Shutdown).await,
        };
        self.inbox = Some(inbox.clone());
        let unread = match self.node.unread(&user).await {
            Ok(n) => n,
            Err(e) => {
                let e = CommandError::new(ErrorCode::Internal, e.to_string());
                return self.refuse(id, &e, CloseCode::Shutdown).await;
            }
        };
        let state = NotificationsState {
            unread,
            cursor: Cursor::new(recovery.epoch.to_string(), recovery.offset).to_string(),
            recovered: recovery.recovered,
            missed: recovery.missed,
        };
        let connected = ServerFrame::Connected {
            id,
            client: &client,
            user: Some(&user),
            ping_interval,
            notifications: Some(state),
        };
        let head = Utf8Bytes::from(connected.to_json());
        // Only a resume replays: a connect without `notifications_since`
        // shows the client nothing of what was stored before it.
        let replayed = (recovery.missed > 0).then(|| (recovery.epoch.clone(), recovery.offset));
        self.replay(head, &inbox, recovery).await?;
        if let Some((epoch, offset)) = replayed {
            self.node.notifications_delivered(&inbox, &epoch, offset);
        }
        Ok(())
    }

    /// Sends `head` (the `connected` or `subscribed` frame) and the replay
    /// after it, page by page as the socket drains: a resume of a huge
    /// history holds one page (`limits.outbound_queue_bytes`) per connection,
    /// and a reader that cannot keep up meets the write deadline (4003).
    async fn replay(&mut self, head: Utf8Bytes, stream: &Arc<str>, recovery: Recovery) -> Step {
        let Recovery {
            epoch,
            offset: until,
            messages,
            ..
        } = recovery;
        let mut frames = vec![head];
        let mut page = messages;
        while let Some(last) = page.last().map(|m| m.offset) {
            frames.extend(page.iter().map(|m| encode_replayed(stream, &epoch, m)));
            self.write(std::mem::take(&mut frames)).await?;
            if last >= until {
                break;
            }
            let max_bytes = self.node.config().limits.outbound_queue_bytes;
            let next = match self.node.replay_page(stream, last, max_bytes).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "replay failed");
                    return Err(Stop::Close(CloseCode::SlowConsumer));
                }
            };
            let continues = *next.epoch == *epoch
                && next.messages.first().is_some_and(|m| m.offset == last + 1);
            if !continues {
                // History moved on under a slow replay (trimmed or removed):
                // never a silent gap. 4003 makes the client resume by cursor,
                // and that resume says `recovered: false`.
                return Err(Stop::Close(CloseCode::SlowConsumer));
            }
            page = next.messages;
            page.retain(|m| m.offset <= until);
        }
        if !frames.is_empty() {
            self.write(frames).await?;
        }
        Ok(())
    }

    /// Subscribes to `stream` in the hub, then reads what was missed (the
    /// first page of it; [`Session::replay`] sends the rest).
    async fn listen(
        &mut self,
        stream: &Arc<str>,
        since: Option<&Cursor>,
    ) -> Result<Recovery, CommandError> {
        self.node.hub.subscribe(stream, &self.conn);
        let max_bytes = self.node.config().limits.outbound_queue_bytes;
        match self.node.recover(stream, since, max_bytes).await {
            Ok(recovery) => {
                self.streams.insert(stream.clone(), recovery.offset);
                Ok(recovery)
            }
            Err(e) => {
                self.node.hub.unsubscribe(stream, self.conn.id);
                tracing::warn!(error = %e, "recovery failed");
                Err(CommandError::new(
                    ErrorCode::Internal,
                    "history is unavailable; try again",
                ))
            }
        }
    }

    async fn on_subscribe(
        &mut self,
        id: Option<u64>,
        channel: String,
        since: Option<Cursor>,
    ) -> Step {
        let channels = self.streams.conn.mark_count() - usize::from(self.inbox.is_some());
        let checked = if self.streams.conn.has_mark(channel.as_str()) {
            Err(CommandError::new(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {channel}"),
            ))
        } else if channels >= self.node.config().limits.max_subscriptions_per_connection {
            Err(CommandError::new(
                ErrorCode::LimitExceeded,
                "too many subscriptions on this connection",
            ))
        } else {
            Ok(())
        };
        let checked = match checked {
            Ok(()) => {
                let who = self.identity.clone().unwrap_or_default();
                let client = format!("{:x}", self.conn.id);
                self.node
                    .authorize_subscribe(&who, Some(&client), &channel, Transport::WebSocket)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            return self.send_error(id, &e).await;
        }
        let stream: Arc<str> = channel.into();
        let recovery = match self.listen(&stream, since.as_ref()).await {
            Ok(r) => r,
            Err(e) => return self.send_error(id, &e).await,
        };
        let who = self.identity.clone().unwrap_or_default();
        match self.node.presence_join(&stream, self.conn.id, &who).await {
            Ok(Some(member)) => self.presence.push(member),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "presence join failed");
                self.streams.remove(&stream);
                let e =
                    CommandError::new(ErrorCode::Internal, "presence is unavailable; try again");
                return self.send_error(id, &e).await;
            }
        }
        let subscribed = ServerFrame::Subscribed {
            id,
            channel: &stream,
            cursor: Cursor::new(recovery.epoch.to_string(), recovery.offset).to_string(),
            recovered: recovery.recovered,
            missed: recovery.missed,
        };
        let head = Utf8Bytes::from(subscribed.to_json());
        self.replay(head, &stream, recovery).await
    }

    async fn on_unsubscribe(&mut self, id: Option<u64>, channel: &str) -> Step {
        if !self.streams.remove(channel) {
            let e = CommandError::new(
                ErrorCode::NotSubscribed,
                format!("not subscribed to {channel}"),
            );
            return self.send_error(id, &e).await;
        }
        if let Some(i) = self.presence.iter().position(|m| m.channel() == channel) {
            self.presence.swap_remove(i).leave().await;
        }
        self.send(ServerFrame::Unsubscribed { id, channel }).await
    }

    /// `presence` and `presence_stats` (SPEC §11), cluster-wide.
    /// `ack` (SPEC §11): moves the user's read cursor, answers the unread
    /// count. Anonymous connections have no inbox: 1002.
    async fn on_ack(&mut self, id: Option<u64>, cursor: &Cursor) -> Step {
        let user = self.identity.as_ref().and_then(|i| i.user.clone());
        let Some(user) = user else {
            let e = CommandError::new(
                ErrorCode::PermissionDenied,
                "anonymous connections have no notifications to mark read",
            );
            return self.send_error(id, &e).await;
        };
        match self.node.mark_read(&user, cursor).await {
            Ok(unread) => self.send(ServerFrame::Acked { id, unread }).await,
            Err(e) => {
                tracing::warn!(error = %e, "marking notifications read failed");
                let e =
                    CommandError::new(ErrorCode::Internal, "read state is unavailable; try again");
                self.send_error(id, &e).await
            }
        }
    }

    async fn on_presence(&mut self, id: Option<u64>, channel: &str, stats: bool) -> Step {
        let who = self.identity.clone().unwrap_or_default();
        let client = format!("{:x}", self.conn.id);
        if let Err(e) = self
            .node
            .authorize_presence(&who, Some(&client), channel, Transport::WebSocket)
            .await
        {
            return self.send_error(id, &e).await;
        }
        let cap = if stats { 0 } else { MAX_LISTED };
        let snapshot = match self.node.presence_snapshot(channel, cap).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "presence read failed");
                let e =
                    CommandError::new(ErrorCode::Internal, "presence is unavailable; try again");
                return self.send_error(id, &e).await;
            }
        };
        let frame = if stats {
            encode_presence_stats_frame(id, channel, snapshot.total, snapshot.users)
        } else {
            encode_presence_frame(
                id,
                channel,
                &snapshot.clients,
                snapshot.users,
                snapshot.total,
            )
        };
        self.write(vec![Utf8Bytes::from(frame)]).await
    }

    async fn on_publish(&mut self, id: Option<u64>, channel: String, data: &str) -> Step {
        let who = self.identity.clone().unwrap_or_default();
        let client = format!("{:x}", self.conn.id);
        let allowed = match self
            .node
            .authorize_client_publish(&who, Some(&client), &channel)
            .await
        {
            Ok(()) => self.node.take_client_publish(&who, self.conn.id),
            Err(e) => Err(e),
        };
        if let Err(e) = allowed {
            return self.send_error(id, &e).await;
        }
        let item = PublishItem::Broadcast {
            channel,
            data: data.to_owned(),
        };
        match self.node.publish_one(item).await {
            Ok(p) => {
                self.send(ServerFrame::Published {
                    id,
                    channel: &p.stream,
                    offset: p.offset,
                })
                .await
            }
            Err(NodeError::Rejected(e)) => self.send_error(id, &e).await,
            Err(NodeError::Engine(_)) => {
                let e =
                    CommandError::new(ErrorCode::Internal, "publishing is unavailable; try again");
                self.send_error(id, &e).await
            }
        }
    }

    async fn on_refresh(&mut self, id: Option<u64>, token: &str) -> Step {
        let fresh = match self.node.auth.verify(token) {
            Ok(fresh) => fresh,
            Err(e) => {
                return self
                    .send_error(id, &CommandError::new(e.code(), e.to_string()))
                    .await
            }
        };
        let current = self.identity.as_ref().and_then(|i| i.user.as_deref());
        if current != fresh.user.as_deref() {
            let e = CommandError::new(
                ErrorCode::PermissionDenied,
                "refresh token is for another user",
            );
            return self.send_error(id, &e).await;
        }
        self.schedule_expiry(fresh.expires_at);
        self.identity = Some(fresh);
        self.send(ServerFrame::Refreshed { id }).await
    }
}

/// One replayed message's frame: a `notification` on the inbox, else a `message`.
fn encode_replayed(stream: &str, epoch: &str, m: &crate::engine::StoredMessage) -> Utf8Bytes {
    if stream.starts_with(INBOX_PREFIX) {
        encode_notification_frame(epoch, m.offset, m.ts, &m.data).into()
    } else {
        encode_message_frame(stream, epoch, m.offset, m.ts, &m.data).into()
    }
}

/// The streams a connection listens to in the hub. Their marks (the last
/// offset sent on each) live in the [`Conn`], where the fan-out's direct
/// writes see them too. A replay runs inside its command, before any live
/// frame is forwarded, so the mark is set to the replay's end at once: live
/// frames up to there are the replay's to send.
///
/// Leaving the hub is this value's `Drop`, not the last lines of the
/// session: a panic or an early return anywhere in a session must never
/// leave a subscription behind.
struct Streams {
    node: Arc<Node>,
    conn: Arc<Conn>,
}

impl Streams {
    /// Records a new subscription whose replay ends at `replay_end`.
    fn insert(&mut self, stream: Arc<str>, replay_end: u64) {
        self.conn.set_mark(stream, replay_end);
    }

    /// Leaves `stream`; false when it was not listened to.
    fn remove(&mut self, stream: &str) -> bool {
        let known = self.conn.remove_mark(stream);
        if known {
            self.node.hub.unsubscribe(stream, self.conn.id);
        }
        known
    }

    fn leave_all(&mut self) {
        for stream in self.conn.take_marks() {
            self.node.hub.unsubscribe(&stream, self.conn.id);
        }
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.leave_all();
    }
}

/// Per-connection command budget: `rate` per second, bursts up to `burst`.
struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: burst as f64,
            rate: rate as f64,
            burst: burst as f64,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(10, 3);
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
        b.last -= Duration::from_millis(250);
        assert!(b.take() && b.take());
        assert!(!b.take());
    }
}
