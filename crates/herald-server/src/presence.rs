//! Presence (SPEC §11): who is subscribed to a channel, and whether a user
//! is online.
//!
//! A client's entry `{"client","user","info"}` exists while it is
//! subscribed to a channel of a namespace with `presence` (or
//! `join_leave`). It is added at `subscribe` and held by a [`Member`]: the
//! entry goes when the member is dropped, whatever the path out of the
//! subscription (unsubscribe, disconnect, abort, slow-consumer close,
//! shutdown). Entries are bounded by the subscription budgets
//! (`limits.max_connections` × `limits.max_subscriptions_per_connection`)
//! and each is at most ~1.3 KiB (`info` ≤ [`crate::auth::MAX_INFO_BYTES`]);
//! the gauge `herald_presence_entries` counts this node's.
//!
//! Single-node engines keep presence here, in memory ([`Local`]). The redis
//! engine keeps it in Redis for the whole cluster ([`PresenceStore`]); this
//! node's own entries are still listed here, and rewritten every third of
//! `presence.ttl` so that a killed node's entries expire by themselves.

use std::collections::HashMap;
use std::sync::Arc;

use herald_protocol::{encode_presence_event, CommandError, ErrorCode, PresenceEvent};
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;

use crate::auth::Identity;
use crate::engine::{EngineError, FanoutSink, PresenceSnapshot, RefreshChannel};
use crate::node::Node;

/// Most entries a `presence` answer lists; `total` and `users` stay exact.
pub const MAX_LISTED: usize = 1000;

/// The client id a connection is told in `connected` (and shown in presence).
pub fn client_id(conn: u64) -> String {
    format!("{conn:x}")
}

/// One client's presence entry, encoded once.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The client id.
    pub client: Arc<str>,
    /// The user id, `""` when anonymous.
    pub user: Arc<str>,
    /// `{"client":…,"user":…,"info":…}`.
    pub json: Arc<str>,
}

impl Entry {
    pub(crate) fn new(conn: u64, who: &Identity) -> Self {
        let client = client_id(conn);
        let user = who.user.as_deref().unwrap_or("");
        let json = format!(
            r#"{{"client":"{client}","user":{},"info":{}}}"#,
            serde_json::to_string(user).unwrap_or_else(|_| "\"\"".into()),
            who.info.as_deref().unwrap_or("null")
        );
        Self {
            client: client.into(),
            user: user.into(),
            json: json.into(),
        }
    }
}

#[derive(Debug, Default)]
struct ChannelEntries {
    by_conn: HashMap<u64, Entry>,
    /// Entries per user (anonymous clients not counted), for an exact `users`.
    users: HashMap<Arc<str>, u32>,
}

/// This node's presence entries by channel.
#[derive(Debug)]
pub struct Local {
    channels: Mutex<HashMap<Arc<str>, ChannelEntries>>,
    gauge: Gauge,
}

impl Local {
    /// An empty table counted in `gauge`.
    pub fn new(gauge: Gauge) -> Self {
        Self {
            channels: Mutex::new(HashMap::new()),
            gauge,
        }
    }

    fn insert(&self, channel: &Arc<str>, conn: u64, entry: Entry) {
        let mut channels = self.channels.lock();
        let c = channels.entry(channel.clone()).or_default();
        if !entry.user.is_empty() {
            *c.users.entry(entry.user.clone()).or_default() += 1;
        }
        if let Some(old) = c.by_conn.insert(conn, entry) {
            // Not expected (one subscription per channel and connection);
            // kept exact all the same.
            forget_user(&mut c.users, &old.user);
        } else {
            self.gauge.inc();
        }
    }

    fn remove(&self, channel: &str, conn: u64) -> Option<Entry> {
        let mut channels = self.channels.lock();
        let c = channels.get_mut(channel)?;
        let entry = c.by_conn.remove(&conn)?;
        self.gauge.dec();
        forget_user(&mut c.users, &entry.user);
        if c.by_conn.is_empty() {
            channels.remove(channel);
        }
        Some(entry)
    }

    fn snapshot(&self, channel: &str, cap: usize) -> PresenceSnapshot {
        let channels = self.channels.lock();
        let Some(c) = channels.get(channel) else {
            return PresenceSnapshot::default();
        };
        PresenceSnapshot {
            clients: c
                .by_conn
                .values()
                .take(cap)
                .map(|e| e.json.clone())
                .collect(),
            users: c.users.len() as u64,
            total: c.by_conn.len() as u64,
        }
    }

    /// Every channel with its clients, for the refresher.
    fn all(&self, node: &Node) -> Vec<RefreshChannel> {
        self.channels
            .lock()
            .iter()
            .map(|(channel, c)| RefreshChannel {
                channel: channel.clone(),
                join_leave: node.namespace(channel).join_leave,
                clients: c.by_conn.values().map(|e| e.client.clone()).collect(),
            })
            .collect()
    }

