//! Server → client frames (SPEC §3).
//!
//! Replies are serialized with serde. The two push frames (`message`,
//! `notification`) are written by hand: they are encoded once per published
//! message and shared by every subscriber, and every part of them except `data`
//! is already known to need no escaping (channel names and epochs are ASCII from
//! a safe alphabet), while `data` is raw JSON kept exactly as published.

use std::fmt::Write;

use serde::Serialize;

/// The inbox position reported in `connected` for an authenticated user.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationsState {
    /// Where the inbox is now (or where the replay will leave it).
    pub cursor: String,
    /// Whether `notifications_since` could be resumed exactly.
    pub recovered: bool,
    /// How many notifications follow as `notification` frames.
    pub missed: u64,
    /// Notifications kept after the user's read cursor (SPEC §11).
    pub unread: u64,
}

/// A reply or control frame from the server.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    /// Answer to `connect`.
    Connected {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        client: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a str>,
        ping_interval: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        notifications: Option<NotificationsState>,
    },
    /// Answer to `subscribe`; `missed` messages follow.
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        cursor: String,
        recovered: bool,
        missed: u64,
    },
    /// Answer to `unsubscribe`.
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
    },
    /// Answer to a client `publish`.
    Published {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        offset: u64,
    },
    /// Answer to `refresh`.
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Answer to `ack`: notifications still unread.
    Acked {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        unread: u64,
    },
    /// Answer to a client `ping`.
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// The server's heartbeat.
    Ping {},
    /// A command failed; the connection stays open unless a `disconnect` follows.
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: u16,
        message: &'a str,
    },
    /// Sent before every close the server initiates.
    Disconnect {
        code: u16,
        reason: &'a str,
        reconnect: bool,
    },
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Encodes a `message` push. `channel` and `epoch` must already be validated
/// (they are written without escaping); `data` must be valid JSON.
pub fn encode_message_frame(
    channel: &str,
    epoch: &str,
    offset: u64,
    ts: u64,
    data: &str,
) -> String {
    let mut s = String::with_capacity(80 + channel.len() * 2 + data.len());
    let _ = write!(
        s,
        r#"{{"type":"message","channel":"{channel}","offset":{offset},"cursor":"{epoch}:{offset}","ts":{ts},"data":{data}}}"#
    );
    s
}

/// Encodes a `notification` push; the same rules as [`encode_message_frame`].
pub fn encode_notification_frame(epoch: &str, offset: u64, ts: u64, data: &str) -> String {
    let mut s = String::with_capacity(80 + data.len());
    let _ = write!(
        s,
        r#"{{"type":"notification","offset":{offset},"cursor":"{epoch}:{offset}","ts":{ts},"data":{data}}}"#
    );
    s
}

/// A `join` or `leave` push (SPEC §11): never stored, no offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceEvent {
    /// A client subscribed.
    Join,
    /// A client left (unsubscribed, disconnected, or its node stopped).
    Leave,
}

/// Encodes a `join` or `leave` push. `channel` must be validated (written
/// without escaping); `entry` is a presence entry's JSON object.
pub fn encode_presence_event(event: PresenceEvent, channel: &str, entry: &str) -> String {
    let kind = match event {
        PresenceEvent::Join => "join",
        PresenceEvent::Leave => "leave",
    };
    format!(r#"{{"type":"{kind}","channel":"{channel}","info":{entry}}}"#)
}

/// Encodes the `presence` reply: `clients` are entries' JSON objects (at
/// most the cap), `users` and `total` the exact counts. `channel` must be
/// validated.
pub fn encode_presence_frame<S: AsRef<str>>(
    id: Option<u64>,
    channel: &str,
    clients: &[S],
    users: u64,
    total: u64,
) -> String {
    let mut s = String::with_capacity(
        96 + channel.len() + clients.iter().map(|c| c.as_ref().len() + 1).sum::<usize>(),
    );
    s.push_str(r#"{"type":"presence","#);
    if let Some(id) = id {
        let _ = write!(s, r#""id":{id},"#);
    }
    let _ = write!(s, r#""channel":"{channel}","clients":["#);
    for (i, c) in clients.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(c.as_ref());
    }
    let _ = write!(s, r#"],"users":{users},"total":{total}}}"#);
    s
}

/// Encodes the `presence_stats` reply. `channel` must be validated.
pub fn encode_presence_stats_frame(
    id: Option<u64>,
    channel: &str,
    clients: u64,
    users: u64,
) -> String {
    let id = id.map(|id| format!(r#""id":{id},"#)).unwrap_or_default();
    format!(
        r#"{{"type":"presence_stats",{id}"channel":"{channel}","clients":{clients},"users":{users}}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn push_frames_are_valid_json_with_the_spec_fields() {
        let f: Value = serde_json::from_str(&encode_message_frame(
            "venue:42",
            "e7Hq",
            18,
            1764100000123,
            r#"{"a":[1,"x"]}"#,
        ))
        .unwrap();
        assert_eq!(
            f,
            json!({"type":"message","channel":"venue:42","offset":18,"cursor":"e7Hq:18","ts":1764100000123u64,"data":{"a":[1,"x"]}})
        );
        let f: Value =
            serde_json::from_str(&encode_notification_frame("u9Xk", 7, 5, "null")).unwrap();
        assert_eq!(
            f,
            json!({"type":"notification","offset":7,"cursor":"u9Xk:7","ts":5,"data":null})
        );
    }

    #[test]
    fn presence_frames_are_valid_json_with_the_spec_fields() {
        let entry = r#"{"client":"a1","user":"u","info":{"name":"A"}}"#;
        let f: Value = serde_json::from_str(&encode_presence_frame(
            Some(7),
            "chat:1",
            &[entry, entry],
            1,
            5,
        ))
        .unwrap();
        assert_eq!(
            f,
            json!({"type":"presence","id":7,"channel":"chat:1","clients":[
                {"client":"a1","user":"u","info":{"name":"A"}},
                {"client":"a1","user":"u","info":{"name":"A"}}],"users":1,"total":5})
        );
        let f: Value =
            serde_json::from_str(&encode_presence_frame::<&str>(None, "c", &[], 0, 0)).unwrap();
        assert_eq!(
            f,
            json!({"type":"presence","channel":"c","clients":[],"users":0,"total":0})
        );
        let f: Value =
            serde_json::from_str(&encode_presence_stats_frame(Some(8), "c", 3, 2)).unwrap();
        assert_eq!(
            f,
            json!({"type":"presence_stats","id":8,"channel":"c","clients":3,"users":2})
        );
        let f: Value =
            serde_json::from_str(&encode_presence_event(PresenceEvent::Leave, "c", entry)).unwrap();
        assert_eq!(f["type"], "leave");
        assert_eq!(f["info"]["client"], "a1");
    }

    #[test]
    fn replies_omit_a_missing_id() {
        let f: Value = serde_json::from_str(&ServerFrame::Pong { id: None }.to_json()).unwrap();
        assert_eq!(f, json!({"type":"pong"}));
        let f: Value = serde_json::from_str(
            &ServerFrame::Error {
                id: Some(2),
                code: 1002,
                message: "no",
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(f, json!({"type":"error","id":2,"code":1002,"message":"no"}));
        let f: Value = serde_json::from_str(&ServerFrame::Ping {}.to_json()).unwrap();
        assert_eq!(f, json!({"type":"ping"}));
    }
}
