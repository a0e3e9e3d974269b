//! Who is asking: client JWTs (HS256, RS256, ES256) become an [`Identity`];
//! server API keys are compared in constant time. The two never substitute for
//! each other: an API key is not a JWT, and a JWT is never looked up as a key.

mod grants;
mod precheck;

use std::collections::HashSet;
use std::time::Duration;

use herald_protocol::{validate_user_id, ErrorCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;

pub use grants::ChannelGrant;

/// The latest expiry an [`Identity`] carries: 9999-12-31T23:59:59Z. A token
/// may say `exp = 2^64 - 1`; time arithmetic on that overflows (an `Instant`
/// plus that many seconds panics), and no deployment needs a token that
/// outlives the calendar, so later expiries are clamped to this one.
pub const MAX_EXPIRES_AT: u64 = 253_402_300_799;

/// An authenticated (or anonymous) client.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The user id (`sub`); `None` for anonymous clients.
    pub user: Option<String>,
    /// `role: admin` may subscribe anywhere.
    pub admin: bool,
    /// The token's `channels` claim, its invalid patterns dropped.
    pub channels: Vec<ChannelGrant>,
    /// When the token expires (Unix seconds), if it does; never later than
    /// [`MAX_EXPIRES_AT`].
    pub expires_at: Option<u64>,
    /// The token's `info` claim as compact JSON (an object of at most
    /// [`MAX_INFO_BYTES`]), shown in the client's presence entries.
    pub info: Option<std::sync::Arc<str>>,
}

/// The largest `info` claim, once encoded as compact JSON. A token whose
/// `info` is larger, or is not an object (or null), is refused (1001):
/// presence entries are shown to every subscriber of a channel, so their
/// size is bounded, and a silently dropped `info` would hide the mistake.
pub const MAX_INFO_BYTES: usize = 1024;

impl Identity {
    /// An anonymous client, or a dev-mode user named without a token.
    pub fn unverified(user: Option<String>) -> Self {
        Self {
            user,
            ..Self::default()
        }
    }

    /// Whether the `channels` claim grants `channel`.
    pub fn claims_channel(&self, channel: &str) -> bool {
        self.channels.iter().any(|grant| grant.grants(channel))
    }

    /// How long until the token expires, seen at `now` (Unix seconds):
    /// zero once it has, `None` for a token without `exp`. Checked
    /// arithmetic, so any `exp` a token can carry is safe to add to an
    /// `Instant`.
    pub fn expires_in(&self, now: u64) -> Option<Duration> {
        self.expires_at
            .map(|exp| Duration::from_secs(exp.saturating_sub(now)))
    }
}

/// Why a token was refused. Deliberately coarse: the details would help an
/// attacker more than a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Missing, malformed, badly signed, not yet valid or wrong issuer/audience.
    #[error("invalid token")]
    Invalid,
    /// Expired.
    #[error("token expired")]
    Expired,
    /// No token verifier is configured.
    #[error("client tokens are not configured on this server")]
    NotConfigured,
    /// The `info` claim is larger than [`MAX_INFO_BYTES`].
    #[error("invalid token: its info claim is larger than 1024 bytes")]
    InfoTooLarge,
}

impl AuthError {
    /// The protocol code for this refusal.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::Expired => ErrorCode::TokenExpired,
            Self::Invalid | Self::NotConfigured | Self::InfoTooLarge => ErrorCode::Unauthorized,
        }
    }
}

/// Claims Herald reads from a client token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// `admin` may subscribe anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Channel names or `prefix:*` / `*` patterns for `claim` namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
}

/// [`Claims`] with the `info` claim, which only verification reads.
#[derive(Deserialize)]
struct VerifiedClaims {
    #[serde(flatten)]
    claims: Claims,
    #[serde(default)]
    info: Option<serde_json::Value>,
}

/// The `info` claim as compact JSON, or why it is refused.
fn info_json(info: Option<serde_json::Value>) -> Result<Option<std::sync::Arc<str>>, AuthError> {
    match info {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v @ serde_json::Value::Object(_)) => {
            let text = serde_json::to_string(&v).map_err(|_| AuthError::Invalid)?;
            if text.len() > MAX_INFO_BYTES {
                return Err(AuthError::InfoTooLarge);
            }
            Ok(Some(text.into()))
        }
        Some(_) => Err(AuthError::Invalid),
    }
}

