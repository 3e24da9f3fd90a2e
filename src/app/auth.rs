//! Connection tokens: HMAC-SHA256 signed, with an expiry. Pure: the caller passes the time.
//!
//! Format (all parts base64url without padding):
//!
//! ```text
//! v1.<claims>.<signature>
//! claims    = base64url(JSON {"sub": "<subject>", "exp": <unix seconds>})
//! signature = base64url(HMAC-SHA256(secret, "v1." + claims))
//! ```
//!
//! `corecast token --secret S --sub alice --ttl-secs 3600` mints one. A token is refused once
//! `exp` has passed, and also while `exp` is further ahead than the server's
//! `token_max_age_secs` (plus [`CLOCK_SKEW_SECS`]): there is no token for ever. Tokens are
//! never logged.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const VERSION: &str = "v1";

/// How far the minting host's clock may run ahead of the server's before a token minted with
/// the longest lifetime allowed is refused as too long-lived.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to.
    pub sub: String,
    /// Expiry, unix seconds; the token is refused at or after this time.
    pub exp: u64,
}

/// Why a token was refused. Every variant means: refuse the connection (HTTP 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    /// `exp` is further ahead than the longest lifetime the server accepts.
    #[error("token lifetime over token_max_age_secs")]
    TooLongLived,
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

/// Mint a token for `sub` that expires at `exp` (unix seconds).
pub fn mint(secret: &[u8], sub: &str, exp: u64) -> String {
    let claims = Claims {
        sub: sub.to_string(),
        exp,
    };
    let json = serde_json::to_vec(&claims).unwrap_or_default();
    let signed = format!("{VERSION}.{}", B64.encode(json));
    let mut m = mac(secret);
    m.update(signed.as_bytes());
    let sig = B64.encode(m.finalize().into_bytes());
    format!("{signed}.{sig}")
}

/// Check a token's signature and expiry at time `now` (unix seconds): refused once `exp` has
/// passed, and while `exp` is more than `max_age` (+ [`CLOCK_SKEW_SECS`]) seconds ahead.
pub fn verify(secret: &[u8], token: &str, now: u64, max_age: u64) -> Result<Claims, TokenError> {
    let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (version, claims_b64) = signed.split_once('.').ok_or(TokenError::Malformed)?;
    if version != VERSION {
        return Err(TokenError::Malformed);
    }
    let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
    let mut m = mac(secret);
    m.update(signed.as_bytes());
    m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    let json = B64.decode(claims_b64).map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    if now >= claims.exp {
        return Err(TokenError::Expired);
    }
    if claims.exp - now > max_age.saturating_add(CLOCK_SKEW_SECS) {
        return Err(TokenError::TooLongLived);
    }
    Ok(claims)
}

/// Unix time now, in seconds.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = mint(b"k", "alice", 1000);
        assert_eq!(
            verify(b"k", &t, 999, 3600),
            Ok(Claims {
                sub: "alice".into(),
                exp: 1000
            })
        );
    }

    #[test]
    fn expired_wrong_key_tampered_and_garbage_are_refused() {
        let t = mint(b"k", "alice", 1000);
        assert_eq!(verify(b"k", &t, 1000, 3600), Err(TokenError::Expired));
        assert_eq!(verify(b"other", &t, 1, 3600), Err(TokenError::BadSignature));
        // Swap in claims for another subject, keeping the old signature.
        let forged_claims = B64.encode(br#"{"sub":"mallory","exp":99999}"#);
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!("v1.{forged_claims}.{}", parts[2]);
        assert_eq!(
            verify(b"k", &forged, 1, 3600),
            Err(TokenError::BadSignature)
        );
        for bad in ["", "v1", "v1.x", "v2.a.b", "v1.a.!!!", "...."] {
            assert!(verify(b"k", bad, 1, 3600).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lifetime_over_max_age_is_refused() {
        let now = 1_000_000;
        let day = 86_400;
        // The longest lifetime allowed, minted on a clock up to CLOCK_SKEW_SECS ahead: valid.
        let longest = mint(b"k", "alice", now + day + CLOCK_SKEW_SECS);
        assert!(verify(b"k", &longest, now, day).is_ok());
        // One second more, or "never expires": refused, however well signed.
        let longer = mint(b"k", "alice", now + day + CLOCK_SKEW_SECS + 1);
        assert_eq!(
            verify(b"k", &longer, now, day),
            Err(TokenError::TooLongLived)
        );
        let forever = mint(b"k", "alice", u64::MAX);
        assert_eq!(
            verify(b"k", &forever, now, day),
            Err(TokenError::TooLongLived)
        );
        assert!(verify(b"k", &forever, now, u64::MAX).is_ok());
        // A long-lived token becomes acceptable once its remaining life is within the bound.
        assert!(verify(b"k", &longer, now + 1, day).is_ok());
    }
}
