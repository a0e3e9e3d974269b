//! Checks made on a token before any signature work: its size, and that its
//! header asks for no extension we do not understand.
//!
//! RFC 7515 §4.1.11: a recipient that does not understand every header
//! parameter listed in `crit` must refuse the token. Herald understands no
//! extensions, so any `crit` is refused. jsonwebtoken parses `crit` but never
//! enforces it, hence this check of our own.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::AuthError;

/// Refuses a token longer than `max_bytes` (before any base64 or signature
/// work, so a huge token costs a length comparison) or whose header carries
/// `crit`.
pub(super) fn precheck(token: &str, max_bytes: usize) -> Result<(), AuthError> {
    if token.len() > max_bytes {
        return Err(AuthError::Invalid);
    }
    let (header, _) = token.split_once('.').ok_or(AuthError::Invalid)?;
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Invalid)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|_| AuthError::Invalid)?;
    if header.contains_key("crit") {
        return Err(AuthError::Invalid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(header: &str) -> String {
        format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(header))
    }

    #[test]
    fn crit_in_any_form_is_refused() {
        for h in [
            r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
            r#"{"alg":"HS256","crit":[]}"#,
            r#"{"alg":"HS256","crit":null}"#,
        ] {
            assert_eq!(
                precheck(&with_header(h), 8192),
                Err(AuthError::Invalid),
                "{h}"
            );
        }
        assert_eq!(
            precheck(&with_header(r#"{"alg":"HS256","typ":"JWT"}"#), 8192),
            Ok(())
        );
    }

    #[test]
    fn size_is_checked_first() {
        let ok = with_header(r#"{"alg":"HS256"}"#);
        assert_eq!(precheck(&ok, ok.len()), Ok(()));
        assert_eq!(precheck(&ok, ok.len() - 1), Err(AuthError::Invalid));
        // Not even base64: refused for its size, whatever it holds.
        assert_eq!(precheck(&"!".repeat(9000), 8192), Err(AuthError::Invalid));
        for junk in ["", "abc", "!!!.x.y", "bm90IGpzb24.e30.c2ln"] {
            assert_eq!(precheck(junk, 8192), Err(AuthError::Invalid), "{junk}");
        }
    }
}
