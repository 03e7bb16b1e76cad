//! Names (uid, device, channel), message targets, stream names and channel patterns.
//!
//! A name is 1–128 characters of `A-Z a-z 0-9 _ - . /`. Every rejection says which rule failed.

use std::fmt;

use thiserror::Error;

/// Longest allowed name, in bytes (all allowed characters are ASCII).
pub const MAX_NAME_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("{what} is empty; names are 1-128 characters of A-Z a-z 0-9 _ - . /")]
    Empty { what: &'static str },
    #[error("{what} is {len} characters long; the limit is 128")]
    TooLong { what: &'static str, len: usize },
    #[error("{what} contains {ch:?}; names may contain only A-Z a-z 0-9 _ - . /")]
    BadChar { what: &'static str, ch: char },
    #[error("target {0:?} must be \"user:<uid>\" or \"chan:<name>\"")]
    BadTarget(String),
    #[error("stream {0:?} must be \"inbox\" or \"chan:<name>\"")]
    BadStream(String),
}

/// Checks a uid, device id or channel name. `what` names the field in the error.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')))
    {
        return Err(NameError::BadChar { what, ch });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            what,
            len: name.len(),
        });
    }
    Ok(())
}

/// Where a `pub` goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The inbox of a user.
    User(String),
    /// A channel.
    Chan(String),
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, NameError> {
        if let Some(uid) = s.strip_prefix("user:") {
            validate_name("uid", uid)?;
            Ok(Target::User(uid.to_string()))
        } else if let Some(chan) = s.strip_prefix("chan:") {
            validate_name("channel", chan)?;
            Ok(Target::Chan(chan.to_string()))
        } else {
            Err(NameError::BadTarget(s.chars().take(140).collect()))
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::User(u) => write!(f, "user:{u}"),
            Target::Chan(c) => write!(f, "chan:{c}"),
        }
    }
}

/// A stream as a client names it in `ack.s` and `msg.s`: `inbox` or `chan:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientStream {
    Inbox,
    Chan(String),
}

impl ClientStream {
    pub fn parse(s: &str) -> Result<ClientStream, NameError> {
        if s == "inbox" {
            Ok(ClientStream::Inbox)
        } else if let Some(chan) = s.strip_prefix("chan:") {
            validate_name("channel", chan)?;
            Ok(ClientStream::Chan(chan.to_string()))
        } else {
            Err(NameError::BadStream(s.chars().take(140).collect()))
        }
    }
}

impl fmt::Display for ClientStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientStream::Inbox => f.write_str("inbox"),
            ClientStream::Chan(c) => write!(f, "chan:{c}"),
        }
    }
}

/// A channel pattern from a token's `chans` claim: exact, or a prefix ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn new(p: impl Into<String>) -> Pattern {
        Pattern(p.into())
    }

    pub fn matches(&self, chan: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => chan.starts_with(prefix),
            None => self.0 == chan,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        assert!(validate_name("uid", "alice").is_ok());
        assert!(validate_name("uid", "a/b.c-d_E9").is_ok());
        assert_eq!(
            validate_name("uid", ""),
            Err(NameError::Empty { what: "uid" })
        );
        assert_eq!(
            validate_name("channel", "room 1"),
            Err(NameError::BadChar {
                what: "channel",
                ch: ' '
            })
        );
        assert!(validate_name("uid", &"x".repeat(128)).is_ok());
        assert!(matches!(
            validate_name("uid", &"x".repeat(129)),
            Err(NameError::TooLong { len: 129, .. })
        ));
        assert!(validate_name("uid", "é").is_err());
    }

    #[test]
    fn targets() {
        assert_eq!(Target::parse("user:bob"), Ok(Target::User("bob".into())));
        assert_eq!(Target::parse("chan:r1"), Ok(Target::Chan("r1".into())));
        assert!(Target::parse("bob").is_err());
        assert!(Target::parse("user:").is_err());
        assert!(Target::parse("chan:a b").is_err());
        assert_eq!(ClientStream::parse("inbox"), Ok(ClientStream::Inbox));
        assert!(ClientStream::parse("user:bob").is_err());
    }

    #[test]
    fn patterns() {
        assert!(Pattern::new("room*").matches("room1"));
        assert!(Pattern::new("room*").matches("room"));
        assert!(!Pattern::new("room*").matches("roo"));
        assert!(Pattern::new("*").matches("anything"));
        assert!(Pattern::new("lobby").matches("lobby"));
        assert!(!Pattern::new("lobby").matches("lobby2"));
    }

    proptest! {
        #[test]
        fn target_round_trips(name in "[A-Za-z0-9_./-]{1,128}") {
            let t = Target::parse(&format!("chan:{name}")).unwrap();
            prop_assert_eq!(Target::parse(&t.to_string()).unwrap(), t);
        }

        #[test]
        fn validate_never_panics(s in ".{0,200}") {
            let _ = validate_name("uid", &s);
            let _ = Target::parse(&s);
        }
    }
}
