//! Resume keys at rest: the server keeps only a SHA-256 hash of each session's resume key
//! (`sha256:<hex>` in the session record), and checks a presented key by hashing it and
//! comparing in constant time. A stolen database or backup therefore yields no key that
//! resumes a session. The plain key exists only in the welcome that hands it to the client.
//!
//! Records written before keys were hashed hold the plain key; [`migrate`] hashes it when the
//! engine loads them (and the engine writes the hashed record back).

use sha2::{Digest, Sha256};

/// Marks a stored key as a hash.
const HASHED: &str = "sha256:";

/// The stored form of a plain resume key.
pub(crate) fn hash(plain: &str) -> String {
    let digest = Sha256::digest(plain.as_bytes());
    let mut s = String::with_capacity(HASHED.len() + 64);
    s.push_str(HASHED);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Replaces a plain stored key by its hash; returns whether it changed.
pub(crate) fn migrate(stored: &mut String) -> bool {
    if stored.starts_with(HASHED) {
        return false;
    }
    *stored = hash(stored);
    true
}

/// Whether `presented` is the key whose hash is `stored`. Takes the same time wherever the
/// two differ.
pub(crate) fn matches(stored: &str, presented: &str) -> bool {
    let want = hash(presented);
    let (a, b) = (stored.as_bytes(), want.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_and_migrate() {
        let stored = hash("a977k");
        assert!(stored.starts_with("sha256:") && stored.len() == 7 + 64);
        assert!(!stored.contains("a977k"));
        assert!(matches(&stored, "a977k"));
        assert!(!matches(&stored, "a977j"));
        assert!(!matches(&stored, ""));
        // A plain key stored by an older version is hashed once.
        let mut old = "a977k".to_string();
        assert!(migrate(&mut old));
        assert_eq!(old, stored);
        assert!(!migrate(&mut old));
        assert_eq!(old, stored);
    }
}
