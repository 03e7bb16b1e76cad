//! Identifiers. Random 128-bit values: unguessable (a session key is a secret) and unique
//! across restarts and nodes without coordination.

use rand::Rng;

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    let mut s = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        let b: u8 = rng.random();
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Message id: `m_` + time-ordered prefix + randomness, so ids sort roughly by acceptance.
pub fn message_id(now_ms: u64) -> String {
    format!("m_{now_ms:012x}{}", random_hex(8))
}

pub fn session_id() -> String {
    format!("s_{}", random_hex(12))
}

/// The resume secret.
pub fn session_key() -> String {
    random_hex(16)
}

pub fn conn_id() -> String {
    format!("c_{}", random_hex(8))
}

/// A server-allocated device id (the client persists it).
pub fn device_id() -> String {
    format!("d_{}", random_hex(8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_names_and_unique() {
        let a = message_id(1);
        let b = message_id(1);
        assert_ne!(a, b);
        for id in [a, session_id(), session_key(), conn_id(), device_id()] {
            herald_protocol::names::validate_name("id", &id).unwrap();
        }
    }
}
