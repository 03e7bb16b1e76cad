//! herald wire protocol, version 1.
//!
//! Owns the shape of every frame on `/v1/ws`, the rules a frame must satisfy before the engine
//! sees it (names, targets, sizes), and the stable error and close codes. It performs no I/O and
//! knows nothing about sessions or storage: a decoder here must never panic, whatever the input.

pub mod codes;
pub mod decode;
pub mod frames;
pub mod http;
pub mod names;

pub use codes::{close, ErrorCode};
pub use decode::{decode_frame, DecodeError, Decoded, Limits};
pub use frames::*;
pub use names::{ClientStream, NameError, Pattern, Target};

/// The protocol version this crate speaks (`hello.v`).
pub const PROTOCOL_VERSION: u32 = 1;