/// Verifies client tokens and API keys.
pub struct Auth {
    key: Option<DecodingKey>,
    validation: Validation,
    /// `auth.max_token_bytes`: longer tokens are refused unverified.
    max_token_bytes: usize,
    /// SHA-256 of each API key: comparing fixed-size digests leaks neither a
    /// key's bytes nor its length through timing.
    api_keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("api_keys", &self.api_keys.len())
            .finish_non_exhaustive()
    }
}

/// A problem with the configured key material.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

impl Auth {
    /// Builds the verifier from `[auth]`. The accepted algorithm is pinned to
    /// the configured key's type, so an HS256 token signed with an RSA public
    /// key (key confusion) can never verify.
    pub fn new(config: &AuthConfig) -> Result<Self, KeyError> {
        let (key, alg) = if let Some(secret) = &config.hmac_secret {
            (
                Some(DecodingKey::from_secret(secret.as_bytes())),
                Algorithm::HS256,
            )
        } else if let Some(path) = &config.public_key_file {
            let pem = std::fs::read(path)
                .map_err(|e| KeyError(format!("auth.public_key_file {}: {e}", path.display())))?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (Some(k), Algorithm::RS256)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (Some(k), Algorithm::ES256)
            } else {
                return Err(KeyError(format!(
                    "auth.public_key_file {}: not an RSA or EC public key in PEM",
                    path.display()
                )));
            }
        } else {
            (None, Algorithm::HS256)
        };
        let mut validation = Validation::new(alg);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        // Always on: `allow_no_exp` admits tokens *without* `exp`, never one
        // whose `exp` is past. jsonwebtoken checks `exp` when present and
        // requires it only when it is in `required_spec_claims`.
        validation.validate_exp = true;
        let mut required: HashSet<String> = HashSet::from(["sub".to_owned()]);
        if !config.allow_no_exp {
            required.insert("exp".into());
        }
        // jsonwebtoken checks `iss` and `aud` only when a token carries them;
        // a configured issuer or audience must also be *required*, or a token
        // that simply leaves the claim out would pass.
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            required.insert("iss".into());
        }
        validation.required_spec_claims = required;
        Ok(Self {
            key,
            validation,
            max_token_bytes: config.max_token_bytes,
            api_keys: config.api_keys.iter().map(|k| digest(k)).collect(),
        })
    }

    /// Verifies a client token: size and header first (cheap), then the
    /// signature and the claims.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let key = self.key.as_ref().ok_or(AuthError::NotConfigured)?;
        precheck::precheck(token, self.max_token_bytes)?;
        let data =
            jsonwebtoken::decode::<VerifiedClaims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid,
                }
            })?;
        let VerifiedClaims { claims, info } = data.claims;
        validate_user_id(&claims.sub).map_err(|_| AuthError::Invalid)?;
        let info = info_json(info)?;
        let channels = grants::parse_claim(&claims.sub, claims.channels.unwrap_or_default());
        Ok(Identity {
            admin: claims.role.as_deref() == Some("admin"),
            channels,
            expires_at: claims.exp.map(|exp| exp.min(MAX_EXPIRES_AT)),
            user: Some(claims.sub),
            info,
        })
    }

    /// Whether `presented` is one of the configured API keys. Every key is
    /// compared, each in constant time over its digest, whatever matches.
    pub fn is_api_key(&self, presented: &str) -> bool {
        let presented = digest(presented);
        self.api_keys.iter().fold(false, |found, key| {
            found | bool::from(key.as_slice().ct_eq(presented.as_slice()))
        })
    }

    /// Whether any API key is configured.
    pub fn has_api_keys(&self) -> bool {
        !self.api_keys.is_empty()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Signs an HS256 client token (for `herald token`, tests and dev tooling).
pub fn sign_hs256(secret: &str, claims: &Claims) -> Result<String, KeyError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| KeyError(format!("cannot sign token: {e}")))
}

