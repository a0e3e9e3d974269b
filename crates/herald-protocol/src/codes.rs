//! Error codes (in `error` frames and HTTP error bodies) and close codes (SPEC §3).

/// Codes carried by `error` frames and by HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// Not JSON, not an object, unknown `type`, missing or wrong field.
    BadRequest = 1000,
    /// Missing, malformed, badly signed or not-yet-valid token.
    Unauthorized = 1001,
    /// Permission denied for this channel or action.
    PermissionDenied = 1002,
    /// Invalid channel name.
    InvalidChannel = 1003,
    /// A limit was exceeded (subscriptions, connections, …).
    LimitExceeded = 1004,
    /// Rate limited.
    RateLimited = 1005,
    /// Message too large.
    MessageTooLarge = 1006,
    /// Already subscribed.
    AlreadySubscribed = 1007,
    /// Not subscribed.
    NotSubscribed = 1008,
    /// Token expired.
    TokenExpired = 1009,
    /// A command arrived before `connect`.
    NotConnected = 1010,
    /// Internal error; the server stays up.
    Internal = 1011,
    /// The feature is not enabled for this namespace (e.g. presence).
    NotEnabled = 1012,
}

impl ErrorCode {
    /// The numeric code as it goes on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

/// WebSocket close codes; every server-initiated close is preceded by a
/// `disconnect` frame carrying the same code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// Normal closure.
    Normal = 1000,
    /// A frame larger than `max_frame_bytes`.
    FrameTooLarge = 1009,
    /// Server shutdown or restart.
    Shutdown = 4000,
    /// Unauthorized, or no `connect` within `connect_timeout`.
    Unauthorized = 4001,
    /// No frame within `ping_interval + pong_timeout`.
    HeartbeatTimeout = 4002,
    /// The outbound queue overflowed.
    SlowConsumer = 4003,
    /// Sustained rate-limit violations or repeated protocol errors.
    Abuse = 4004,
    /// The token expired and was not refreshed.
    TokenExpired = 4005,
    /// Connection limit reached, per user or in total.
    ConnectionLimit = 4006,
    /// Disconnected by an operator (the admin API).
    Operator = 4007,
}

impl CloseCode {
    /// The numeric code as it goes on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Whether a client should reconnect after this close (SPEC §3 table).
    pub fn reconnect(self) -> bool {
        !matches!(
            self,
            Self::Normal | Self::FrameTooLarge | Self::Unauthorized | Self::Operator
        )
    }

    /// The human-readable reason sent with the close.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Normal => "normal closure",
            Self::FrameTooLarge => "frame too large",
            Self::Shutdown => "server shutting down",
            Self::Unauthorized => "unauthorized",
            Self::HeartbeatTimeout => "heartbeat timeout",
            Self::SlowConsumer => "slow consumer",
            Self::Abuse => "too many bad or rate-limited commands",
            Self::TokenExpired => "token expired",
            Self::ConnectionLimit => "connection limit reached",
            Self::Operator => "disconnected by an operator",
        }
    }
}
