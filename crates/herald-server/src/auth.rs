//! Who is asking: client JWTs (HS256, RS256, ES256) become an [`Identity`];
//! server API keys are compared in constant time. The two never substitute for
//! each other: an API key is not a JWT, and a JWT is never looked up as a key.

use std::collections::HashSet;

use herald_protocol::{validate_user_id, ErrorCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;

/// An authenticated (or anonymous) client.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The user id (`sub`); `None` for anonymous clients.
    pub user: Option<String>,
    /// `role: admin` may subscribe anywhere.
    pub admin: bool,
    /// The token's `channels` claim: names and `prefix*` patterns.
    pub channels: Vec<String>,
    /// When the token expires (Unix seconds), if it does.
    pub expires_at: Option<u64>,
}

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
        self.channels
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => channel.starts_with(prefix),
                None => pattern == channel,
            })
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
}

impl AuthError {
    /// The protocol code for this refusal.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::Expired => ErrorCode::TokenExpired,
            Self::Invalid | Self::NotConfigured => ErrorCode::Unauthorized,
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
    /// Channel names or `prefix*` patterns for `claim` namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
}

/// Verifies client tokens and API keys.
pub struct Auth {
    key: Option<DecodingKey>,
    validation: Validation,
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
        validation.validate_exp = !config.allow_no_exp;
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
            api_keys: config.api_keys.iter().map(|k| digest(k)).collect(),
        })
    }

    /// Verifies a client token.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let key = self.key.as_ref().ok_or(AuthError::NotConfigured)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid,
                }
            })?;
        let claims = data.claims;
        validate_user_id(&claims.sub).map_err(|_| AuthError::Invalid)?;
        Ok(Identity {
            user: Some(claims.sub),
            admin: claims.role.as_deref() == Some("admin"),
            channels: claims.channels.unwrap_or_default(),
            expires_at: claims.exp,
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