/// Signs an HS256 client token with any claims (tests and tools that need
/// claims [`Claims`] does not name, such as `info`).
pub fn sign_hs256_json(secret: &str, claims: &serde_json::Value) -> Result<String, KeyError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| KeyError(format!("cannot sign token: {e}")))
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(&AuthConfig {
            hmac_secret: Some("0123456789abcdef".into()),
            api_keys: vec!["api-key-1234".into()],
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn claims(sub: &str, exp: i64) -> Claims {
        Claims {
            sub: sub.into(),
            exp: Some((unix_now() as i64 + exp) as u64),
            iat: None,
            role: None,
            channels: Some(vec!["venue:*".into(), "chat:1".into()]),
        }
    }

    #[test]
    fn verifies_a_good_token_and_reads_claims() {
        let t = sign_hs256("0123456789abcdef", &claims("u1", 60)).unwrap();
        let id = auth().verify(&t).unwrap();
        assert_eq!(id.user.as_deref(), Some("u1"));
        assert!(id.claims_channel("venue:42") && id.claims_channel("chat:1"));
        assert!(!id.claims_channel("chat:2") && !id.claims_channel("venues"));
    }

    #[test]
    fn refuses_bad_tokens() {
        let a = auth();
        assert_eq!(a.verify("garbage").unwrap_err(), AuthError::Invalid);
        let other = sign_hs256("another-secret-000", &claims("u1", 60)).unwrap();
        assert_eq!(a.verify(&other).unwrap_err(), AuthError::Invalid);
        let expired = sign_hs256("0123456789abcdef", &claims("u1", -60)).unwrap();
        assert_eq!(a.verify(&expired).unwrap_err(), AuthError::Expired);
        assert_eq!(a.verify("api-key-1234").unwrap_err(), AuthError::Invalid);
    }

    #[test]
    fn the_info_claim_is_an_object_of_at_most_1_kib_or_the_token_is_refused() {
        let a = auth();
        let token = |info: serde_json::Value| {
            let claims = serde_json::json!({"sub": "u1", "exp": unix_now() + 60, "info": info});
            sign_hs256_json("0123456789abcdef", &claims).unwrap()
        };
        let id = a
            .verify(&token(serde_json::json!({"name": "Ann"})))
            .unwrap();
        assert_eq!(id.info.as_deref(), Some(r#"{"name":"Ann"}"#));
        assert_eq!(id.user.as_deref(), Some("u1"));
        assert!(a
            .verify(&token(serde_json::Value::Null))
            .unwrap()
            .info
            .is_none());
        assert!(a
            .verify(&sign_hs256("0123456789abcdef", &claims("u1", 60)).unwrap())
            .unwrap()
            .info
            .is_none());
        let big = serde_json::json!({ "x": "y".repeat(MAX_INFO_BYTES) });
        assert_eq!(a.verify(&token(big)).unwrap_err(), AuthError::InfoTooLarge);
        assert_eq!(
            a.verify(&token(serde_json::json!("a string"))).unwrap_err(),
            AuthError::Invalid
        );
    }

    #[test]
    fn api_keys_are_not_tokens_and_tokens_are_not_keys() {
        let a = auth();
        assert!(a.is_api_key("api-key-1234"));
        assert!(!a.is_api_key("api-key-1235"));
        assert!(!a.is_api_key(&sign_hs256("0123456789abcdef", &claims("u1", 60)).unwrap()));
    }

    #[test]
    fn api_keys_of_any_length_compare_by_digest() {
        let a = Auth::new(&AuthConfig {
            api_keys: vec![
                "short-key".into(),
                "a-much-longer-api-key-0123456789".into(),
            ],
            ..AuthConfig::default()
        })
        .unwrap();
        assert!(a.is_api_key("short-key") && a.is_api_key("a-much-longer-api-key-0123456789"));
        for near in [
            "",
            "short-ke",
            "short-key ",
            "SHORT-KEY",
            "a-much-longer-api-key-012345678",
        ] {
            assert!(!a.is_api_key(near), "{near:?}");
        }
    }

    fn signed(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(b"0123456789abcdef"),
        )
        .unwrap()
    }

    #[test]
    fn an_absurd_exp_is_clamped_and_safe_to_add_to_an_instant() {
        let t = signed(&serde_json::json!({"sub": "u1", "exp": u64::MAX}));
        let id = auth().verify(&t).unwrap();
        assert_eq!(id.expires_at, Some(MAX_EXPIRES_AT));
        let left = id.expires_in(unix_now()).unwrap();
        assert!(std::time::Instant::now().checked_add(left).is_some());
        assert!(tokio::time::Instant::now().checked_add(left).is_some());
        // A past expiry (seen from a later clock) is zero, not an underflow.
        let id = Identity {
            expires_at: Some(10),
            ..Identity::default()
        };
        assert_eq!(id.expires_in(20), Some(Duration::ZERO));
        assert_eq!(Identity::default().expires_in(20), None);
    }

    #[test]
    fn allow_no_exp_admits_tokens_without_exp_but_never_a_past_exp() {
        let a = Auth::new(&AuthConfig {
            hmac_secret: Some("0123456789abcdef".into()),
            allow_no_exp: true,
            ..AuthConfig::default()
        })
        .unwrap();
        let no_exp = signed(&serde_json::json!({"sub": "u1"}));
        assert_eq!(a.verify(&no_exp).unwrap().expires_at, None);
        let month_ago = signed(&serde_json::json!({"sub": "u1", "exp": unix_now() - 30 * 86_400}));
        assert_eq!(a.verify(&month_ago).unwrap_err(), AuthError::Expired);
        // Within the leeway (5 s) it still passes, as without the option.
        let just_now = signed(&serde_json::json!({"sub": "u1", "exp": unix_now() - 1}));
        assert!(a.verify(&just_now).is_ok());
        // Without the option, `exp` is required.
        assert_eq!(auth().verify(&no_exp).unwrap_err(), AuthError::Invalid);
    }

    #[test]
    fn oversized_tokens_and_crit_headers_are_refused() {
        let a = Auth::new(&AuthConfig {
            hmac_secret: Some("0123456789abcdef".into()),
            max_token_bytes: 512,
            ..AuthConfig::default()
        })
        .unwrap();
        let small = signed(&serde_json::json!({"sub": "u1", "exp": unix_now() + 60}));
        assert!(a.verify(&small).is_ok());
        let padding = "x".repeat(600);
        let big = signed(&serde_json::json!({"sub": "u1", "exp": unix_now() + 60, "pad": padding}));
        assert!(big.len() > 512);
        assert_eq!(a.verify(&big).unwrap_err(), AuthError::Invalid);
        // Validly signed, but asks us to understand an extension we don't.
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp".into()]);
        let crit = jsonwebtoken::encode(
            &header,
            &serde_json::json!({"sub": "u1", "exp": unix_now() + 60}),
            &EncodingKey::from_secret(b"0123456789abcdef"),
        )
        .unwrap();
        assert_eq!(a.verify(&crit).unwrap_err(), AuthError::Invalid);
    }

    #[test]
    fn channel_claims_are_parsed_and_bad_patterns_dropped() {
        let t = signed(&serde_json::json!({
            "sub": "u1", "exp": unix_now() + 60,
            "channels": ["hz*", "venue:42:*", "chat:1"],
        }));
        let id = auth().verify(&t).unwrap();
        assert_eq!(id.channels.len(), 2);
        assert!(!id.claims_channel("hzx:1") && !id.claims_channel("hz:1"));
        assert!(id.claims_channel("venue:42:x") && !id.claims_channel("venue:42"));
        assert!(id.claims_channel("chat:1"));
    }

    #[test]
    fn configured_issuer_and_audience_are_required() {
        let a = Auth::new(&AuthConfig {
            hmac_secret: Some("0123456789abcdef".into()),
            issuer: Some("iss-1".into()),
            audience: Some("aud-1".into()),
            ..AuthConfig::default()
        })
        .unwrap();
        // `Claims` carries neither `iss` nor `aud`: such a token must not pass.
        let t = sign_hs256("0123456789abcdef", &claims("u1", 60)).unwrap();
        assert_eq!(a.verify(&t).unwrap_err(), AuthError::Invalid);
    }
}
