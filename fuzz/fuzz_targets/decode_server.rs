//! Server frame decoder (`herald_protocol::decode::decode_server_frame`, used by clients, SDKs
//! and tests) on arbitrary text.
//!
//! Besides "never panics": a frame always yields at least one result, and every accepted
//! frame re-encodes (`ServerFrame::encode`) to text that decodes to one equal frame.
#![no_main]

use herald_protocol::decode::decode_server_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let decoded = decode_server_frame(&text);
    assert!(
        !decoded.is_empty(),
        "decode_server_frame returned no result for {text:?}"
    );
    for frame in decoded.into_iter().flatten() {
        let encoded = frame.encode();
        let again = decode_server_frame(&encoded);
        assert_eq!(
            again,
            vec![Ok(frame.clone())],
            "re-encoded frame {encoded:?} does not decode to {frame:?}"
        );
    }
});
