//! Client frame decoder: `herald_protocol::decode_frame` on arbitrary text, plus the name,
//! target and stream parsers it relies on.
//!
//! Besides "never panics", it checks the invariants the server builds on:
//! - a frame always yields at least one result (nothing is dropped without an `err`);
//! - every accepted `pub` body fits `limits.max_body_bytes`;
//! - every accepted frame re-encodes (`ClientFrame::encode`) to text that decodes to one equal
//!   frame, under the same limits;
//! - every rejection turns into an `err` frame that the server decoder reads back unchanged;
//! - an accepted name is 1..=MAX_NAME_LEN bytes of the allowed set, and an accepted target or
//!   stream prints back to exactly the text it was parsed from.
#![no_main]

use herald_protocol::decode::decode_server_frame;
use herald_protocol::names::{validate_name, ClientStream, MAX_NAME_LEN};
use herald_protocol::{decode_frame, ClientFrame, Limits, Target};
use libfuzzer_sys::fuzz_target;

/// Small enough that fuzzed bodies often hit the limit.
const SMALL: Limits = Limits {
    max_body_bytes: 8,
    max_json_depth: 2,
};

fuzz_target!(|data: &[u8]| {
    // Valid UTF-8 is borrowed as is; anything else goes through the lossy conversion, as a
    // transport that received bytes might do.
    let text = String::from_utf8_lossy(data);
    check_frame(&text, &SMALL);
    check_frame(&text, &Limits::default());
    check_names(&text);
    if let Some((head, tail)) = text.split_once(':') {
        // Give the name checks inputs that don't start with a fixed prefix as well.
        check_names(head);
        check_names(tail);
    }
});

fn check_frame(text: &str, limits: &Limits) {
    let decoded = decode_frame(text, limits);
    assert!(
        !decoded.is_empty(),
        "decode_frame returned no result for {text:?}"
    );
    for result in decoded {
        let frame = match result {
            Ok(frame) => frame,
            Err(e) => {
                let err = e.to_frame();
                let back = decode_server_frame(&err.encode());
                assert_eq!(back, vec![Ok(err)], "err frame does not round-trip");
                continue;
            }
        };
        if let ClientFrame::Pub(p) = &frame {
            let len = p.body.get().len();
            assert_eq!(
                herald_protocol::decode::json_too_deep(
                    p.body.get().as_bytes(),
                    limits.max_json_depth
                ),
                None,
                "accepted a body nested past max_json_depth {}",
                limits.max_json_depth
            );
            assert!(
                len <= limits.max_body_bytes,
                "accepted a {len}-byte body over max_body_bytes {}",
                limits.max_body_bytes
            );
        }
        let encoded = frame.encode();
        let again = decode_frame(&encoded, limits);
        assert_eq!(
            again,
            vec![Ok(frame.clone())],
            "re-encoded frame {encoded:?} does not decode to {frame:?}"
        );
    }
}

fn check_names(s: &str) {
    if validate_name("uid", s).is_ok() {
        assert!(
            !s.is_empty() && s.len() <= MAX_NAME_LEN,
            "accepted name of {} bytes",
            s.len()
        );
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/')),
            "accepted name {s:?}"
        );
    }
    if let Ok(t) = Target::parse(s) {
        assert_eq!(t.to_string(), s);
        assert_eq!(Target::parse(&t.to_string()), Ok(t));
    }
    if let Ok(c) = ClientStream::parse(s) {
        assert_eq!(c.to_string(), s);
        assert_eq!(ClientStream::parse(&c.to_string()), Ok(c));
    }
}