    /// Entries on this node, all channels together.
    pub fn len(&self) -> usize {
        self.channels.lock().values().map(|c| c.by_conn.len()).sum()
    }

    /// Whether this node holds no entry.
    pub fn is_empty(&self) -> bool {
        self.channels.lock().is_empty()
    }
}

fn forget_user(users: &mut HashMap<Arc<str>, u32>, user: &str) {
    if user.is_empty() {
        return;
    }
    if let Some(n) = users.get_mut(user) {
        *n -= 1;
        if *n == 0 {
            users.remove(user);
        }
    }
}

/// A client's place in a channel's presence: its entry goes (and `leave`
/// is pushed, with `join_leave`) when this is dropped, on every path out.
#[derive(Debug)]
pub struct Member {
    node: Arc<Node>,
    channel: Arc<str>,
    conn: u64,
    armed: bool,
}

impl Member {
    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Leaves now and waits until the cluster knows (an `unsubscribe`, so a
    /// subscribe that follows cannot be overtaken by this leave).
    pub async fn leave(mut self) {
        self.armed = false;
        self.node.presence_left(&self.channel, self.conn).await;
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The local entry goes at once (the refresher must not renew it,
        // and a single node pushes `leave` here); the remote one in a
        // tracked task, so shutdown waits for it.
        let Some(remote) = self.node.presence_leave_local(&self.channel, self.conn) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.node.tracker().spawn_on(remote, &runtime);
            }
            // No runtime (a process tearing down): the remote entry expires
            // within `presence.ttl`.
            Err(_) => drop(remote),
        }
    }
}

impl Node {
    /// Whether `who` may ask who is in `channel`: as for subscribing
    /// (1002), and only where the namespace keeps presence (1012).
    pub async fn authorize_presence(
        &self,
        who: &Identity,
        client: Option<&str>,
        channel: &str,
        transport: crate::proxy::Transport,
    ) -> Result<(), CommandError> {
        self.authorize_subscribe(who, client, channel, transport)
            .await?;
        self.presence_enabled(channel)
    }

    /// Whether `channel`'s namespace keeps presence (1012 where not).
    pub fn presence_enabled(&self, channel: &str) -> Result<(), CommandError> {
        if !self.namespace(channel).presence {
            return Err(CommandError::new(
                ErrorCode::NotEnabled,
                format!("presence is not enabled for the namespace of channel {channel}"),
            ));
        }
        Ok(())
    }

    /// Adds connection `conn` of `who` to `channel`'s presence (when its
    /// namespace keeps presence) and pushes `join` to the other subscribers
    /// (with `join_leave`). Call after subscribing the connection in the hub.
    pub(crate) async fn presence_join(
        self: &Arc<Self>,
        channel: &Arc<str>,
        conn: u64,
        who: &Identity,
    ) -> Result<Option<Member>, EngineError> {
        let policy = self.namespace(channel);
        if !policy.presence {
            return Ok(None);
        }
        let entry = Entry::new(conn, who);
        let event = policy
            .join_leave
            .then(|| encode_presence_event(PresenceEvent::Join, channel, &entry.json));
        match self.engine.presence() {
            None => {
                self.presence.insert(channel, conn, entry);
                if let Some(frame) = event {
                    self.hub.deliver_event(channel, conn, frame);
                }
            }
            Some(store) => {
                store
                    .join(
                        channel,
                        &entry,
                        conn,
                        event.as_deref(),
                        self.config.presence.ttl,
                    )
                    .await
                    .inspect_err(|_| {
                        self.metrics.engine_errors.inc();
                    })?;
                self.presence.insert(channel, conn, entry);
            }
        }
        Ok(Some(Member {
            node: self.clone(),
            channel: channel.clone(),
            conn,
            armed: true,
        }))
    }

    /// Removes the local entry and pushes `leave` on a single node; on the
    /// redis engine, returns the removal to run.
    fn presence_leave_local(
        self: &Arc<Self>,
        channel: &Arc<str>,
        conn: u64,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let entry = self.presence.remove(channel, conn)?;
        let event = self
            .namespace(channel)
            .join_leave
            .then(|| encode_presence_event(PresenceEvent::Leave, channel, &entry.json));
        if self.engine.presence().is_none() {
            if let Some(frame) = event {
                self.hub.deliver_event(channel, conn, frame);
            }
            return None;
        }
        let (node, channel) = (self.clone(), channel.clone());
        Some(async move {
            let Some(store) = node.engine.presence() else {
                return;
            };
            if let Err(e) = store
                .leave(&channel, &entry.client, conn, event.as_deref())
                .await
            {
                node.metrics.engine_errors.inc();
                tracing::warn!(error = %e, %channel, "cannot remove a presence entry now; it expires within presence.ttl");
            }
        })
    }

