//! Client → server commands (SPEC §3) and their parser.
//!
//! Parsing is strict about what it needs and lenient about what it doesn't:
//! unknown fields are ignored, a wrong or missing field is error 1000 naming the
//! field, and a valid `id` is echoed even when the rest of the command is bad.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::channel::{validate_channel, validate_user_id};
use crate::codes::ErrorCode;
use crate::cursor::Cursor;

/// Largest command `id` accepted: 2^53 − 1, the largest integer JavaScript
/// represents exactly.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// An error that becomes an `error` frame (or an HTTP error body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct CommandError {
    /// The protocol error code.
    pub code: ErrorCode,
    /// What was wrong, for a human.
    pub message: String,
}

impl CommandError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Error 1000 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

/// A command from a client.
#[derive(Debug)]
pub enum Command {
    /// Authenticate; must be the first command.
    Connect {
        /// The client JWT, where required.
        token: Option<String>,
        /// A user named without a token (dev mode only).
        user: Option<String>,
        /// Resume the notification inbox from here.
        notifications_since: Option<Cursor>,
        /// Anything the client wants the connect proxy to see (SPEC §11);
        /// bounded by the frame limit. `null` is the same as absent.
        data: Option<Box<RawValue>>,
    },
    /// Subscribe to a channel, optionally resuming from a cursor.
    Subscribe {
        /// A valid channel name.
        channel: String,
        /// Resume from here.
        since: Option<Cursor>,
    },
    /// Leave a channel.
    Unsubscribe {
        /// A valid channel name.
        channel: String,
    },
    /// Publish to a channel (only where the namespace allows client publish).
    Publish {
        /// A valid channel name.
        channel: String,
        /// Any JSON value, kept as the client sent it.
        data: Box<RawValue>,
    },
    /// Replace the connection's token before it expires.
    Refresh {
        /// The new JWT.
        token: String,
    },
    /// Who is in a channel (SPEC §11): its presence entries.
    Presence {
        /// A valid channel name.
        channel: String,
    },
    /// How many clients and users are in a channel (SPEC §11).
    PresenceStats {
        /// A valid channel name.
        channel: String,
    },
    /// Marks the user's notifications read up to `cursor` (SPEC §11);
    /// answered with `acked` and the unread count.
    Ack {
        /// The newest notification read.
        cursor: Cursor,
    },
    /// Client-side liveness check; answered with `pong`.
    Ping,
    /// Answer to the server's `ping`.
    Pong,
}

/// A parsed command with its optional `id`.
#[derive(Debug)]
pub struct Envelope {
    /// The command's `id`, echoed in the reply.
    pub id: Option<u64>,
    /// The command.
    pub command: Command,
}

/// Every field any command may carry; each is checked by hand so the error can
/// name the field. `Value` rather than typed fields so a wrong type becomes our
/// error message, not serde's.
#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    token: Option<Value>,
    #[serde(default)]
    user: Option<Value>,
    #[serde(default)]
    channel: Option<Value>,
    #[serde(default)]
    since: Option<Value>,
    #[serde(default)]
    notifications_since: Option<Value>,
    #[serde(default)]
    cursor: Option<Value>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// Parses one text frame. On error, returns the frame's `id` when it had a
/// valid one, so the error reply can carry it.
pub fn parse_command(text: &str) -> Result<Envelope, (Option<u64>, CommandError)> {
    // serde accepts a JSON array for a struct (as a tuple); the protocol doesn't.
    let trimmed = text.trim_start_matches([' ', '\t', '\n', '\r']);
    if !trimmed.starts_with('{') {
        let not_json = serde_json::from_str::<serde::de::IgnoredAny>(text).is_err();
        let message = if not_json {
            "frame is not valid JSON"
        } else {
            "frame is not a JSON object"
        };
        return Err((None, CommandError::bad_request(message)));
    }
    let raw: RawCommand<'_> = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) if e.is_syntax() || e.is_eof() => {
            return Err((None, CommandError::bad_request("frame is not valid JSON")))
        }
        Err(_) => {
            return Err((
                None,
                CommandError::bad_request("frame is not a JSON object"),
            ))
        }
    };
    let id = match &raw.id {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(id) if id <= MAX_ID => Some(id),
            _ => {
                return Err((
                    None,
                    CommandError::bad_request("id must be an integer from 0 to 2^53-1"),
                ))
            }
        },
        Some(_) => {
            return Err((
                None,
                CommandError::bad_request("id must be an integer from 0 to 2^53-1"),
            ))
        }
    };
    build(&raw)
        .map(|command| Envelope { id, command })
        .map_err(|e| (id, e))
}

