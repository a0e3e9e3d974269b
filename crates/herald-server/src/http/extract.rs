//! Path extractors whose rejections are the API's JSON errors (SPEC §5)
//! rather than axum's plain-text ones: `/api/channels/%FF/messages` is an
//! invalid channel (400 / 1003), not a text/plain 400.
//!
//! Query strings need nothing here: every handler reads its query through
//! `RawQuery` (which cannot fail) and parses it into an [`ApiError`] itself.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::StatusCode;
use herald_protocol::ErrorCode;

use super::error::ApiError;

/// A path segment that names a channel (or the venue in a channel's name):
/// a segment that can't be read is an invalid channel, 1003.
#[derive(Debug)]
pub(crate) struct ChannelPath(pub String);

/// Any other path segment (a user id): one that can't be read is 1000.
#[derive(Debug)]
pub(crate) struct SegmentPath(pub String);

async fn segment<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    code: ErrorCode,
) -> Result<String, ApiError> {
    Path::<String>::from_request_parts(parts, state)
        .await
        .map(|Path(segment)| segment)
        .map_err(|rejection| {
            let message = match code {
                ErrorCode::InvalidChannel => format!("invalid channel: {}", rejection.body_text()),
                _ => format!("invalid path: {}", rejection.body_text()),
            };
            ApiError::new(StatusCode::BAD_REQUEST, code, message)
        })
}

impl<S: Send + Sync> FromRequestParts<S> for ChannelPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        segment(parts, state, ErrorCode::InvalidChannel)
            .await
            .map(Self)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SegmentPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        segment(parts, state, ErrorCode::BadRequest).await.map(Self)
    }
}
