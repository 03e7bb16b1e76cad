//! HTTP API request decoder: `herald_protocol::http::decode_publish` on arbitrary bytes.
//!
//! Besides "never panics", it checks what the server builds on:
//! - an accepted body fits `limits.max_body_bytes` and nests at most `limits.max_json_depth`;
//! - an accepted body is valid JSON that serde_json reads back (so every read route can
//!   answer with it), and an accepted target prints back to a target that parses the same;
//! - a refusal's message is never empty.
#![no_main]

use herald_protocol::decode::json_too_deep;
use herald_protocol::http::decode_publish;
use herald_protocol::{Limits, Target};
use libfuzzer_sys::fuzz_target;

/// Small enough that fuzzed bodies often hit the limits.
const SMALL: Limits = Limits {
    max_body_bytes: 8,
    max_json_depth: 2,
};

fuzz_target!(|data: &[u8]| {
    check(data, &SMALL);
    check(data, &Limits::default());
});

fn check(data: &[u8], limits: &Limits) {
    match decode_publish(data, limits) {
        Ok(req) => {
            let body = req.body.get();
            assert!(
                body.len() <= limits.max_body_bytes,
                "accepted {} bytes",
                body.len()
            );
            assert_eq!(
                json_too_deep(body.as_bytes(), limits.max_json_depth),
                None,
                "accepted a body nested past {}: {body}",
                limits.max_json_depth
            );
            if let Err(e) = serde_json::from_str::<serde_json::Value>(body) {
                panic!("accepted body {body:?} does not read back: {e}");
            }
            assert_eq!(Target::parse(&req.to.to_string()), Ok(req.to.clone()));
        }
        Err(e) => assert!(!e.msg.is_empty(), "empty error message for {data:?}"),
    }
}
