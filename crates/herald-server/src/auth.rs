//! Authentication: turns a `hello` into a verified [`Identity`], and checks HTTP API keys.
//!
//! Owns token verification (JWT), dev-mode logins and API-key checks. What an identity may do
//! afterwards ([`ChannelGrants`]) is enforced by the engine.
//!
//! # Tokens
//! - Algorithms: HS256 with `auth.hs256_secret`; RS256 or ES256 with `auth.public_key_pem`
//!   (an RSA key means RS256, an EC P-256 key ES256). Both may be configured; the token header's
//!   `alg` picks the key, and any other `alg` (including `none`) is refused.
//! - `exp` is required (seconds since the Unix epoch); `nbf` is honoured when present; both
//!   with `auth.leeway_ms` of tolerance. A token may live at most
//!   `auth.max_token_lifetime_ms` (from `iat`, or from now without it).
//! - `aud` must name `auth.audience` and `iss` must equal `auth.issuer`, when those are set.
//! - With `auth.jwks_url`, a token whose header has a `kid` is verified with that key of the
//!   JWKS (refreshed in the background); an unknown `kid` is refused.
//! - Revocation: a kick with `?revoke=true` refuses the uid's tokens issued (`iat`) before it.
//! - `sub` is the uid and must be a valid name.
//! - `device` (optional) binds the token to a device: a `hello.device` that differs is refused.
//! - `chans` (optional) limits channels: `{"pub":[patterns],"sub":[patterns]}`, patterns exact or
//!   ending in `*`. No `chans` claim (or `null`): every channel allowed. A `chans` object that
//!   lacks a list (or has it `null`) allows *nothing* for that action: `{"sub":["room*"]}` may
//!   subscribe to `room*` and publish to no channel. Unknown keys in `chans` are refused.
//!
//! # Dev mode
//! `hello.uid` is accepted without a token (it must be a valid name) and every API call is
//! allowed. A token, when present, still wins and must verify.
//!
//! Tokens and API keys are never logged nor echoed in errors.

use std::fmt;
// Token expiry is wall-clock time by definition (JWT `exp`).
#[allow(clippy::disallowed_types)]
use std::time::{SystemTime, UNIX_EPOCH};

use herald_core::{ChannelGrants, Identity};
use herald_protocol::names::{validate_name, NameError};
use herald_protocol::{Hello, Pattern};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::config::{ApiSection, AuthSection, Config, ConfigError};

/// Shortest accepted `auth.hs256_secret`, in bytes (RFC 7518 §3.2: at least the hash size).
pub(crate) const MIN_HS256_SECRET_BYTES: usize = 32;

const PEM_KEY: &str = "auth.public_key_pem";

/// Why a `hello` or an HTTP call was refused. Messages are meant for the client (`err.msg`,
/// HTTP error body) and the log; none contains the token or an API key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum AuthError {
    #[error(
        "a token is required (`hello.token`); `hello.uid` without a token is accepted only by a \
         server in dev mode"
    )]
    TokenRequired,
    #[error("hello has neither `token` nor `uid`; this dev-mode server accepts either")]
    NoCredentials,
    #[error(
        "this server cannot verify tokens: it has neither auth.hs256_secret nor \
         auth.public_key_pem configured"
    )]
    NoKeyConfigured,
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token is signed with {got}; this server accepts {accepted}")]
    WrongAlgorithm { got: String, accepted: String },
    #[error("token signature does not verify (signed with another key, or altered)")]
    BadSignature,
    #[error("token has no `exp` claim; herald requires tokens to expire")]
    MissingExp,
    #[error("token lives {lives}; the longest accepted is {max} (auth.max_token_lifetime_ms)")]
    TooLong { lives: String, max: String },
    #[error("token `kid` {0:?} is not in the key set of auth.jwks_url")]
    UnknownKid(String),
    #[error(
        "tokens of this uid issued before {0} ms since the epoch were revoked (kick); \
         get a new token (with `iat`)"
    )]
    Revoked(u64),
    #[error("token expired {ago} ago")]
    Expired { ago: String },
    #[error("token is not valid yet (`nbf` is {wait} in the future)")]
    NotYetValid { wait: String },
    #[error("token claim `sub` {0}")]
    BadSub(String),
    #[error("token claim `{claim}` is invalid: {reason}")]
    BadClaim { claim: &'static str, reason: String },
    #[error("token is bound to device {token:?} (claim `device`) but `hello.device` is {hello:?}")]
    DeviceMismatch { token: String, hello: String },
    #[error("`hello.uid` is not a valid uid: {0}")]
    BadUid(NameError),
    /// The configured key cannot verify anything: a server-side problem.
    #[error("the server's token key is unusable: {0}")]
    ServerKey(String),
    #[error(
        "the HTTP API is disabled: no API keys are configured (set api.keys or \
         HERALD_API__KEYS, or run in dev mode)"
    )]
    ApiKeysNotConfigured,
    #[error("missing API key: send the header Authorization: Bearer <api key>")]
    ApiKeyMissing,
    #[error("malformed Authorization header: expected Bearer <api key>")]
    ApiKeyMalformed,
    #[error("API key is not valid")]
    ApiKeyInvalid,
}