    async fn presence_left(self: &Arc<Self>, channel: &Arc<str>, conn: u64) {
        if let Some(remote) = self.presence_leave_local(channel, conn) {
            remote.await;
        }
    }

    /// Who is in `channel` (at most `cap` entries listed; counts exact),
    /// cluster-wide on the redis engine.
    pub async fn presence_snapshot(
        &self,
        channel: &str,
        cap: usize,
    ) -> Result<PresenceSnapshot, EngineError> {
        match self.engine.presence() {
            None => Ok(self.presence.snapshot(channel, cap)),
            Some(store) => store.read(channel, cap).await.inspect_err(|_| {
                self.metrics.engine_errors.inc();
            }),
        }
    }

    /// How many connections `user` has open (cluster-wide on the redis engine).
    pub async fn user_connections(&self, user: &str) -> Result<u64, EngineError> {
        match self.engine.presence() {
            None => Ok(self.users.sessions(user).len() as u64),
            Some(store) => store.user_connections(user).await.inspect_err(|_| {
                self.metrics.engine_errors.inc();
            }),
        }
    }

    /// Records a session of `user` for the cluster's online status (redis
    /// engine only; a single node reads its own session table). Returns the
    /// task, for [`Node::user_offline`] to wait on.
    pub(crate) fn user_online(
        self: &Arc<Self>,
        user: &str,
        conn: u64,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.user_status_change(user, conn, None)
    }

    /// The other half of [`Node::user_online`]: runs after `online` (so a
    /// session that closes at once never leaves its record behind).
    pub(crate) fn user_offline(
        self: &Arc<Self>,
        user: &str,
        conn: u64,
        online: Option<tokio::task::JoinHandle<()>>,
    ) {
        self.user_status_change(user, conn, Some(online));
    }

    /// `after: None` records the session; `Some(online)` forgets it once
    /// the `online` task is done.
    fn user_status_change(
        self: &Arc<Self>,
        user: &str,
        conn: u64,
        after: Option<Option<tokio::task::JoinHandle<()>>>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.engine.presence()?;
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (node, user) = (self.clone(), user.to_owned());
        let task = async move {
            let Some(store) = node.engine.presence() else {
                return;
            };
            let client = client_id(conn);
            let done = match after {
                None => {
                    store
                        .user_online(&user, &client, node.config.presence.ttl)
                        .await
                }
                Some(online) => {
                    if let Some(online) = online {
                        let _ = online.await;
                    }
                    store.user_offline(&user, &client).await
                }
            };
            if let Err(e) = done {
                node.metrics.engine_errors.inc();
                tracing::warn!(error = %e, "cannot record online status now; it settles within presence.ttl");
            }
        };
        Some(self.tracker().spawn_on(task, &runtime))
    }

    /// Rewrites the expiry of this node's presence entries and sessions in
    /// the cluster (redis engine; a no-op otherwise). Called every third of
    /// `presence.ttl`.
    pub async fn refresh_presence(&self) {
        let Some(store) = self.engine.presence() else {
            return;
        };
        let channels = self.presence.all(self);
        let users = self.users.all_clients();
        if let Err(e) = store
            .refresh(&channels, &users, self.config.presence.ttl)
            .await
        {
            self.metrics.engine_errors.inc();
            tracing::warn!(error = %e, "cannot refresh presence now");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_stay_exact_and_the_gauge_follows() {
        let gauge = Gauge::default();
        let local = Local::new(gauge.clone());
        let c: Arc<str> = "chat:1".into();
        let who = |u: Option<&str>| Identity::unverified(u.map(str::to_owned));
        local.insert(&c, 1, Entry::new(1, &who(Some("ann"))));
        local.insert(&c, 2, Entry::new(2, &who(Some("ann"))));
        local.insert(&c, 3, Entry::new(3, &who(None)));
        local.insert(&c, 4, Entry::new(4, &who(Some("bob"))));
        let s = local.snapshot("chat:1", 2);
        assert_eq!((s.clients.len(), s.users, s.total), (2, 2, 4));
        assert_eq!(gauge.get(), 4);
        assert!(local.remove("chat:1", 1).is_some());
        assert!(local.remove("chat:1", 1).is_none(), "once");
        assert_eq!(local.snapshot("chat:1", 10).users, 2);
        local.remove("chat:1", 2);
        assert_eq!(local.snapshot("chat:1", 10).users, 1, "ann left");
        local.remove("chat:1", 3);
        local.remove("chat:1", 4);
        assert!(local.is_empty(), "an empty channel is forgotten");
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn an_entry_is_json_with_the_user_escaped() {
        let who = Identity {
            user: Some("a\"b".into()),
            info: Some(r#"{"n":1}"#.into()),
            ..Identity::default()
        };
        let e = Entry::new(255, &who);
        let v: serde_json::Value = serde_json::from_str(&e.json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"client":"ff","user":"a\"b","info":{"n":1}})
        );
    }
}
