//! Verification keys from a JWKS URL (`auth.jwks_url`), chosen by the token header's `kid`
//! and refreshed in the background every `auth.jwks_refresh_ms`, so an identity provider can
//! rotate its keys without a restart. A failed refresh keeps the last good key set (and says
//! so in the log); a token whose `kid` is unknown is refused.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use tracing::{info, warn};

use crate::shutdown::ShutdownSignal;

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// `kid` → the algorithm and key it verifies.
type KeyMap = HashMap<String, (Algorithm, DecodingKey)>;

/// The current key set, shared by the verifier and the refresher.
#[derive(Clone, Default)]
pub(crate) struct Keys(Arc<RwLock<KeyMap>>);

impl Keys {
    pub(crate) fn get(&self, kid: &str) -> Option<(Algorithm, DecodingKey)> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.get(kid).cloned()
    }

    fn replace(&self, keys: KeyMap) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }
}

/// Parses a JWKS document into `kid → (algorithm, key)`. Keys without `kid`, or of a type
/// herald does not verify, are skipped (and named in the returned notes).
pub(crate) fn parse(text: &str) -> Result<(KeyMap, Vec<String>), String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    let mut notes = Vec::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            notes.push("a key without `kid` was skipped".to_string());
            continue;
        };
        let alg = match jwk.common.key_algorithm.map(Algorithm::try_from) {
            Some(Ok(a)) => a,
            Some(Err(_)) => {
                notes.push(format!(
                    "key {kid:?}: its `alg` is not a signing algorithm; skipped"
                ));
                continue;
            }
            None => match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
                _ => {
                    notes.push(format!("key {kid:?}: unsupported key type; skipped"));
                    continue;
                }
            },
        };
        if !matches!(alg, Algorithm::RS256 | Algorithm::ES256 | Algorithm::HS256) {
            notes.push(format!(
                "key {kid:?}: {alg:?} is not accepted (RS256, ES256, HS256); skipped"
            ));
            continue;
        }
        match DecodingKey::from_jwk(jwk) {
            Ok(k) => {
                keys.insert(kid, (alg, k));
            }
            Err(e) => notes.push(format!("key {kid:?}: {e}; skipped")),
        }
    }
    Ok((keys, notes))
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let res = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("answered {}", res.status()));
    }
    let body = res.bytes().await.map_err(|e| e.to_string())?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("document is over {MAX_JWKS_BYTES} bytes"));
    }
    String::from_utf8(body.to_vec()).map_err(|_| "document is not UTF-8".to_string())
}

/// Fetches the key set once; returns how many keys are in use.
pub(crate) async fn refresh(
    client: &reqwest::Client,
    url: &str,
    keys: &Keys,
) -> Result<usize, String> {
    let text = fetch(client, url).await?;
    let (set, notes) = parse(&text)?;
    for n in notes {
        warn!(url, note = %n, "auth.jwks_url");
    }
    let n = set.len();
    keys.replace(set);
    Ok(n)
}

/// Refreshes the key set every `every` until shutdown.
pub(crate) async fn run(url: String, every: Duration, keys: Keys, mut stop: ShutdownSignal) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(err = %e, "auth.jwks_url: no HTTP client; keys are not refreshed");
            return;
        }
    };
    let mut first = true;
    loop {
        match refresh(&client, &url, &keys).await {
            Ok(n) => {
                if first {
                    info!(url = %url, keys = n, "auth.jwks_url: verification keys loaded");
                }
            }
            Err(e) => {
                warn!(url = %url, err = %e, "auth.jwks_url: refresh failed; keeping the previous keys")
            }
        }
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait() => return,
        }
    }
}
