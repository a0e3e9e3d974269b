//! The polling `since` parameter (SPEC §5): a cursor, a Unix time in
//! milliseconds, or an RFC 3339 time. It arrives in a query string from the
//! open internet, so it is parsed here, with no I/O, where it can be fuzzed.

use crate::cursor::Cursor;

/// Where a poll starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// From the oldest kept message (`since` absent or empty).
    Oldest,
    /// After a cursor.
    Cursor(Cursor),
    /// After a time (Unix ms).
    Time(u64),
}

/// Why a string is not a `since` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinceError {
    /// Digits only, but more than fit in a u64.
    #[error("since is out of range")]
    OutOfRange,
    /// Neither a cursor, Unix milliseconds nor an RFC 3339 time.
    #[error("since must be a cursor (\"epoch:offset\"), Unix milliseconds or an RFC 3339 time")]
    Malformed,
}

/// Longest `since` considered: a cursor is at most 64 + 1 + 20 bytes and an
/// RFC 3339 time about 40, so anything longer is refused before any parser
/// sees it.
pub const MAX_SINCE_LEN: usize = 128;

impl Since {
    /// Parses `since`. Times before 1970 clamp to 0 (everything kept).
    pub fn parse(raw: &str) -> Result<Self, SinceError> {
        if raw.is_empty() {
            return Ok(Self::Oldest);
        }
        if raw.len() > MAX_SINCE_LEN {
            return Err(SinceError::Malformed);
        }
        if let Ok(cursor) = Cursor::parse(raw) {
            return Ok(Self::Cursor(cursor));
        }
        if raw.bytes().all(|b| b.is_ascii_digit()) {
            return raw
                .parse()
                .map(Self::Time)
                .map_err(|_| SinceError::OutOfRange);
        }
        if let Ok(t) =
            time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        {
            let ms = (t.unix_timestamp_nanos() / 1_000_000).clamp(0, u64::MAX as i128) as u64;
            return Ok(Self::Time(ms));
        }
        Err(SinceError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_cursor_millis_and_rfc3339() {
        assert_eq!(
            Since::parse("e7Hq:17").unwrap(),
            Since::Cursor(Cursor::new("e7Hq", 17))
        );
        assert_eq!(
            Since::parse("1764100000123").unwrap(),
            Since::Time(1764100000123)
        );
        assert_eq!(
            Since::parse("1970-01-01T00:00:01Z").unwrap(),
            Since::Time(1000)
        );
        assert_eq!(
            Since::parse("1970-01-01T01:00:01.5+01:00").unwrap(),
            Since::Time(1500)
        );
        assert_eq!(
            Since::parse("1969-12-31T23:59:59Z").unwrap(),
            Since::Time(0)
        );
        assert_eq!(Since::parse("").unwrap(), Since::Oldest);
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "yesterday",
            "e7Hq:",
            "-5",
            "1.5",
            "2026-13-01T00:00:00Z",
            "9999-12-31T23:59:60Z ",
        ] {
            assert_eq!(Since::parse(bad), Err(SinceError::Malformed), "{bad}");
        }
        assert_eq!(
            Since::parse("99999999999999999999999"),
            Err(SinceError::OutOfRange)
        );
        assert_eq!(
            Since::parse(&"1".repeat(MAX_SINCE_LEN + 1)),
            Err(SinceError::Malformed)
        );
    }
}