/// Verifies `hello` credentials and API keys. Built once at start from the config.
pub(crate) struct Authenticator {
    dev: bool,
    hs256: Option<DecodingKey>,
    /// RS256 or ES256, with its key.
    public: Option<(Algorithm, DecodingKey)>,
    leeway_ms: u64,
    api_keys: Vec<Vec<u8>>,
    /// Keys by `kid` from `auth.jwks_url` (`None` when not configured).
    jwks: Option<crate::jwks::Keys>,
    audience: Option<String>,
    issuer: Option<String>,
    /// 0 = unlimited.
    max_lifetime_ms: u64,
    /// uid → tokens issued before this time (ms) are refused.
    revoked: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Authenticator {
    /// Loads the keys. A missing, unreadable or unsuitable key is a [`ConfigError`] naming the
    /// key (`auth.public_key_pem: …`).
    pub(crate) fn new(
        auth: &AuthSection,
        api: &ApiSection,
        dev: bool,
    ) -> Result<Authenticator, ConfigError> {
        let hs256 = match &auth.hs256_secret {
            None => None,
            Some(s) if s.len() < MIN_HS256_SECRET_BYTES => {
                return Err(ConfigError::Key {
                    key: "auth.hs256_secret",
                    reason: format!(
                        "is {} bytes; HS256 needs at least {MIN_HS256_SECRET_BYTES}",
                        s.len()
                    ),
                })
            }
            Some(s) => Some(DecodingKey::from_secret(s.as_bytes())),
        };
        let public = match &auth.public_key_pem {
            None => None,
            Some(value) => Some(load_public_key(value)?),
        };
        Ok(Authenticator {
            dev,
            hs256,
            public,
            leeway_ms: auth.leeway_ms,
            api_keys: api.keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            jwks: auth.jwks_url.as_ref().map(|_| crate::jwks::Keys::default()),
            audience: auth.audience.clone(),
            issuer: auth.issuer.clone(),
            max_lifetime_ms: auth.max_token_lifetime_ms,
            revoked: Default::default(),
        })
    }

    /// [`Authenticator::new`] from a loaded config (`server.dev` is the dev flag).
    pub(crate) fn from_config(cfg: &Config) -> Result<Authenticator, ConfigError> {
        Authenticator::new(&cfg.auth, &cfg.api, cfg.server.dev)
    }

    /// The key set `auth.jwks_url` fills, for the refresher.
    pub(crate) fn jwks_keys(&self) -> Option<crate::jwks::Keys> {
        self.jwks.clone()
    }

    /// Refuses every token of `uid` issued before `at_ms` (a kick with `revoke`). Held in
    /// memory: a restart forgets it, so keep `auth.max_token_lifetime_ms` short.
    pub(crate) fn revoke(&self, uid: &str, at_ms: u64) {
        let mut map = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        // Entries older than the longest token lifetime can no longer matter.
        if self.max_lifetime_ms > 0 {
            let horizon = at_ms.saturating_sub(self.max_lifetime_ms + self.leeway_ms);
            map.retain(|_, t| *t >= horizon);
        }
        map.insert(uid.to_string(), at_ms);
    }

    fn revoked_before(&self, uid: &str) -> Option<u64> {
        let map = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        map.get(uid).copied()
    }

    /// One line for the startup log, e.g. `tokens: HS256, ES256; API keys: 2; dev mode: off`.
    pub(crate) fn describe(&self) -> String {
        let algs = self.accepted();
        format!(
            "tokens: {}; API keys: {}; dev mode: {}",
            if algs.is_empty() { "none" } else { &algs },
            self.api_keys.len(),
            if self.dev { "ON" } else { "off" }
        )
    }

    /// Checks the credentials of a `hello`: its token or, in dev mode, its uid.
    pub(crate) fn authenticate(&self, hello: &Hello) -> Result<Identity, AuthError> {
        if let Some(token) = &hello.token {
            return self.verify(token, hello.device.as_deref());
        }
        if !self.dev {
            return Err(AuthError::TokenRequired);
        }
        let uid = hello.uid.as_ref().ok_or(AuthError::NoCredentials)?;
        validate_name("uid", uid).map_err(AuthError::BadUid)?;
        Ok(Identity {
            uid: uid.clone(),
            device: None,
            grants: ChannelGrants::default(),
        })
    }

    /// Checks an `Authorization` header against `api.keys` (always `Ok` in dev mode).
    pub(crate) fn check_api_key(
        &self,
        authorization_header: Option<&str>,
    ) -> Result<(), AuthError> {
        if self.dev {
            return Ok(());
        }
        if self.api_keys.is_empty() {
            return Err(AuthError::ApiKeysNotConfigured);
        }
        let header = authorization_header.ok_or(AuthError::ApiKeyMissing)?;
        let (scheme, key) = header
            .trim()
            .split_once(' ')
            .ok_or(AuthError::ApiKeyMalformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::ApiKeyMalformed);
        }
        let key = key.trim().as_bytes();
        // Compare against every key, without stopping early.
        let matched = self
            .api_keys
            .iter()
            .fold(false, |found, k| constant_time_eq(k, key) | found);
        if matched {
            Ok(())
        } else {
            Err(AuthError::ApiKeyInvalid)
        }
    }

