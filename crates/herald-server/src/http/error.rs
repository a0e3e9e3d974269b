//! HTTP errors: one status + `{"error":{"code","message"}}` body for every
//! failure, mapped here from protocol codes so handlers never pick statuses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_protocol::{CommandError, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

use crate::engine::EngineError;
use crate::node::NodeError;

/// The body of every HTTP error (SPEC §5): `{"error":{"code","message"}}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// One error: a protocol code (SPEC §3) and a human-readable message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// The protocol error code, the same as in WebSocket `error` frames.
    #[schema(value_type = ErrorCodeSchema)]
    pub code: u16,
    /// For people, not programs: its wording may change.
    pub message: String,
}

/// Every [`ErrorCode`], for the OpenAPI schema of `code`.
const ALL_CODES: [ErrorCode; 13] = [
    ErrorCode::BadRequest,
    ErrorCode::Unauthorized,
    ErrorCode::PermissionDenied,
    ErrorCode::InvalidChannel,
    ErrorCode::LimitExceeded,
    ErrorCode::RateLimited,
    ErrorCode::MessageTooLarge,
    ErrorCode::AlreadySubscribed,
    ErrorCode::NotSubscribed,
    ErrorCode::TokenExpired,
    ErrorCode::NotConnected,
    ErrorCode::Internal,
    ErrorCode::NotEnabled,
];

/// The OpenAPI schema of an error `code`: an integer, one of [`ErrorCode`]'s.
#[derive(Debug)]
pub struct ErrorCodeSchema;

impl utoipa::PartialSchema for ErrorCodeSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .enum_values(Some(ALL_CODES.iter().map(|c| c.as_u16())))
            .description(Some(
                "1000 bad request, 1001 unauthorized, 1002 permission denied, \
                 1003 invalid channel, 1004 limit exceeded, 1005 rate limited, \
                 1006 message too large, 1007 already subscribed, 1008 not subscribed, \
                 1009 token expired, 1010 not connected, 1011 internal / unavailable, \
                 1012 not enabled for this namespace (e.g. presence)",
            ))
            .into()
    }
}

impl ToSchema for ErrorCodeSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "ErrorCode".into()
    }
}

/// An HTTP error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with an explicit status.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 / 1000.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    /// 401 / 1001.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    /// 404 / 1000.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::BadRequest, message)
    }

    /// 503 / 1011: the engine can't serve the request now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Internal,
                message,
            )
        }
    }

    /// 429 / 1005 with `Retry-After: secs` (at least 1).
    pub fn rate_limited(message: impl Into<String>, secs: u64) -> Self {
        Self {
            retry_after: Some(secs.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                message,
            )
        }
    }

    /// 503 / 1011 for a publish handed to the engine that did not answer in
    /// time: it may or may not have been stored. Retrying with the same
    /// idempotency key is safe; it answers the original if it landed.
    pub fn outcome_unknown(waited: std::time::Duration) -> Self {
        Self::unavailable(format!(
            "the store did not confirm this publish within {} (limits.request_timeout): \
             its outcome is unknown; retry with the same Idempotency-Key",
            humantime::format_duration(waited)
        ))
    }

    /// The status a protocol code maps to.
    pub fn status_for(code: ErrorCode) -> StatusCode {
        match code {
            ErrorCode::BadRequest
            | ErrorCode::InvalidChannel
            | ErrorCode::AlreadySubscribed
            | ErrorCode::NotSubscribed => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized | ErrorCode::TokenExpired | ErrorCode::NotConnected => {
                StatusCode::UNAUTHORIZED
            }
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            // The resource (a channel's presence) does not exist there.
            ErrorCode::NotEnabled => StatusCode::NOT_FOUND,
            ErrorCode::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited | ErrorCode::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let mut err = Self::new(Self::status_for(e.code), e.code, e.message);
        // 503 too: a backend hook without a decision (1011) is worth a retry.
        if err.status == StatusCode::TOO_MANY_REQUESTS
            || err.status == StatusCode::SERVICE_UNAVAILABLE
        {
            err.retry_after = Some(1);
        }
        err
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        tracing::warn!(error = %e, "engine error");
        Self::unavailable("the message store is unavailable; try again")
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Rejected(e) => e.into(),
            NodeError::Engine(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_u16(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails to compile when a code is added to [`ErrorCode`] until it is
    /// listed here and in [`ALL_CODES`].
    fn index(code: ErrorCode) -> usize {
        match code {
            ErrorCode::BadRequest => 0,
            ErrorCode::Unauthorized => 1,
            ErrorCode::PermissionDenied => 2,
            ErrorCode::InvalidChannel => 3,
            ErrorCode::LimitExceeded => 4,
            ErrorCode::RateLimited => 5,
            ErrorCode::MessageTooLarge => 6,
            ErrorCode::AlreadySubscribed => 7,
            ErrorCode::NotSubscribed => 8,
            ErrorCode::TokenExpired => 9,
            ErrorCode::NotConnected => 10,
            ErrorCode::Internal => 11,
            ErrorCode::NotEnabled => 12,
        }
    }

    #[test]
    fn the_schema_lists_every_code() {
        for (i, code) in ALL_CODES.iter().enumerate() {
            assert_eq!(index(*code), i);
        }
    }
}
