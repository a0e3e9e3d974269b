//! Herald's wire protocol: the JSON frames clients and servers exchange, channel
//! names and namespaces, cursors, and the error and close codes of SPEC §3.
//!
//! This crate does no I/O. It is shared by the server, the Rust client and the
//! benchmark so that the three cannot disagree about what a frame means.

mod channel;
mod codes;
mod command;
mod cursor;
mod frames;
mod since;

pub use channel::{
    namespace_of, validate_channel, validate_user_id, MAX_CHANNEL_LEN, MAX_USER_ID_LEN,
};
pub use codes::{CloseCode, ErrorCode};
pub use command::{parse_command, Command, CommandError, Envelope, MAX_ID};
pub use cursor::{Cursor, CursorError};
pub use frames::{
    encode_message_frame, encode_notification_frame, encode_presence_event, encode_presence_frame,
    encode_presence_stats_frame, NotificationsState, PresenceEvent, ServerFrame,
};
pub use since::{Since, SinceError, MAX_SINCE_LEN};