    fn accepted(&self) -> String {
        let mut algs = Vec::new();
        if self.hs256.is_some() {
            algs.push("HS256");
        }
        match &self.public {
            Some((Algorithm::RS256, _)) => algs.push("RS256"),
            Some((Algorithm::ES256, _)) => algs.push("ES256"),
            _ => {}
        }
        algs.join(", ")
    }

    fn verify(&self, token: &str, hello_device: Option<&str>) -> Result<Identity, AuthError> {
        if self.hs256.is_none() && self.public.is_none() && self.jwks.is_none() {
            return Err(AuthError::NoKeyConfigured);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            // An `alg` outside jsonwebtoken's list (`none`, …) fails as a JSON error.
            match e.kind() {
                ErrorKind::Json(json) if json.to_string().starts_with("unknown variant `") => {
                    AuthError::WrongAlgorithm {
                        got: json
                            .to_string()
                            .split('`')
                            .nth(1)
                            .unwrap_or("?")
                            .to_string(),
                        accepted: self.accepted(),
                    }
                }
                _ => jwt_error(&e),
            }
        })?;
        let from_jwks = match (&self.jwks, header.kid.as_deref()) {
            (Some(keys), Some(kid)) => match keys.get(kid) {
                Some((alg, key)) if alg == header.alg => Some(key),
                Some((alg, _)) => {
                    return Err(AuthError::WrongAlgorithm {
                        got: format!("{:?}", header.alg),
                        accepted: format!("{alg:?} for kid {kid:?}"),
                    })
                }
                None => return Err(AuthError::UnknownKid(kid.to_string())),
            },
            _ => None,
        };
        let key = match (from_jwks.as_ref(), header.alg, &self.public) {
            (Some(k), _, _) => Some(k),
            (None, Algorithm::HS256, _) => self.hs256.as_ref(),
            (None, alg, Some((public_alg, key))) if alg == *public_alg => Some(key),
            _ => None,
        };
        let Some(key) = key else {
            return Err(AuthError::WrongAlgorithm {
                got: format!("{:?}", header.alg),
                accepted: self.accepted(),
            });
        };
        // jsonwebtoken checks the signature only; claims are checked below, with better errors.
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| jwt_error(&e))?
            .claims;

        let now_ms = now_ms();
        let leeway = self.leeway_ms as f64;
        let exp_ms = match &claims.exp {
            None => return Err(AuthError::MissingExp),
            Some(v) => numeric_date_ms("exp", v)?,
        };
        if now_ms > exp_ms + leeway {
            return Err(AuthError::Expired {
                ago: human_ms(now_ms - exp_ms),
            });
        }
        if let Some(v) = &claims.nbf {
            let nbf_ms = numeric_date_ms("nbf", v)?;
            if nbf_ms - leeway > now_ms {
                return Err(AuthError::NotYetValid {
                    wait: human_ms(nbf_ms - now_ms),
                });
            }
        }

        let iat_ms = claims
            .iat
            .as_ref()
            .map(|v| numeric_date_ms("iat", v))
            .transpose()?;
        if self.max_lifetime_ms > 0 {
            let lives = exp_ms - iat_ms.unwrap_or(now_ms).min(now_ms);
            if lives > (self.max_lifetime_ms + self.leeway_ms) as f64 {
                return Err(AuthError::TooLong {
                    lives: human_ms(lives),
                    max: human_ms(self.max_lifetime_ms as f64),
                });
            }
        }
        if let Some(want) = &self.audience {
            let ok = match &claims.aud {
                Some(Value::String(a)) => a == want,
                Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return Err(AuthError::BadClaim {
                    claim: "aud",
                    reason: format!("must name {want:?} (auth.audience)"),
                });
            }
        }
        if let Some(want) = &self.issuer {
            if claims.iss.as_ref().and_then(Value::as_str) != Some(want.as_str()) {
                return Err(AuthError::BadClaim {
                    claim: "iss",
                    reason: format!("must be {want:?} (auth.issuer)"),
                });
            }
        }

        let uid = match &claims.sub {
            None => return Err(AuthError::BadSub("is missing; it must be the uid".into())),
            Some(Value::String(s)) => s,
            Some(_) => return Err(AuthError::BadSub("must be a string (the uid)".into())),
        };
        validate_name("uid", uid)
            .map_err(|e| AuthError::BadSub(format!("is not a valid uid: {e}")))?;
        if let Some(before) = self.revoked_before(uid) {
            if iat_ms.is_none_or(|iat| iat < before as f64) {
                return Err(AuthError::Revoked(before));
            }
        }

        let device = match &claims.device {
            None => None,
            Some(Value::String(d)) => {
                validate_name("device", d).map_err(|e| AuthError::BadClaim {
                    claim: "device",
                    reason: e.to_string(),
                })?;
                Some(d.clone())
            }
            Some(_) => {
                return Err(AuthError::BadClaim {
                    claim: "device",
                    reason: "must be a string".into(),
                })
            }
        };
        if let (Some(bound), Some(asked)) = (&device, hello_device) {
            if bound != asked {
                return Err(AuthError::DeviceMismatch {
                    token: bound.clone(),
                    hello: asked.to_string(),
                });
            }
        }

        Ok(Identity {
            uid: uid.clone(),
            device,
            grants: grants(claims.chans.as_ref())?,
        })
    }
}

