//! The `channels` claim: which channel names and patterns a token grants,
//! parsed once when the token is verified.
//!
//! A `*` stands only for whole trailing segments (SPEC §4): `venue:*` grants
//! `venue:42` and `venue:42:x` but neither `venue` nor `venuex:1`; `*` alone
//! grants everything. Anything else with a `*` in it (`venue*`, `a*b`) would
//! reach across namespaces, so it is dropped with a (rate-limited) warning.

use std::sync::atomic::{AtomicU64, Ordering};

use herald_protocol::validate_channel;

/// One entry of the `channels` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelGrant {
    /// `*`: every channel.
    All,
    /// One channel, by its exact name.
    Exact(Box<str>),
    /// `prefix:*`, kept as `prefix:`: every channel below that segment.
    Under(Box<str>),
}

impl ChannelGrant {
    /// Parses one pattern; `None` when it is not a channel name, `*`, or a
    /// channel name followed by `:*`.
    pub fn parse(pattern: &str) -> Option<Self> {
        if pattern == "*" {
            return Some(Self::All);
        }
        if let Some(prefix) = pattern.strip_suffix(":*") {
            // A channel name never holds `*`, so this also refuses `a*:*`.
            validate_channel(prefix).ok()?;
            return Some(Self::Under(format!("{prefix}:").into()));
        }
        validate_channel(pattern).ok()?;
        Some(Self::Exact(pattern.into()))
    }

    /// Whether this grant covers `channel`.
    pub fn grants(&self, channel: &str) -> bool {
        match self {
            Self::All => true,
            Self::Exact(name) => **name == *channel,
            // At least one segment must follow: `venue:*` is not `venue:`.
            Self::Under(prefix) => channel.len() > prefix.len() && channel.starts_with(&**prefix),
        }
    }
}

/// Parses a token's `channels` claim, dropping (and logging) invalid patterns.
pub(crate) fn parse_claim(user: &str, patterns: Vec<String>) -> Vec<ChannelGrant> {
    let mut grants = Vec::with_capacity(patterns.len());
    for pattern in patterns {
        match ChannelGrant::parse(&pattern) {
            Some(grant) => grants.push(grant),
            None => warn_ignored(user, &pattern),
        }
    }
    grants
}

/// Logs an ignored pattern at most once a second for the whole process: the
/// client decides how often a token is presented, so it must not decide how
/// much we log. The count of warnings held back rides on the next one.
fn warn_ignored(user: &str, pattern: &str) {
    static LAST_SECOND: AtomicU64 = AtomicU64::new(0);
    static HELD_BACK: AtomicU64 = AtomicU64::new(0);
    let now = crate::auth::unix_now();
    let last = LAST_SECOND.load(Ordering::Relaxed);
    if now > last
        && LAST_SECOND
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let shown: String = pattern.chars().take(64).collect();
        let user: String = user.chars().take(64).collect();
        tracing::warn!(
            user,
            pattern = shown,
            held_back = HELD_BACK.swap(0, Ordering::Relaxed),
            "ignoring a channels claim pattern: `*` may only stand for whole trailing segments (`venue:*`, `*`)"
        );
    } else {
        HELD_BACK.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(patterns: &[&str]) -> Vec<ChannelGrant> {
        parse_claim("u1", patterns.iter().map(|p| (*p).to_owned()).collect())
    }

    fn any(g: &[ChannelGrant], channel: &str) -> bool {
        g.iter().any(|g| g.grants(channel))
    }

    #[test]
    fn a_bare_prefix_star_grants_nothing() {
        let g = grants(&["hz*"]);
        assert!(g.is_empty());
        for c in ["hz", "hz:1", "hzx:1", "hz*"] {
            assert!(!any(&g, c), "{c}");
        }
        for bad in [
            "venue*", "a*b", "*:1", "venue:4*", "a*:*", "", "venue:**", "x y:*",
        ] {
            assert_eq!(ChannelGrant::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_segment_star_grants_whole_trailing_segments_only() {
        let g = grants(&["hz:*"]);
        assert!(any(&g, "hz:1") && any(&g, "hz:1:2"));
        for c in ["hzx:1", "hz", "hz:", "h", "xhz:1"] {
            assert!(!any(&g, c), "{c}");
        }
        let g = grants(&["venue:42:*"]);
        assert!(any(&g, "venue:42:chat") && any(&g, "venue:42:a:b"));
        for c in ["venue:42", "venue:421:x", "venue:4", "venue:42:"] {
            assert!(!any(&g, c), "{c}");
        }
    }

    #[test]
    fn star_grants_everything_and_names_grant_themselves() {
        let g = grants(&["*"]);
        assert!(any(&g, "a") && any(&g, "venue:1:2"));
        let g = grants(&["chat:1", "bad*", "venue:*"]);
        assert_eq!(g.len(), 2, "the bad pattern is dropped, the rest kept");
        assert!(any(&g, "chat:1") && any(&g, "venue:9"));
        assert!(!any(&g, "chat:10") && !any(&g, "badx"));
    }
}
