//! Connection tokens: standard JWTs (RFC 7519), verified with the `jsonwebtoken` crate, so any
//! backend mints them with its usual library (PyJWT, `jsonwebtoken` on npm, ruby-jwt, ...).
//!
//! Keys (one of, see README "Tokens"): a shared secret (`auth_secret`, HS256/HS384/HS512 as
//! `jwt_algorithm` says), a public key file (`jwt_public_key_file`, PEM, RS256 or ES256), or a
//! JWKS file (`jwks_file`: keys chosen by the token's `kid`, the file re-read when it changes).
//!
//! Claims: `sub` (required: the socket's user), `exp` (required; refused once passed, and while
//! further ahead than `token_max_age_secs`: there is no token for ever), `nbf` and `iat` (a token
//! not yet valid is refused), all with `jwt_leeway_secs` for clocks that disagree; `aud` and `iss`
//! when the server is configured with them; and corecast's own: `channels` (topic patterns this
//! token may join, on top of the server's `topics`), `presence` (the socket's presence meta) and
//! `info` (any JSON, handed to the backend's hooks). The time is passed in ([`Verifier::verify`]
//! is pure but for a JWKS file's reload), and tokens are never logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to.
    pub sub: String,
    /// Expiry, unix seconds; the token is refused at or after this time (plus the leeway).
    pub exp: u64,
    /// Not before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, unix seconds (a token issued in the future is refused like one not yet valid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Topic patterns (as `topics`: exact, or a prefix ending in `*`) this token may join; absent:
    /// whatever the server's `topics` allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// The socket's presence meta (a JSON object) on presence topics, instead of its join payload's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<serde_json::Value>,
    /// Anything the backend wants back in its hooks' requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// `aud` and `iss` are checked by the verifier when configured; kept for minting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// Why a token was refused. Every variant means: refuse the connection (HTTP 403); the text is
/// what the log says (never the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
    #[error("token algorithm not accepted")]
    WrongAlgorithm,
    #[error("no key for the token's kid")]
    UnknownKey,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token audience not accepted")]
    WrongAudience,
    #[error("token issuer not accepted")]
    WrongIssuer,
    #[error("token lacks sub or exp")]
    MissingClaim,
    /// `exp` is further ahead than the longest lifetime the server accepts.
    #[error("token lifetime over token_max_age_secs")]
    TooLongLived,
}

use crate::config::JWT_ALGORITHMS as ALGORITHMS;

impl TokenError {
    /// The reason, as the log says it.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed token",
            TokenError::BadSignature => "bad token signature",
            TokenError::WrongAlgorithm => "token algorithm not accepted",
            TokenError::UnknownKey => "no key for the token's kid",
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not yet valid",
            TokenError::WrongAudience => "token audience not accepted",
            TokenError::WrongIssuer => "token issuer not accepted",
            TokenError::MissingClaim => "token lacks sub or exp",
            TokenError::TooLongLived => "token lifetime over token_max_age_secs",
        }
    }
}

/// Why the token keys could not be loaded (at start: the server does not start).
#[derive(Debug, thiserror::Error)]
#[error("token keys: {0}")]
pub struct KeyError(String);