/// The claims herald reads, kept loose so each can get its own error message.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    nbf: Option<Value>,
    #[serde(default)]
    iat: Option<Value>,
    #[serde(default)]
    aud: Option<Value>,
    #[serde(default)]
    iss: Option<Value>,
    #[serde(default)]
    device: Option<Value>,
    #[serde(default)]
    chans: Option<Value>,
}

fn jwt_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidToken => {
            AuthError::Malformed("expected three base64url parts separated by dots".into())
        }
        ErrorKind::Base64(err) => AuthError::Malformed(format!("bad base64url: {err}")),
        ErrorKind::Utf8(_) => AuthError::Malformed("header or claims are not UTF-8".into()),
        ErrorKind::Json(err) => {
            AuthError::Malformed(format!("bad JSON in header or claims: {err}"))
        }
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => {
            AuthError::ServerKey(e.to_string())
        }
        _ => AuthError::Malformed(e.to_string()),
    }
}

/// A JWT NumericDate (seconds since the epoch, possibly fractional) in milliseconds.
fn numeric_date_ms(claim: &'static str, v: &Value) -> Result<f64, AuthError> {
    v.as_f64()
        .filter(|s| s.is_finite())
        .map(|s| s * 1000.0)
        .ok_or(AuthError::BadClaim {
            claim,
            reason: "must be a number of seconds since the Unix epoch".into(),
        })
}

