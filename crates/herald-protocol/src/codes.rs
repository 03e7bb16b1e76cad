//! Stable error codes (`err.code`) and WebSocket close codes. Clients match on these strings
//! and numbers, so they never change meaning once released.

use serde::{Deserialize, Serialize};

/// The `code` of an `err` frame (and of HTTP API errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadFrame,
    UnknownType,
    BadTarget,
    TooLarge,
    Forbidden,
    NotSubscribed,
    IdentityInUse,
    RateLimited,
    /// Storage could not make the request durable; nothing was acknowledged.
    Unavailable,
    Internal,
    /// Authentication failed (sent just before close 4003).
    Unauthorized,
    /// Not found (HTTP API only).
    NotFound,
    /// A subscription was ended by the server because the connection's token no longer
    /// allows it (sent on resume, without `seq`, with `chan`).
    SubRevoked,
    /// A count quota is full (`limits.max_subs_per_session`); the request was not applied.
    QuotaExceeded,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadFrame,
        ErrorCode::UnknownType,
        ErrorCode::BadTarget,
        ErrorCode::TooLarge,
        ErrorCode::Forbidden,
        ErrorCode::NotSubscribed,
        ErrorCode::IdentityInUse,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::SubRevoked,
        ErrorCode::QuotaExceeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadTarget => "bad_target",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::IdentityInUse => "identity_in_use",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::SubRevoked => "sub_revoked",
            ErrorCode::QuotaExceeded => "quota_exceeded",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes used by herald.
pub mod close {
    /// Server shutting down; the session stays resumable.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame exceeded `limits.max_frame_bytes`.
    pub const FRAME_TOO_LARGE: u16 = 1009;
    /// Too many malformed frames (`session.max_bad_frames`), or a frame before `hello`.
    pub const PROTOCOL_ERROR: u16 = 4000;
    /// No `hello` within `session.hello_timeout_ms`.
    pub const HELLO_TIMEOUT: u16 = 4001;
    /// Token missing, invalid or expired.
    pub const AUTH_FAILED: u16 = 4003;
    /// The session was evicted (an `evicted` frame precedes the close).
    pub const EVICTED: u16 = 4009;
    /// `identity.policy = reject_new` and the uid is in use.
    pub const IDENTITY_IN_USE: u16 = 4010;
    /// Rate limit exceeded.
    pub const RATE_LIMITED: u16 = 4029;
    /// No frame for `heartbeat_ms` + grace: the peer is presumed dead.
    pub const HEARTBEAT_TIMEOUT: u16 = 4008;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/errors.md` is the catalogue clients code against: every code and close code
    /// must be documented there, each under its own heading or row.
    #[test]
    fn every_code_is_documented_in_docs_errors_md() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/errors.md");
        let doc = std::fs::read_to_string(path).expect("docs/errors.md");
        for code in ErrorCode::ALL {
            let heading = format!("### `{}`", code.as_str());
            assert!(
                doc.contains(&heading),
                "docs/errors.md has no {heading:?} section"
            );
        }
        for code in [
            close::GOING_AWAY,
            close::FRAME_TOO_LARGE,
            close::PROTOCOL_ERROR,
            close::HELLO_TIMEOUT,
            close::AUTH_FAILED,
            close::EVICTED,
            close::IDENTITY_IN_USE,
            close::RATE_LIMITED,
            close::HEARTBEAT_TIMEOUT,
            1000,
            1011,
        ] {
            assert!(
                doc.contains(&format!("\n| {code} |")),
                "docs/errors.md has no row for close code {code}"
            );
        }
    }

    /// `ALL` lists every variant (the match below stops compiling when one is added).
    #[test]
    fn all_lists_every_variant() {
        for code in ErrorCode::ALL {
            match code {
                ErrorCode::BadFrame
                | ErrorCode::UnknownType
                | ErrorCode::BadTarget
                | ErrorCode::TooLarge
                | ErrorCode::Forbidden
                | ErrorCode::NotSubscribed
                | ErrorCode::IdentityInUse
                | ErrorCode::RateLimited
                | ErrorCode::Unavailable
                | ErrorCode::Internal
                | ErrorCode::Unauthorized
                | ErrorCode::NotFound
                | ErrorCode::SubRevoked
                | ErrorCode::QuotaExceeded => {}
            }
        }
        let distinct: std::collections::HashSet<_> = ErrorCode::ALL.iter().collect();
        assert_eq!(distinct.len(), ErrorCode::ALL.len());
        let ser: Vec<String> = ErrorCode::ALL
            .iter()
            .map(|c| serde_json::to_string(c).unwrap_or_default())
            .collect();
        for (c, s) in ErrorCode::ALL.iter().zip(ser) {
            assert_eq!(s, format!("\"{}\"", c.as_str()), "serde and as_str agree");
        }
    }
}
