//! The HTTP side of the operator commands: one [`Api`] per command, which builds URLs from
//! path segments (escaped), sends the API key, and turns every failure into a [`CliError`]
//! that tells the operator what to do about it.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::CliError;
use crate::cli::{ServerArgs, DEFAULT_SERVER};

/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one server's HTTP API.
pub(crate) struct Api {
    base: Url,
    key: Option<String>,
    http: reqwest::Client,
}

impl Api {
    /// Checks `--server` (a scheme-less `host:port` means `http://host:port`).
    pub(crate) fn new(args: &ServerArgs) -> Result<Api, CliError> {
        // An empty HERALD_SERVER is unset, as for the server's own HERALD_* variables.
        let raw = match args.server.trim() {
            "" => DEFAULT_SERVER,
            given => given,
        };
        let with_scheme = if raw.contains("://") {
            raw.to_string()
        } else {
            format!("http://{raw}")
        };
        let base = Url::parse(&with_scheme)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--server {raw:?} is not an http:// URL (e.g. http://127.0.0.1:7070)"
                ))
            })?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| CliError::Usage(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Api {
            base,
            key: args.api_key.clone().filter(|k| !k.is_empty()),
            http,
        })
    }

    /// The server as the operator gave it, for messages.
    pub(crate) fn server(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// The base URL with `segments` appended (each escaped) and `query`.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url, CliError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| CliError::Usage(format!("--server {} cannot be a base URL", self.base)))?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(url)
    }

    /// GET; the answer's body on success.
    pub(crate) async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<String, CliError> {
        self.send(Method::GET, segments, query).await
    }

    /// DELETE; the answer's body on success.
    pub(crate) async fn delete(&self, segments: &[&str]) -> Result<String, CliError> {
        self.send(Method::DELETE, segments, &[]).await
    }

    async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<String, CliError> {
        let url = self.url(segments, query)?;
        let mut req = self.http.request(method, url);
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| self.transport(&e))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| self.transport(&e))?;
        if status.is_success() {
            return Ok(body);
        }
        let (code, msg) = error_of(&body);
        Err(match status {
            StatusCode::UNAUTHORIZED => CliError::Unauthorized {
                url: self.server().to_string(),
                msg,
                hint: if self.key.is_some() {
                    "Check the key given with --api-key or HERALD_API_KEY (one of the server's api.keys)"
                } else {
                    "Pass an API key with --api-key KEY or set HERALD_API_KEY"
                },
            },
            StatusCode::NOT_FOUND => CliError::NotFound(msg),
            _ => CliError::Api {
                url: self.server().to_string(),
                status: status.as_u16(),
                code,
                msg,
            },
        })
    }

    /// Parses an answer body as JSON.
    pub(crate) fn json(&self, body: &str) -> Result<Value, CliError> {
        serde_json::from_str(body).map_err(|e| self.bad_answer(&format!("not JSON ({e})")))
    }

    pub(crate) fn bad_answer(&self, msg: &str) -> CliError {
        CliError::BadAnswer {
            url: self.server().to_string(),
            msg: msg.to_string(),
        }
    }

    /// A request that got no HTTP answer.
    fn transport(&self, e: &reqwest::Error) -> CliError {
        let cause = if e.is_timeout() {
            "timed out".to_string()
        } else {
            root_cause(e)
        };
        CliError::Unreachable {
            url: self.server().to_string(),
            cause,
        }
    }
}

/// The innermost error's words ("Connection refused (os error 111)"), which say more than
/// reqwest's "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// `(code, msg)` of an API error body `{"error":{"code","msg"}}`, or the raw text.
fn error_of(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let field = |k: &str| {
        v.pointer(&format!("/error/{k}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match (field("code"), field("msg")) {
        (Some(code), Some(msg)) => (code, msg),
        (code, _) => {
            let text = body.trim();
            let text = if text.is_empty() {
                "(empty answer)".to_string()
            } else {
                text.chars().take(200).collect()
            };
            (code.unwrap_or_else(|| "error".into()), text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(server: &str) -> Result<Api, CliError> {
        Api::new(&ServerArgs {
            server: server.into(),
            api_key: None,
        })
    }

    #[test]
    fn urls_are_built_from_escaped_segments() {
        let a = api("http://127.0.0.1:7070").expect("valid");
        let u = a
            .url(&["v1", "messages", "m_1"], &[("limit", "5".into())])
            .expect("url");
        assert_eq!(u.as_str(), "http://127.0.0.1:7070/v1/messages/m_1?limit=5");
        let u = a.url(&["v1", "sessions", "a/b?c"], &[]).expect("url");
        assert_eq!(u.as_str(), "http://127.0.0.1:7070/v1/sessions/a%2Fb%3Fc");
        let u = a
            .url(&["v1", "messages"], &[("s", "user:bob".into())])
            .expect("url");
        assert_eq!(u.as_str(), "http://127.0.0.1:7070/v1/messages?s=user%3Abob");
        // A path prefix (behind a proxy) is kept; a scheme-less address means http.
        let a = api("https://proxy.example/herald/").expect("valid");
        let u = a.url(&["v1", "events"], &[]).expect("url");
        assert_eq!(u.as_str(), "https://proxy.example/herald/v1/events");
        let a = api("localhost:9000").expect("valid");
        assert_eq!(a.server(), "http://localhost:9000");
        // Empty (an empty HERALD_SERVER) is the default.
        assert_eq!(api(" ").expect("valid").server(), "http://127.0.0.1:7070");
    }

    #[test]
    fn bad_servers_are_usage_errors() {
        for bad in ["ftp://x", "http://", "::::"] {
            assert!(
                matches!(api(bad), Err(CliError::Usage(_))),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn api_error_bodies() {
        assert_eq!(
            error_of(r#"{"error":{"code":"not_found","msg":"no message m_1"}}"#),
            ("not_found".into(), "no message m_1".into())
        );
        assert_eq!(
            error_of("Bad Gateway"),
            ("error".into(), "Bad Gateway".into())
        );
        assert_eq!(error_of(""), ("error".into(), "(empty answer)".into()));
    }
}
