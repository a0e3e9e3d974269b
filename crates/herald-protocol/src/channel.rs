//! Channel names (`^[A-Za-z0-9_\-.:@]{1,200}$`) and their namespaces.

use crate::codes::ErrorCode;
use crate::command::CommandError;

/// Longest channel name accepted (SPEC §1).
pub const MAX_CHANNEL_LEN: usize = 200;
/// Longest user id accepted, from a token's `sub` or the API's `userId`.
pub const MAX_USER_ID_LEN: usize = 200;

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@')
}

/// Checks a channel name against SPEC §1; the error carries code 1003.
pub fn validate_channel(name: &str) -> Result<(), CommandError> {
    if name.is_empty() || name.len() > MAX_CHANNEL_LEN || !name.bytes().all(is_channel_byte) {
        return Err(CommandError::new(
            ErrorCode::InvalidChannel,
            format!("invalid channel name: must match ^[A-Za-z0-9_\\-.:@]{{1,{MAX_CHANNEL_LEN}}}$"),
        ));
    }
    Ok(())
}

/// Checks a user id: 1 to 200 bytes, no control characters. User ids key the
/// notification inboxes, so they must be printable and bounded.
pub fn validate_user_id(user: &str) -> Result<(), CommandError> {
    if user.is_empty() || user.len() > MAX_USER_ID_LEN || user.chars().any(char::is_control) {
        return Err(CommandError::new(
            ErrorCode::BadRequest,
            format!(
                "invalid user id: must be 1 to {MAX_USER_ID_LEN} bytes without control characters"
            ),
        ));
    }
    Ok(())
}

/// The namespace of a channel: the part before the first `:`, or the whole name.
pub fn namespace_of(channel: &str) -> &str {
    channel.split_once(':').map_or(channel, |(ns, _)| ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_spec_alphabet() {
        for ok in [
            "venue_updates",
            "venue:42",
            "a",
            "x.y-z:w@q",
            &"a".repeat(200),
        ] {
            assert!(validate_channel(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else_with_1003() {
        for bad in [
            "",
            "../etc",
            "a b",
            "a\0b",
            "café",
            "a/b",
            "#x",
            &"a".repeat(201),
        ] {
            let err = validate_channel(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidChannel, "{bad:?}");
        }
    }

    #[test]
    fn namespace_is_the_part_before_the_first_colon() {
        assert_eq!(namespace_of("venue:42"), "venue");
        assert_eq!(namespace_of("vibe_checks:42:x"), "vibe_checks");
        assert_eq!(namespace_of("venue_updates"), "venue_updates");
    }

    #[test]
    fn user_ids_are_bounded_and_printable() {
        assert!(validate_user_id("user-123").is_ok());
        assert!(validate_user_id("").is_err());
        assert!(validate_user_id("a\nb").is_err());
        assert!(validate_user_id(&"u".repeat(201)).is_err());
    }
}