fn build(raw: &RawCommand<'_>) -> Result<Command, CommandError> {
    let kind = match &raw.kind {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(CommandError::bad_request("type must be a string")),
        None => return Err(CommandError::bad_request("missing field: type")),
    };
    Ok(match kind {
        "connect" => Command::Connect {
            token: optional_string(&raw.token, "token")?,
            user: match optional_string(&raw.user, "user")? {
                Some(u) => {
                    validate_user_id(&u)?;
                    Some(u)
                }
                None => None,
            },
            notifications_since: optional_cursor(&raw.notifications_since, "notifications_since")?,
            data: raw.data.filter(|d| d.get() != "null").map(|d| d.to_owned()),
        },
        "subscribe" => Command::Subscribe {
            channel: channel(&raw.channel)?,
            since: optional_cursor(&raw.since, "since")?,
        },
        "unsubscribe" => Command::Unsubscribe {
            channel: channel(&raw.channel)?,
        },
        "publish" => Command::Publish {
            channel: channel(&raw.channel)?,
            data: raw
                .data
                .map(|d| d.to_owned())
                .ok_or_else(|| CommandError::bad_request("missing field: data"))?,
        },
        "refresh" => Command::Refresh {
            token: optional_string(&raw.token, "token")?
                .ok_or_else(|| CommandError::bad_request("missing field: token"))?,
        },
        "presence" => Command::Presence {
            channel: channel(&raw.channel)?,
        },
        "presence_stats" => Command::PresenceStats {
            channel: channel(&raw.channel)?,
        },
        "ack" => Command::Ack {
            cursor: optional_cursor(&raw.cursor, "cursor")?
                .ok_or_else(|| CommandError::bad_request("missing field: cursor"))?,
        },
        "ping" => Command::Ping,
        "pong" => Command::Pong,
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(CommandError::bad_request(format!(
                "unknown type: {shown:?}"
            )));
        }
    })
}

fn optional_string(v: &Option<Value>, field: &str) -> Result<Option<String>, CommandError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(CommandError::bad_request(format!(
            "{field} must be a string"
        ))),
    }
}

fn optional_cursor(v: &Option<Value>, field: &str) -> Result<Option<Cursor>, CommandError> {
    optional_string(v, field)?
        .map(|s| {
            Cursor::parse(&s).map_err(|_| {
                CommandError::bad_request(format!(
                    "{field} must be a cursor \"{{epoch}}:{{offset}}\""
                ))
            })
        })
        .transpose()
}