/// A key a token may be verified with, and the one algorithm it accepts.
struct Key {
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys of a JWKS file, by `kid` (a key without one under "").
type KeySet = HashMap<String, Key>;

/// A JWKS file and its current keys. The watcher thread re-reads it when its length or
/// modification time changes and bumps `generation`; each core keeps its own copy of the set
/// (`CACHE`) and takes the new one with a `try_lock` at its next verify, so no core ever waits.
struct Jwks {
    path: PathBuf,
    generation: AtomicU64,
    keys: Mutex<Arc<KeySet>>,
}

/// Verifies tokens under the server's settings. Built once at start; shared by every core.
pub struct Verifier {
    /// The secret or public key file's key (none with a JWKS file).
    key: Option<Key>,
    jwks: Option<Arc<Jwks>>,
    leeway: u64,
    max_age: u64,
    audience: Option<String>,
    issuer: Option<String>,
}

thread_local! {
    /// This thread's (core's) copy of the JWKS keys: (generation, keys).
    static CACHE: std::cell::RefCell<Option<(u64, Arc<KeySet>)>> = const { std::cell::RefCell::new(None) };
}

fn key_error(what: impl std::fmt::Display) -> KeyError {
    KeyError(what.to_string())
}

fn algorithm(name: &str) -> Result<Algorithm, KeyError> {
    if !ALGORITHMS.contains(&name) {
        return Err(key_error(format!(
            "jwt_algorithm {name:?}: one of {ALGORITHMS:?}"
        )));
    }
    name.parse().map_err(|_| key_error(name))
}

fn read_jwks(path: &Path) -> Result<KeySet, KeyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| key_error(format!("jwks_file {}: {e}", path.display())))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| key_error(format!("jwks_file {}: {e}", path.display())))?;
    let mut keys = KeySet::new();
    for jwk in &set.keys {
        let alg = match (jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(a), _) => a.to_string().parse().ok(),
            (None, AlgorithmParameters::RSA(_)) => Some(Algorithm::RS256),
            (None, AlgorithmParameters::EllipticCurve(_)) => Some(Algorithm::ES256),
            (None, AlgorithmParameters::OctetKey(_)) => Some(Algorithm::HS256),
            (None, AlgorithmParameters::OctetKeyPair(_)) => None,
        };
        let Some(alg) = alg.filter(|a| ALGORITHMS.contains(&format!("{a:?}").as_str())) else {
            continue; // an algorithm we do not take: the key is skipped, not the file
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        keys.insert(kid, Key { alg, key });
    }
    if keys.is_empty() {
        return Err(key_error(format!(
            "jwks_file {}: no usable key (RS256, ES256, HS256/384/512)",
            path.display()
        )));
    }
    Ok(keys)
}

/// A file's length and modification time, to see that it changed.
fn stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

impl Verifier {
    /// The verifier the configuration asks for, or `None` when it sets no key (tokens are then
    /// ignored). Reads the key files (at start, not on a core).
    pub fn from_config(cfg: &Config) -> Result<Option<Arc<Verifier>>, KeyError> {
        let alg = algorithm(&cfg.jwt_algorithm)?;
        let key = match (&cfg.auth_secret, &cfg.jwt_public_key_file) {
            (Some(_), Some(_)) => {
                return Err(key_error(
                    "auth_secret and jwt_public_key_file: set one of them",
                ));
            }
            (Some(secret), None) => {
                if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                    return Err(key_error(
                        "auth_secret goes with jwt_algorithm HS256, HS384 or HS512",
                    ));
                }
                Some(Key {
                    alg,
                    key: DecodingKey::from_secret(secret.as_bytes()),
                })
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    key_error(format!("jwt_public_key_file {}: {e}", path.display()))
                })?;
                let key = match alg {
                    Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                    Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                    _ => {
                        return Err(key_error(
                            "jwt_public_key_file goes with jwt_algorithm RS256 or ES256",
                        ));
                    }
                }
                .map_err(|e| key_error(format!("jwt_public_key_file {}: {e}", path.display())))?;
                Some(Key { alg, key })
            }
            (None, None) => None,
        };
        let jwks = match &cfg.jwks_file {
            Some(path) => {
                let keys = read_jwks(path)?;
                Some(Arc::new(Jwks {
                    path: path.clone(),
                    generation: AtomicU64::new(1),
                    keys: Mutex::new(Arc::new(keys)),
                }))
            }
            None => None,
        };
        if key.is_none() && jwks.is_none() {
            return Ok(None);
        }
        let v = Arc::new(Verifier {
            key,
            jwks,
            leeway: cfg.jwt_leeway_secs,
            max_age: cfg.token_max_age_secs,
            audience: cfg.jwt_audience.clone(),
            issuer: cfg.jwt_issuer.clone(),
        });
        if let Some(j) = &v.jwks {
            watch(Arc::downgrade(j));
        }
        Ok(Some(v))
    }

    /// A verifier for one HMAC secret (HS256), with `max_age` and a 60 s leeway.
    pub fn hs256(secret: &[u8], max_age: u64) -> Verifier {
        Verifier {
            key: Some(Key {
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
            }),
            jwks: None,
            leeway: 60,
            max_age,
            audience: None,
            issuer: None,
        }
    }

    /// Check a token's signature and claims at unix time `now`.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        // A JWKS file's key by `kid`; without one, the secret or key file's key when there is one.
        if let Some(jwks) = &self.jwks
            && (header.kid.is_some() || self.key.is_none())
        {
            let keys = current_keys(jwks);
            let kid = header.kid.as_deref().unwrap_or("");
            let k = keys.get(kid).ok_or(TokenError::UnknownKey)?;
            return self.check(token, &header, k, now);
        }
        match &self.key {
            Some(k) => self.check(token, &header, k, now),
            None => Err(TokenError::UnknownKey),
        }
    }

    fn check(&self, token: &str, header: &Header, k: &Key, now: u64) -> Result<Claims, TokenError> {
        if header.alg != k.alg {
            return Err(TokenError::WrongAlgorithm);
        }
        let mut v = Validation::new(k.alg);
        // Time is checked below against the `now` given (testable, one clock for all claims).
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims = ["sub", "exp"].iter().map(|s| s.to_string()).collect();
        // A configured audience or issuer must be in the token, not merely not contradicted.
        if self.audience.is_some() {
            v.required_spec_claims.insert("aud".into());
        }
        if self.issuer.is_some() {
            v.required_spec_claims.insert("iss".into());
        }
        v.leeway = self.leeway;
        match &self.audience {
            Some(a) => v.set_audience(&[a]),
            None => v.validate_aud = false,
        }
        if let Some(i) = &self.issuer {
            v.set_issuer(&[i]);
        }
        use jsonwebtoken::errors::ErrorKind as K;
        let data =
            jsonwebtoken::decode::<Claims>(token, &k.key, &v).map_err(|e| match e.kind() {
                K::InvalidSignature => TokenError::BadSignature,
                K::InvalidAlgorithm => TokenError::WrongAlgorithm,
                K::InvalidAudience => TokenError::WrongAudience,
                K::InvalidIssuer => TokenError::WrongIssuer,
                K::MissingRequiredClaim(c) if c == "aud" => TokenError::WrongAudience,
                K::MissingRequiredClaim(c) if c == "iss" => TokenError::WrongIssuer,
                K::MissingRequiredClaim(_) => TokenError::MissingClaim,
                _ => TokenError::Malformed,
            })?;
        let c = data.claims;
        if now >= c.exp.saturating_add(self.leeway) {
            return Err(TokenError::Expired);
        }
        let not_before = c.nbf.into_iter().chain(c.iat).max().unwrap_or(0);
        if not_before > now.saturating_add(self.leeway) {
            return Err(TokenError::NotYetValid);
        }
        if c.exp.saturating_sub(now) > self.max_age.saturating_add(self.leeway) {
            return Err(TokenError::TooLongLived);
        }
        Ok(c)
    }
}

