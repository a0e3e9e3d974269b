//! The live sessions of each user on this node: counted against
//! `limits.max_connections_per_user`, listed by the admin API, and closed
//! by it (`POST /api/admin/users/{id}/disconnect`).
//!
//! A session is in the table from its `connect` until its slot drops, so
//! the count and the list can never disagree, whatever the path out.

use std::collections::HashMap;
use std::sync::Arc;

use herald_protocol::CloseCode;
use parking_lot::Mutex;

use crate::hub::Conn;
use crate::ids::unix_millis;

/// One session of a user.
#[derive(Debug)]
struct Entry {
    conn: Arc<Conn>,
    since_ms: u64,
}

/// A session as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UserSession {
    /// The `client` id the session was told in `connected`.
    pub client: String,
    /// When it connected (Unix ms).
    pub connected_at: u64,
}

/// Sessions by user.
#[derive(Debug, Default)]
pub struct UserSessions {
    by_user: Mutex<HashMap<String, Vec<Entry>>>,
}

impl UserSessions {
    /// Adds `conn` to `user`'s sessions unless the user already has `max`.
    pub fn add(&self, user: &str, conn: &Arc<Conn>, max: usize) -> bool {
        let mut by_user = self.by_user.lock();
        let list = by_user.entry(user.to_owned()).or_default();
        if list.len() >= max {
            if list.is_empty() {
                by_user.remove(user);
            }
            return false;
        }
        list.push(Entry {
            conn: conn.clone(),
            since_ms: unix_millis(),
        });
        true
    }

    /// Removes session `conn_id` of `user`.
    pub fn remove(&self, user: &str, conn_id: u64) {
        let mut by_user = self.by_user.lock();
        if let Some(list) = by_user.get_mut(user) {
            list.retain(|e| e.conn.id != conn_id);
            if list.is_empty() {
                by_user.remove(user);
            }
        }
    }

    /// `user`'s sessions on this node.
    pub fn sessions(&self, user: &str) -> Vec<(u64, UserSession)> {
        let by_user = self.by_user.lock();
        by_user
            .get(user)
            .map(|list| {
                list.iter()
                    .map(|e| {
                        (
                            e.conn.id,
                            UserSession {
                                client: format!("{:x}", e.conn.id),
                                connected_at: e.since_ms,
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every user with the client ids of their sessions (for the presence
    /// refresher of the redis engine).
    pub fn all_clients(&self) -> Vec<(String, Vec<String>)> {
        self.by_user
            .lock()
            .iter()
            .map(|(user, list)| {
                let clients = list
                    .iter()
                    .map(|e| crate::presence::client_id(e.conn.id))
                    .collect();
                (user.clone(), clients)
            })
            .collect()
    }

    /// Asks every session of `user` to close with `code`; how many.
    pub fn kick(&self, user: &str, code: CloseCode) -> usize {
        // Collected first: a kicked session removes itself from the table.
        let conns: Vec<Arc<Conn>> = self
            .by_user
            .lock()
            .get(user)
            .map(|list| list.iter().map(|e| e.conn.clone()).collect())
            .unwrap_or_default();
        for c in &conns {
            c.kick(code);
        }
        conns.len()
    }
}