fn channel(v: &Option<Value>) -> Result<String, CommandError> {
    let name = optional_string(v, "channel")?
        .ok_or_else(|| CommandError::bad_request("missing field: channel"))?;
    validate_channel(&name)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (Option<u64>, ErrorCode) {
        let (id, e) = parse_command(text).unwrap_err();
        (id, e.code)
    }

    #[test]
    fn parses_every_command_of_the_spec() {
        let e = parse_command(r#"{"type":"connect","id":1,"token":"t"}"#).unwrap();
        assert_eq!(e.id, Some(1));
        assert!(matches!(e.command, Command::Connect { token: Some(ref t), .. } if t == "t"));
        let e =
            parse_command(r#"{"type":"subscribe","id":3,"channel":"venue:42","since":"e7Hq:17"}"#)
                .unwrap();
        assert!(
            matches!(e.command, Command::Subscribe { ref channel, since: Some(ref c) } if channel == "venue:42" && c.offset == 17)
        );
        let e =
            parse_command(r#"{"type":"publish","id":5,"channel":"chat:9","data":{"text":"hi"}}"#)
                .unwrap();
        assert!(
            matches!(e.command, Command::Publish { ref data, .. } if data.get() == r#"{"text":"hi"}"#)
        );
        assert!(matches!(
            parse_command(r#"{"type":"pong"}"#).unwrap().command,
            Command::Pong
        ));
        assert!(matches!(
            parse_command(r#"{"type":"ping","id":7,"extra":[1]}"#)
                .unwrap()
                .command,
            Command::Ping
        ));
        assert!(matches!(
            parse_command(r#"{"type":"presence","id":7,"channel":"chat:1"}"#)
                .unwrap()
                .command,
            Command::Presence { ref channel } if channel == "chat:1"
        ));
        assert!(matches!(
            parse_command(r#"{"type":"presence_stats","id":8,"channel":"chat:1"}"#)
                .unwrap()
                .command,
            Command::PresenceStats { ref channel } if channel == "chat:1"
        ));
        assert!(matches!(
            parse_command(r#"{"type":"ack","id":5,"cursor":"e7Hq:3"}"#)
                .unwrap()
                .command,
            Command::Ack { ref cursor } if cursor.epoch == "e7Hq" && cursor.offset == 3
        ));
        assert_eq!(
            err(r#"{"type":"ack","id":5}"#),
            (Some(5), ErrorCode::BadRequest)
        );
        assert_eq!(
            err(r#"{"type":"presence","id":9,"channel":"bad name"}"#),
            (Some(9), ErrorCode::InvalidChannel)
        );
        assert!(matches!(
            parse_command(r#"{"type":"refresh","id":6,"token":"x"}"#)
                .unwrap()
                .command,
            Command::Refresh { .. }
        ));
        assert!(matches!(
            parse_command(r#"{"type":"unsubscribe","id":4,"channel":"a"}"#)
                .unwrap()
                .command,
            Command::Unsubscribe { .. }
        ));
    }

    #[test]
    fn bad_frames_are_1000_and_keep_a_valid_id() {
        assert_eq!(err("not json"), (None, ErrorCode::BadRequest));
        assert_eq!(err("[1,2]"), (None, ErrorCode::BadRequest));
        assert_eq!(err("42"), (None, ErrorCode::BadRequest));
        assert_eq!(err(r#"{"id":9}"#), (Some(9), ErrorCode::BadRequest));
        assert_eq!(
            err(r#"{"type":"nope","id":9}"#),
            (Some(9), ErrorCode::BadRequest)
        );
        assert_eq!(
            err(r#"{"type":"subscribe","id":9}"#),
            (Some(9), ErrorCode::BadRequest)
        );
        assert_eq!(
            err(r#"{"type":"subscribe","id":9,"channel":5}"#),
            (Some(9), ErrorCode::BadRequest)
        );
        assert_eq!(
            err(r#"{"type":"subscribe","id":9,"channel":"a","since":"bad"}"#),
            (Some(9), ErrorCode::BadRequest)
        );
        assert_eq!(
            err(r#"{"type":"publish","id":9,"channel":"a"}"#),
            (Some(9), ErrorCode::BadRequest)
        );
        assert_eq!(
            err(r#"{"type":"ping","id":-1}"#),
            (None, ErrorCode::BadRequest)
        );
        assert_eq!(
            err(r#"{"type":"ping","id":1.5}"#),
            (None, ErrorCode::BadRequest)
        );
        assert_eq!(
            err(r#"{"type":"ping","id":9007199254740992}"#),
            (None, ErrorCode::BadRequest)
        );
        assert_eq!(
            err(r#"{"type":"ping","id":"1"}"#),
            (None, ErrorCode::BadRequest)
        );
    }

    #[test]
    fn invalid_channel_is_1003() {
        assert_eq!(
            err(r#"{"type":"subscribe","id":2,"channel":"../x"}"#),
            (Some(2), ErrorCode::InvalidChannel)
        );
        assert_eq!(
            err(r#"{"type":"subscribe","id":2,"channel":""}"#),
            (Some(2), ErrorCode::InvalidChannel)
        );
    }

    #[test]
    fn max_id_is_accepted() {
        let e = parse_command(r#"{"type":"ping","id":9007199254740991}"#).unwrap();
        assert_eq!(e.id, Some(MAX_ID));
    }
}
