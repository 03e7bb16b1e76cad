//! Who a connection is, once its credentials were verified (by the binary's authenticator),
//! and what it may do with channels.

use herald_protocol::Pattern;

/// Channel permissions from a token's `chans` claim. `None` lists allow everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelGrants {
    pub publish: Option<Vec<Pattern>>,
    pub subscribe: Option<Vec<Pattern>>,
}

impl ChannelGrants {
    pub fn may_publish(&self, chan: &str) -> bool {
        allowed(&self.publish, chan)
    }

    pub fn may_subscribe(&self, chan: &str) -> bool {
        allowed(&self.subscribe, chan)
    }
}

fn allowed(list: &Option<Vec<Pattern>>, chan: &str) -> bool {
    match list {
        None => true,
        Some(patterns) => patterns.iter().any(|p| p.matches(chan)),
    }
}

/// A verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: String,
    /// A device bound by the token's `device` claim; `hello.device` must then match it.
    pub device: Option<String>,
    pub grants: ChannelGrants,
}
