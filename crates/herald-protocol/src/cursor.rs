//! Cursors: `"{epoch}:{offset}"`, the position a client keeps to resume a stream.

use std::fmt;

/// A position in one stream: the stream's epoch and an offset in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// Opaque id of the stream's history; changes when that history is lost.
    pub epoch: String,
    /// The offset of the last message seen (0: none).
    pub offset: u64,
}

/// Why a string is not a cursor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor: expected \"{{epoch}}:{{offset}}\"")]
pub struct CursorError;

/// Longest epoch accepted when parsing; ours are 8 characters.
const MAX_EPOCH_LEN: usize = 64;

impl Cursor {
    /// A cursor at `offset` in `epoch`.
    pub fn new(epoch: impl Into<String>, offset: u64) -> Self {
        Self {
            epoch: epoch.into(),
            offset,
        }
    }

    /// Parses `"{epoch}:{offset}"`; the epoch is 1–64 ASCII letters or digits.
    pub fn parse(s: &str) -> Result<Self, CursorError> {
        let (epoch, offset) = s.split_once(':').ok_or(CursorError)?;
        if epoch.is_empty()
            || epoch.len() > MAX_EPOCH_LEN
            || !epoch.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(CursorError);
        }
        if offset.is_empty() || offset.len() > 20 || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CursorError);
        }
        let offset = offset.parse().map_err(|_| CursorError)?;
        Ok(Self {
            epoch: epoch.to_owned(),
            offset,
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let c = Cursor::parse("e7Hq:17").unwrap();
        assert_eq!(c, Cursor::new("e7Hq", 17));
        assert_eq!(c.to_string(), "e7Hq:17");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            ":",
            "e7Hq",
            "e7Hq:",
            ":5",
            "e:-1",
            "e:1.5",
            "e:99999999999999999999999",
            "e x:1",
            "e:1:2",
            "é:1",
        ] {
            assert_eq!(Cursor::parse(bad), Err(CursorError), "{bad:?}");
        }
    }
}