#[allow(clippy::disallowed_types)]
fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as f64)
        .unwrap_or(0.0)
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`, `250ms`: two units at most.
fn human_ms(ms: f64) -> String {
    let ms = ms.max(0.0).round() as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn grants(chans: Option<&Value>) -> Result<ChannelGrants, AuthError> {
    let bad = |reason: String| AuthError::BadClaim {
        claim: "chans",
        reason,
    };
    let map = match chans {
        None | Some(Value::Null) => return Ok(ChannelGrants::default()),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(bad(
                "must be an object like {\"pub\":[\"room*\"],\"sub\":[\"*\"]}".into(),
            ))
        }
    };
    if let Some(k) = map.keys().find(|k| *k != "pub" && *k != "sub") {
        return Err(bad(format!(
            "unknown key {k:?}; expected \"pub\" and/or \"sub\""
        )));
    }
    let list = |action: &str| -> Result<Vec<Pattern>, AuthError> {
        match map.get(action) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(p) => pattern(p)
                        .map_err(|reason| bad(format!("{action} pattern {p:?}: {reason}"))),
                    _ => Err(bad(format!("{action} must be a list of strings"))),
                })
                .collect(),
            Some(_) => Err(bad(format!("{action} must be a list of strings"))),
        }
    };
    Ok(ChannelGrants {
        publish: Some(list("pub")?),
        subscribe: Some(list("sub")?),
    })
}

/// A channel name, or a prefix of one followed by `*` (`*` alone matches every channel).
fn pattern(p: &str) -> Result<Pattern, String> {
    let prefix = p.strip_suffix('*').unwrap_or(p);
    if prefix.contains('*') {
        return Err("* is allowed only at the end".into());
    }
    if !(prefix.is_empty() && p == "*") {
        validate_name("channel", prefix).map_err(|e| e.to_string())?;
    }
    Ok(Pattern::new(p))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Reads `auth.public_key_pem` (PEM text, or a path to a PEM file) into RS256 or ES256.
fn load_public_key(value: &str) -> Result<(Algorithm, DecodingKey), ConfigError> {
    let err = |reason: String| ConfigError::Key {
        key: PEM_KEY,
        reason,
    };
    let text = if value.trim_start().starts_with("-----BEGIN") {
        value.to_string()
    } else {
        let path = value.trim();
        std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read PEM file {path}: {e}")))?
    };
    // Tolerate indentation (multi-line TOML strings) and CRLF line ends.
    let text: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let label = text
        .lines()
        .find_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .ok_or_else(|| err("no PEM block found (expected -----BEGIN PUBLIC KEY-----)".into()))?;
    if label.contains("PRIVATE KEY") {
        return Err(err(format!(
            "holds a private key ({label}); configure its public key instead \
             (openssl pkey -in key.pem -pubout)"
        )));
    }
    if label == "CERTIFICATE" {
        return Err(err(
            "holds a certificate; configure its public key instead \
             (openssl x509 -in cert.pem -pubkey -noout)"
                .into(),
        ));
    }
    if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
        return Err(err(format!(
            "unsupported PEM block {label:?}; expected PUBLIC KEY or RSA PUBLIC KEY"
        )));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(text.as_bytes()) {
        return Ok((Algorithm::RS256, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(text.as_bytes()) {
        // A dummy ES256 token: an unusable key fails when the verifier is built, before the
        // (garbage) signature is looked at.
        const PROBE: &str = "eyJhbGciOiJFUzI1NiJ9.e30.AAAA";
        let mut v = Validation::new(Algorithm::ES256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        return match jsonwebtoken::decode::<Value>(PROBE, &key, &v) {
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                Ok((Algorithm::ES256, key))
            }
            _ => Err(err(
                "EC key is not on curve P-256; herald accepts EC keys for ES256 (P-256) only"
                    .into(),
            )),
        };
    }
    if DecodingKey::from_ed_pem(text.as_bytes()).is_ok() {
        return Err(err(
            "Ed25519 keys are not supported; use an RSA (RS256) or EC P-256 (ES256) key".into(),
        ));
    }
    Err(err(
        "not a valid RSA or EC P-256 public key in PEM format".into()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test-only";

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn fixture_path(name: &str) -> String {
        format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn now_s() -> i64 {
        (now_ms() / 1000.0) as i64
    }

    fn auth_section(secret: Option<&str>, pem: Option<String>) -> AuthSection {
        AuthSection {
            hs256_secret: secret.map(str::to_string),
            public_key_pem: pem,
            ..AuthSection::default()
        }
    }

    fn hs256_auth() -> Authenticator {
        Authenticator::new(
            &auth_section(Some(SECRET), None),
            &ApiSection::default(),
            false,
        )
        .expect("valid")
    }

    fn hs256(claims: &Value) -> String {
        hs256_with(SECRET, claims)
    }

    fn hs256_with(secret: &str, claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    fn hello(token: Option<String>, uid: Option<&str>, device: Option<&str>) -> Hello {
        Hello {
            v: 1,
            token,
            uid: uid.map(str::to_string),
            device: device.map(str::to_string),
            ..Hello::default()
        }
    }

    fn with_token(token: String) -> Hello {
        hello(Some(token), None, None)
    }

    fn valid_claims() -> Value {
        json!({"sub": "alice", "exp": now_s() + 600})
    }

    #[test]
    fn hs256_valid_token() {
        let id = hs256_auth()
            .authenticate(&with_token(hs256(&valid_claims())))
            .expect("valid");
        assert_eq!(
            id,
            Identity {
                uid: "alice".into(),
                device: None,
                grants: ChannelGrants::default(),
            }
        );
        assert!(id.grants.may_publish("anything"));
    }

    #[test]
    fn expired_token_says_how_long_ago() {
        let a = hs256_auth();
        let e = a
            .authenticate(&with_token(hs256(
                &json!({"sub": "alice", "exp": now_s() - 3700}),
            )))
            .expect_err("expired");
        assert!(matches!(e, AuthError::Expired { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg == "token expired 1h 1m ago" || msg == "token expired 1h 2m ago",
            "{msg}"
        );
        // Within the leeway (30 s default): accepted.
        assert!(a
            .authenticate(&with_token(hs256(
                &json!({"sub": "alice", "exp": now_s() - 10})
            )))
            .is_ok());
        assert!(a
            .authenticate(&with_token(hs256(
                &json!({"sub": "alice", "exp": now_s() - 45})
            )))
            .is_err());
    }

    #[test]
    fn not_yet_valid_token() {
        let e = hs256_auth()
            .authenticate(&with_token(hs256(
                &json!({"sub": "alice", "exp": now_s() + 9000, "nbf": now_s() + 7200}),
            )))
            .expect_err("nbf");
        assert!(matches!(e, AuthError::NotYetValid { .. }), "{e:?}");
    }

    #[test]
    fn missing_or_malformed_exp() {
        let a = hs256_auth();
        assert_eq!(
            a.authenticate(&with_token(hs256(&json!({"sub": "alice"})))),
            Err(AuthError::MissingExp)
        );
        let e = a
            .authenticate(&with_token(hs256(
                &json!({"sub": "alice", "exp": "tomorrow"}),
            )))
            .expect_err("bad exp");
        assert!(
            matches!(e, AuthError::BadClaim { claim: "exp", .. }),
            "{e:?}"
        );
        // Fractional NumericDate is fine.
        assert!(a
            .authenticate(&with_token(hs256(
                &json!({"sub": "alice", "exp": now_s() as f64 + 60.5})
            )))
            .is_ok());
    }

    #[test]
    fn bad_signature_and_wrong_secret() {
        let a = hs256_auth();
        let other = hs256_with("another-secret-another-secret-another", &valid_claims());
        assert_eq!(
            a.authenticate(&with_token(other)),
            Err(AuthError::BadSignature)
        );

        // Tamper with the payload: signature no longer matches.
        let token = hs256(&valid_claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let evil = hs256(&json!({"sub": "mallory", "exp": now_s() + 600}));
        let evil_payload = evil.split('.').nth(1).expect("payload");
        parts[1] = evil_payload;
        assert_eq!(
            a.authenticate(&with_token(parts.join("."))),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn malformed_tokens() {
        let a = hs256_auth();
        for t in ["", "abc", "a.b", "a.b.c", "!!.??.##"] {
            let e = a.authenticate(&with_token(t.into())).expect_err(t);
            assert!(matches!(e, AuthError::Malformed(_)), "{t:?}: {e:?}");
        }
    }

    #[test]
    fn errors_never_echo_the_token() {
        let a = hs256_auth();
        let tokens = [
            hs256(&json!({"sub": "alice"})),
            hs256_with("another-secret-another-secret-another", &valid_claims()),
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.".to_string(),
            "not-a-token-at-all-secret-stuff".to_string(),
        ];
        for t in tokens {
            let msg = a
                .authenticate(&with_token(t.clone()))
                .expect_err("bad")
                .to_string();
            for part in t.split('.').filter(|p| p.len() > 4) {
                assert!(!msg.contains(part), "{msg:?} echoes the token");
            }
        }
    }

    #[test]
    fn wrong_algorithm() {
        let a = hs256_auth();
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &valid_claims(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode");
        assert_eq!(
            a.authenticate(&with_token(hs512)),
            Err(AuthError::WrongAlgorithm {
                got: "HS512".into(),
                accepted: "HS256".into()
            })
        );
        // alg "none" is never accepted.
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(
            a.authenticate(&with_token(none.into())),
            Err(AuthError::WrongAlgorithm {
                got: "none".into(),
                accepted: "HS256".into()
            })
        );
        // An RS256 token on an HS256-only server.
        let rs = rs256(&valid_claims());
        let e = a.authenticate(&with_token(rs)).expect_err("rs256");
        assert_eq!(
            e.to_string(),
            "token is signed with RS256; this server accepts HS256"
        );
    }

    #[test]
    fn bad_sub() {
        let a = hs256_auth();
        let exp = now_s() + 600;
        for claims in [
            json!({"exp": exp}),
            json!({"sub": 42, "exp": exp}),
            json!({"sub": "al ice", "exp": exp}),
            json!({"sub": "", "exp": exp}),
        ] {
            let e = a
                .authenticate(&with_token(hs256(&claims)))
                .expect_err("bad sub");
            assert!(matches!(e, AuthError::BadSub(_)), "{claims}: {e:?}");
        }
        let e = a
            .authenticate(&with_token(hs256(&json!({"sub": "al ice", "exp": exp}))))
            .expect_err("bad");
        assert_eq!(
            e.to_string(),
            "token claim `sub` is not a valid uid: uid contains ' '; names may contain only A-Z a-z 0-9 _ - . /"
        );
    }

    #[test]
    fn device_binding() {
        let a = hs256_auth();
        let token = hs256(&json!({"sub": "alice", "exp": now_s() + 600, "device": "phone-1"}));
        let id = a
            .authenticate(&hello(Some(token.clone()), None, Some("phone-1")))
            .expect("same device");
        assert_eq!(id.device.as_deref(), Some("phone-1"));
        // No hello.device: the token's device is the one.
        let id = a.authenticate(&with_token(token.clone())).expect("bound");
        assert_eq!(id.device.as_deref(), Some("phone-1"));
        assert_eq!(
            a.authenticate(&hello(Some(token), None, Some("laptop"))),
            Err(AuthError::DeviceMismatch {
                token: "phone-1".into(),
                hello: "laptop".into()
            })
        );
        // An unbound token accepts any device.
        let id = a
            .authenticate(&hello(Some(hs256(&valid_claims())), None, Some("laptop")))
            .expect("unbound");
        assert_eq!(id.device, None);
        let e = a
            .authenticate(&with_token(hs256(
                &json!({"sub": "alice", "exp": now_s() + 600, "device": "a b"}),
            )))
            .expect_err("bad device");
        assert!(matches!(
            e,
            AuthError::BadClaim {
                claim: "device",
                ..
            }
        ));
    }

    #[test]
    fn chans_claim() {
        let a = hs256_auth();
        let exp = now_s() + 600;
        let grants = |chans: Value| {
            a.authenticate(&with_token(hs256(
                &json!({"sub": "alice", "exp": exp, "chans": chans}),
            )))
            .map(|id| id.grants)
        };

        let g = grants(json!({"pub": ["room*", "lobby"], "sub": ["*"]})).expect("valid");
        assert!(g.may_publish("room1") && g.may_publish("lobby"));
        assert!(!g.may_publish("lobby2") && !g.may_publish("other"));
        assert!(g.may_subscribe("anything"));

        // A missing list inside chans allows nothing for that action.
        let g = grants(json!({"sub": ["news/*"]})).expect("valid");
        assert!(!g.may_publish("news/1") && !g.may_publish("x"));
        assert!(g.may_subscribe("news/1") && !g.may_subscribe("sport"));
        assert_eq!(g.publish, Some(vec![]));
        let g = grants(json!({})).expect("valid");
        assert!(!g.may_publish("a") && !g.may_subscribe("a"));

        // chans: null is the same as absent: everything allowed.
        assert_eq!(
            grants(Value::Null).expect("valid"),
            ChannelGrants::default()
        );

        for bad in [
            json!(["room1"]),
            json!({"publish": ["x"]}),
            json!({"pub": "room1"}),
            json!({"pub": [1]}),
            json!({"pub": ["ro*om"]}),
            json!({"pub": ["a b"]}),
            json!({"pub": [""]}),
        ] {
            let e = grants(bad.clone()).expect_err("bad chans");
            assert!(
                matches!(e, AuthError::BadClaim { claim: "chans", .. }),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn rs256_with_pem_file_and_inline_text() {
        let claims = json!({"sub": "bob", "exp": now_s() + 600, "chans": {"sub": ["*"]}});
        let token = rs256(&claims);
        for pem in [
            fixture_path("rsa_public.pem"),
            fixture("rsa_public.pem"),
            fixture("rsa_public_pkcs1.pem"),
        ] {
            let a = Authenticator::new(
                &auth_section(None, Some(pem)),
                &ApiSection::default(),
                false,
            )
            .expect("rsa key");
            let id = a
                .authenticate(&with_token(token.clone()))
                .expect("valid rs256");
            assert_eq!(id.uid, "bob");
            assert!(id.grants.may_subscribe("x") && !id.grants.may_publish("x"));
        }
        // Signed by another key: use the EC key pair's token against the RSA server.
        let a = Authenticator::new(
            &auth_section(None, Some(fixture_path("rsa_public.pem"))),
            &ApiSection::default(),
            false,
        )
        .expect("rsa key");
        let e = a
            .authenticate(&with_token(es256(&claims)))
            .expect_err("es256");
        assert_eq!(
            e.to_string(),
            "token is signed with ES256; this server accepts RS256"
        );
        // An HS256 token cannot be forged with the public key as secret (alg confusion).
        let forged = hs256_with(&fixture("rsa_public.pem"), &claims);
        assert!(matches!(
            a.authenticate(&with_token(forged)),
            Err(AuthError::WrongAlgorithm { .. })
        ));
    }

    #[test]
    fn es256_and_both_keys() {
        let a = Authenticator::new(
            &auth_section(Some(SECRET), Some(fixture_path("ec_public.pem"))),
            &ApiSection::default(),
            false,
        )
        .expect("keys");
        assert_eq!(
            a.describe(),
            "tokens: HS256, ES256; API keys: 0; dev mode: off"
        );
        let id = a
            .authenticate(&with_token(es256(&valid_claims())))
            .expect("valid es256");
        assert_eq!(id.uid, "alice");
        assert!(a.authenticate(&with_token(hs256(&valid_claims()))).is_ok());
        let expired = es256(&json!({"sub": "alice", "exp": now_s() - 120}));
        assert!(matches!(
            a.authenticate(&with_token(expired)),
            Err(AuthError::Expired { .. })
        ));
        // Tampered ES256 signature.
        let token = es256(&valid_claims());
        let (rest, sig) = token.rsplit_once('.').expect("three parts");
        let mut sig = sig.to_string();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        sig.replace_range(0..1, flipped);
        assert_eq!(
            a.authenticate(&with_token(format!("{rest}.{sig}"))),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn bad_public_keys_are_config_errors_naming_the_key() {
        let err = |pem: String| {
            Authenticator::new(
                &auth_section(None, Some(pem)),
                &ApiSection::default(),
                false,
            )
            .expect_err("bad key")
            .to_string()
        };
        let e = err("/nonexistent/key.pem".into());
        assert!(
            e.starts_with("auth.public_key_pem: cannot read PEM file /nonexistent/key.pem: "),
            "{e}"
        );
        let e = err(fixture("rsa_private.pem"));
        assert!(
            e.starts_with("auth.public_key_pem: holds a private key"),
            "{e}"
        );
        let e = err(fixture_path("ec_p384_public.pem"));
        assert!(e.contains("not on curve P-256"), "{e}");
        let e = err("-----BEGIN PUBLIC KEY-----\nnotbase64!!\n-----END PUBLIC KEY-----\n".into());
        assert!(
            e.starts_with("auth.public_key_pem: not a valid RSA or EC P-256"),
            "{e}"
        );
        let e = err(fixture_path("README.md"));
        assert!(e.contains("no PEM block found"), "{e}");
        // Indented inline PEM (e.g. from a TOML multi-line string) is fine.
        let indented: String = fixture("ec_public.pem")
            .lines()
            .map(|l| format!("    {l}\r\n"))
            .collect();
        assert!(Authenticator::new(
            &auth_section(None, Some(indented.trim_start().to_string())),
            &ApiSection::default(),
            false
        )
        .is_ok());
        // A short secret.
        let e = Authenticator::new(
            &auth_section(Some("short"), None),
            &ApiSection::default(),
            false,
        )
        .expect_err("short")
        .to_string();
        assert_eq!(e, "auth.hs256_secret: is 5 bytes; HS256 needs at least 32");
    }

    #[test]
    fn no_token() {
        let a = hs256_auth();
        assert_eq!(
            a.authenticate(&hello(None, None, None)),
            Err(AuthError::TokenRequired)
        );
        assert_eq!(
            a.authenticate(&hello(None, Some("alice"), None)),
            Err(AuthError::TokenRequired)
        );
    }

    #[test]
    fn token_without_configured_key() {
        let a = Authenticator::new(&AuthSection::default(), &ApiSection::default(), false)
            .expect("no keys is valid");
        let e = a
            .authenticate(&with_token(hs256(&valid_claims())))
            .expect_err("no key");
        assert_eq!(e, AuthError::NoKeyConfigured);
        assert!(
            e.to_string().contains("auth.hs256_secret")
                && e.to_string().contains("auth.public_key_pem")
        );
        // Same in dev mode: a token must verify.
        let dev = Authenticator::new(&AuthSection::default(), &ApiSection::default(), true)
            .expect("valid");
        assert_eq!(
            dev.authenticate(&hello(Some(hs256(&valid_claims())), Some("alice"), None)),
            Err(AuthError::NoKeyConfigured)
        );
    }

    #[test]
    fn dev_mode() {
        let a = Authenticator::new(
            &auth_section(Some(SECRET), None),
            &ApiSection::default(),
            true,
        )
        .expect("valid");
        assert!(a.dev);
        let id = a
            .authenticate(&hello(None, Some("alice"), Some("phone")))
            .expect("dev uid");
        assert_eq!(id.uid, "alice");
        assert_eq!(id.device, None);
        assert_eq!(id.grants, ChannelGrants::default());
        assert!(matches!(
            a.authenticate(&hello(None, Some("bad uid"), None)),
            Err(AuthError::BadUid(_))
        ));
        assert_eq!(
            a.authenticate(&hello(None, None, None)),
            Err(AuthError::NoCredentials)
        );
        // The token wins over the uid…
        let token = hs256(&json!({"sub": "bob", "exp": now_s() + 60}));
        let id = a
            .authenticate(&hello(Some(token), Some("alice"), None))
            .expect("token");
        assert_eq!(id.uid, "bob");
        // …and must verify.
        let expired = hs256(&json!({"sub": "bob", "exp": now_s() - 600}));
        assert!(matches!(
            a.authenticate(&hello(Some(expired), Some("alice"), None)),
            Err(AuthError::Expired { .. })
        ));
    }

    #[test]
    fn api_keys() {
        let api = ApiSection {
            keys: vec!["key-one".into(), "key-two".into()],
            ..ApiSection::default()
        };
        let a = Authenticator::new(&AuthSection::default(), &api, false).expect("valid");
        assert_eq!(a.check_api_key(Some("Bearer key-one")), Ok(()));
        assert_eq!(a.check_api_key(Some("bearer  key-two ")), Ok(()));
        assert_eq!(
            a.check_api_key(Some("Bearer key-three")),
            Err(AuthError::ApiKeyInvalid)
        );
        assert_eq!(
            a.check_api_key(Some("Bearer key-on")),
            Err(AuthError::ApiKeyInvalid)
        );
        assert_eq!(
            a.check_api_key(Some("Bearer ")),
            Err(AuthError::ApiKeyMalformed)
        );
        assert_eq!(
            a.check_api_key(Some("Basic key-one")),
            Err(AuthError::ApiKeyMalformed)
        );
        assert_eq!(
            a.check_api_key(Some("key-one")),
            Err(AuthError::ApiKeyMalformed)
        );
        assert_eq!(a.check_api_key(None), Err(AuthError::ApiKeyMissing));
        assert!(!AuthError::ApiKeyInvalid.to_string().contains("key-"));

        let none = Authenticator::new(&AuthSection::default(), &ApiSection::default(), false)
            .expect("valid");
        let e = none
            .check_api_key(Some("Bearer anything"))
            .expect_err("no keys");
        assert_eq!(e, AuthError::ApiKeysNotConfigured);
        assert!(e.to_string().contains("api.keys"));

        let dev = Authenticator::new(&AuthSection::default(), &ApiSection::default(), true)
            .expect("valid");
        assert_eq!(dev.check_api_key(None), Ok(()));
        assert_eq!(dev.check_api_key(Some("Bearer whatever")), Ok(()));
    }

    #[test]
    fn debug_does_not_leak() {
        let api = ApiSection {
            keys: vec!["key-one".into()],
            ..ApiSection::default()
        };
        let a = Authenticator::new(&auth_section(Some(SECRET), None), &api, false).expect("valid");
        let d = format!("{a:?}");
        assert!(!d.contains(SECRET) && !d.contains("key-one"), "{d}");
    }

    #[test]
    fn from_config_uses_server_dev() {
        let mut cfg = Config::default();
        cfg.server.dev = true;
        assert!(Authenticator::from_config(&cfg).expect("valid").dev);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_ms(250.0), "250ms");
        assert_eq!(human_ms(12_000.0), "12s");
        assert_eq!(human_ms(250_000.0), "4m 10s");
        assert_eq!(human_ms(7_500_000.0), "2h 5m");
        assert_eq!(human_ms(3.0 * 86_400_000.0 + 4.0 * 3_600_000.0), "3d 4h");
    }

    fn rs256(claims: &Value) -> String {
        let key = EncodingKey::from_rsa_pem(fixture("rsa_private.pem").as_bytes()).expect("rsa");
        encode(&Header::new(Algorithm::RS256), claims, &key).expect("encode")
    }

    fn es256(claims: &Value) -> String {
        let key = EncodingKey::from_ec_pem(fixture("ec_private.pem").as_bytes()).expect("ec");
        encode(&Header::new(Algorithm::ES256), claims, &key).expect("encode")
    }
}
