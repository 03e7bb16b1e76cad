//! Resume keys at rest: the data directory never holds a plain resume key (only its SHA-256
//! hash), a presented key is checked against the hash, and sessions stored by an older
//! version with a plain key are migrated at start and still resume. Real server processes.
// A real server process runs on wall-clock time.
#![allow(clippy::disallowed_types)]
mod common;

use common::{Client, Server};
use herald_protocol::ResumeError;

/// Every byte of every file in the data directory.
fn data_dir_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        if e.path().is_file() {
            all.extend(std::fs::read(e.path()).unwrap_or_default());
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn resume_keys_are_stored_hashed_and_still_resume() {
    let mut s = Server::start(&[]);
    let c = Client::connect(&s, "gail", "g1").await;
    let w = c.w().clone();
    assert_eq!(w.key.len(), 32, "the client gets the plain key: {w:?}");
    c.cut();
    // A resume hands back the same plain key.
    let r = Client::resume(&s, &w).await;
    assert!(r.w().resumed);
    assert_eq!(r.w().key, w.key);
    drop(r);
    assert!(s.terminate(), "clean shutdown");
    let bytes = data_dir_bytes(&s.dir);
    assert!(!contains(&bytes, &w.key), "the plain resume key is on disk");
    assert!(contains(&bytes, "sha256:"), "no hashed key on disk");

    s.restart();
    let r = Client::resume(&s, &w).await;
    assert!(r.w().resumed, "{:?}", r.w());
    let mut wrong = w.clone();
    // Differs from the real key in its last character, whatever that is.
    let last = if w.key.ends_with('0') { '1' } else { '0' };
    wrong.key = format!("{}{last}", &w.key[..31]);
    let n = Client::resume(&s, &wrong).await;
    assert_eq!(n.w().resume_error, Some(ResumeError::BadKey));
}

#[tokio::test]
async fn plain_keys_stored_by_an_older_version_are_hashed_at_start() {
    let mut s = Server::start(&[]);
    let c = Client::connect(&s, "hank", "h1").await;
    let w = c.w().clone();
    c.cut();
    assert!(s.terminate(), "clean shutdown");
    // Write the record back the way older versions stored it: with the plain key.
    {
        let db = rusqlite::Connection::open(s.dir.join("herald.db")).expect("open db");
        let n = db
            .execute(
                "UPDATE sessions SET record = json_set(record, '$.key', ?1) WHERE id = ?2",
                rusqlite::params![w.key, w.session],
            )
            .expect("update");
        assert_eq!(n, 1);
    }
    assert!(contains(&data_dir_bytes(&s.dir), &w.key));
    s.restart();
    let r = Client::resume(&s, &w).await;
    assert!(r.w().resumed, "a migrated session resumes: {:?}", r.w());
    drop(r);
    assert!(s.terminate());
    let bytes = data_dir_bytes(&s.dir);
    assert!(
        !contains(&bytes, &w.key),
        "the plain key was not replaced on disk"
    );
}
