//! Identity policy: which existing sessions a new login for a uid evicts, or whether it is
//! refused. Pure decisions; the engine carries them out and announces every eviction.

use herald_protocol::EvictReason;

use crate::config::IdentityPolicy;

/// An existing, not yet closed session of the uid logging in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub session: String,
    pub device: String,
    pub connected: bool,
    /// Last activity: last frame while connected, disconnect time otherwise.
    pub last_active_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Admit the login after evicting these sessions.
    Admit { evict: Vec<(String, EvictReason)> },
    /// Refuse it: the uid has a connected session (`reject_new`).
    Reject { holder: String },
}

/// Decides a fresh (non-resume) login of `device`.
pub fn admit(
    policy: IdentityPolicy,
    max_devices: u32,
    existing: &[Candidate],
    device: &str,
) -> Admission {
    match policy {
        IdentityPolicy::Single => Admission::Admit {
            evict: existing
                .iter()
                .map(|c| (c.session.clone(), EvictReason::Replaced))
                .collect(),
        },
        IdentityPolicy::RejectNew => {
            if let Some(c) = existing.iter().find(|c| c.connected) {
                return Admission::Reject {
                    holder: c.session.clone(),
                };
            }
            // Only sessions inside their reconnect window remain: the newcomer replaces them
            // (they learn it when they try to resume).
            Admission::Admit {
                evict: existing
                    .iter()
                    .map(|c| (c.session.clone(), EvictReason::Replaced))
                    .collect(),
            }
        }
        IdentityPolicy::Multi => {
            let mut evict: Vec<(String, EvictReason)> = existing
                .iter()
                .filter(|c| c.device == device)
                .map(|c| (c.session.clone(), EvictReason::Replaced))
                .collect();
            let mut others: Vec<&Candidate> =
                existing.iter().filter(|c| c.device != device).collect();
            // Longest idle first: disconnected before connected, then oldest activity.
            others.sort_by_key(|c| (c.connected, c.last_active_ms));
            let max = max_devices.max(1) as usize;
            let excess = (others.len() + 1).saturating_sub(max);
            evict.extend(
                others
                    .iter()
                    .take(excess)
                    .map(|c| (c.session.clone(), EvictReason::DeviceLimit)),
            );
            Admission::Admit { evict }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(session: &str, device: &str, connected: bool, t: u64) -> Candidate {
        Candidate {
            session: session.into(),
            device: device.into(),
            connected,
            last_active_ms: t,
        }
    }

    #[test]
    fn multi_replaces_same_device_only() {
        let ex = [c("s1", "phone", true, 5), c("s2", "laptop", true, 6)];
        assert_eq!(
            admit(IdentityPolicy::Multi, 10, &ex, "phone"),
            Admission::Admit {
                evict: vec![("s1".into(), EvictReason::Replaced)]
            }
        );
        assert_eq!(
            admit(IdentityPolicy::Multi, 10, &ex, "tablet"),
            Admission::Admit { evict: vec![] }
        );
    }

    #[test]
    fn multi_device_limit_evicts_longest_idle() {
        let ex = [
            c("s1", "a", true, 1),
            c("s2", "b", false, 50),
            c("s3", "c", true, 3),
        ];
        // Limit 3 with a 4th device: the disconnected one goes first even though newer.
        assert_eq!(
            admit(IdentityPolicy::Multi, 3, &ex, "d"),
            Admission::Admit {
                evict: vec![("s2".into(), EvictReason::DeviceLimit)]
            }
        );
        assert_eq!(
            admit(IdentityPolicy::Multi, 2, &ex, "d"),
            Admission::Admit {
                evict: vec![
                    ("s2".into(), EvictReason::DeviceLimit),
                    ("s1".into(), EvictReason::DeviceLimit)
                ]
            }
        );
    }

    #[test]
    fn single_replaces_everyone() {
        let ex = [c("s1", "a", true, 1), c("s2", "b", false, 2)];
        match admit(IdentityPolicy::Single, 10, &ex, "c") {
            Admission::Admit { evict } => assert_eq!(evict.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reject_new_refuses_while_connected() {
        let ex = [c("s1", "a", true, 1)];
        assert_eq!(
            admit(IdentityPolicy::RejectNew, 10, &ex, "b"),
            Admission::Reject {
                holder: "s1".into()
            }
        );
        let ex = [c("s1", "a", false, 1)];
        assert_eq!(
            admit(IdentityPolicy::RejectNew, 10, &ex, "b"),
            Admission::Admit {
                evict: vec![("s1".into(), EvictReason::Replaced)]
            }
        );
    }
}