/// This core's copy of the JWKS keys, refreshed (without waiting) after a reload.
fn current_keys(jwks: &Jwks) -> Arc<KeySet> {
    let generation = jwks.generation.load(Ordering::Acquire);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((g, keys)) = &*c
            && *g == generation
        {
            return keys.clone();
        }
        // The watcher holds the lock only to swap one pointer; if it does right now, the old
        // set serves this token and the next verify tries again.
        match jwks.keys.try_lock() {
            Ok(keys) => {
                *c = Some((generation, keys.clone()));
                keys.clone()
            }
            Err(_) => c.as_ref().map(|(_, k)| k.clone()).unwrap_or_default(),
        }
    })
}

/// Re-read a JWKS file when it changes (checked every second, on a thread of its own: a core
/// never touches the file). A file that no longer parses keeps the old keys (and is logged).
fn watch(jwks: Weak<Jwks>) {
    let spawned = std::thread::Builder::new()
        .name("corecast-jwks".into())
        .stack_size(256 << 10)
        .spawn(move || {
            let mut last = jwks.upgrade().and_then(|j| stamp(&j.path));
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let Some(j) = jwks.upgrade() else {
                    return; // the server is gone
                };
                let now = stamp(&j.path);
                if now.is_none() || now == last {
                    continue;
                }
                last = now;
                match read_jwks(&j.path) {
                    Ok(keys) => {
                        if let Ok(mut k) = j.keys.lock() {
                            *k = Arc::new(keys);
                        }
                        j.generation.fetch_add(1, Ordering::Release);
                        tracing::info!(path = %j.path.display(), "jwks_file reloaded");
                    }
                    Err(e) => tracing::warn!(error = %e, "jwks_file changed but does not load; keeping the old keys"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch jwks_file: it will not be reloaded");
    }
}

/// Mint an HS256 token for `sub` that expires at `exp` (unix seconds).
pub fn mint(secret: &[u8], sub: &str, exp: u64) -> String {
    let claims = Claims {
        sub: sub.into(),
        exp,
        ..Claims::default()
    };
    mint_claims(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(secret),
        &claims,
    )
    .unwrap_or_default()
}

/// Mint a token with `claims`, signed with `key` under `alg` (HS*, RS256, ES256), with an
/// optional `kid` in its header.
pub fn mint_claims(
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: &Claims,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, key)
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

    fn hs(max_age: u64) -> Verifier {
        Verifier::hs256(b"k", max_age)
    }

    #[test]
    fn round_trip() {
        let t = mint(b"k", "alice", 1000);
        let c = hs(3600).verify(&t, 999).expect("valid");
        assert_eq!((c.sub.as_str(), c.exp), ("alice", 1000));
    }

    #[test]
    fn expired_wrong_key_tampered_and_garbage_are_refused() {
        let t = mint(b"k", "alice", 1000);
        assert_eq!(hs(3600).verify(&t, 1060), Err(TokenError::Expired));
        assert!(hs(3600).verify(&t, 1059).is_ok(), "within the leeway");
        assert_eq!(
            Verifier::hs256(b"other", 3600).verify(&t, 1),
            Err(TokenError::BadSignature)
        );
        // Swap in claims for another subject, keeping the old signature.
        let parts: Vec<&str> = t.split('.').collect();
        use base64::Engine;
        let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"mallory","exp":99999}"#);
        let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        assert_eq!(hs(3600).verify(&forged, 1), Err(TokenError::BadSignature));
        for bad in ["", "v1", "v1.x", "v2.a.b", "v1.a.!!!", "...."] {
            assert!(hs(3600).verify(bad, 1).is_err(), "{bad:?}");
        }
        // "alg": "none" and another HMAC size are refused.
        let c = Claims {
            sub: "a".into(),
            exp: 1000,
            ..Claims::default()
        };
        let hs384 =
            mint_claims(Algorithm::HS384, None, &EncodingKey::from_secret(b"k"), &c).unwrap();
        assert_eq!(hs(3600).verify(&hs384, 1), Err(TokenError::WrongAlgorithm));
        let none = format!("eyJhbGciOiJub25lIn0.{}.", parts[1]);
        assert!(hs(3600).verify(&none, 1).is_err());
    }

    #[test]
    fn not_before_and_lifetime_over_max_age_are_refused() {
        let now = 1_000_000;
        let day = 86_400;
        let key = EncodingKey::from_secret(b"k");
        let tok = |exp: u64, nbf: Option<u64>| {
            let c = Claims {
                sub: "alice".into(),
                exp,
                nbf,
                ..Claims::default()
            };
            mint_claims(Algorithm::HS256, None, &key, &c).unwrap()
        };
        assert_eq!(
            hs(day).verify(&tok(now + 600, Some(now + 300)), now),
            Err(TokenError::NotYetValid)
        );
        assert!(
            hs(day).verify(&tok(now + 600, Some(now + 30)), now).is_ok(),
            "leeway"
        );
        // The longest lifetime allowed, minted on a clock up to the leeway ahead: valid.
        assert!(hs(day).verify(&tok(now + day + 60, None), now).is_ok());
        assert_eq!(
            hs(day).verify(&tok(now + day + 61, None), now),
            Err(TokenError::TooLongLived)
        );
        assert_eq!(
            hs(day).verify(&tok(u64::MAX, None), now),
            Err(TokenError::TooLongLived)
        );
    }

    #[test]
    fn audience_issuer_and_custom_claims() {
        let mut v = hs(3600);
        v.audience = Some("corecast".into());
        v.issuer = Some("app".into());
        let key = EncodingKey::from_secret(b"k");
        let mk = |aud: Option<&str>, iss: Option<&str>| {
            let c = Claims {
                sub: "alice".into(),
                exp: 1000,
                aud: aud.map(String::from),
                iss: iss.map(String::from),
                channels: Some(vec!["room:*".into()]),
                info: Some(serde_json::json!({"plan": "pro"})),
                ..Claims::default()
            };
            mint_claims(Algorithm::HS256, None, &key, &c).unwrap()
        };
        let ok = v
            .verify(&mk(Some("corecast"), Some("app")), 1)
            .expect("valid");
        assert_eq!(ok.channels, Some(vec!["room:*".to_string()]));
        assert_eq!(ok.info, Some(serde_json::json!({"plan": "pro"})));
        assert_eq!(
            v.verify(&mk(Some("other"), Some("app")), 1),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            v.verify(&mk(None, Some("app")), 1),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            v.verify(&mk(Some("corecast"), Some("evil")), 1),
            Err(TokenError::WrongIssuer)
        );
    }
}
