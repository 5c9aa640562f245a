//! Multi-stage expiry warnings (`notifications.expiry_warning_days`, e.g. 30, 7 and 1
//! days before `exp`), decided after each sweep from what its listing saw.
//!
//! A warning names the most urgent stage a version has reached; stages it passed
//! together (first seen 5 days before `exp`: 30 and 7) go as one warning of the nearest.
//! Each stage goes once per version: the worker keeps no durable state, so what was sent
//! is remembered in memory, by secret and `exp` (a rotation writes a new `exp`; the
//! listing names no version). A restart forgets it: the next sweep may send the current
//! stage once more. When the sweep itself queues a rotation of the secret, the warning
//! waits one sweep: a rotation that succeeds makes it moot; one that does not leaves the
//! same `exp` for the next sweep, which warns.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde_json::json;
use time::OffsetDateTime;

use super::{CloudEvent, Notifier, TYPE_EXPIRY_WARNING};

/// What was done about one (secret, `exp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Within a stage while a rotation was queued: warn at the next sweep if `exp` stays.
    RotationQueued,
    /// The warning of this stage (days) was sent.
    Warned(u32),
}

/// A managed secret's latest version as a sweep listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiring {
    /// The secret's name.
    pub secret: String,
    /// Its latest version's `exp`.
    pub expires: OffsetDateTime,
}

/// The sweeper's expiry warnings, sent through a [`Notifier`].
#[derive(Debug)]
pub struct ExpiryWarnings {
    notifier: Notifier,
    vault: String,
    seen: Mutex<HashMap<(String, i64), Seen>>,
}

/// The nearest stage (days, `stages` ascending) that `expires` has reached at `now`.
pub fn stage_reached(stages: &[u32], expires: OffsetDateTime, now: OffsetDateTime) -> Option<u32> {
    stages.iter().copied().find(|days| expires - now <= time::Duration::days(i64::from(*days)))
}

impl ExpiryWarnings {
    /// Warnings for the vault `vault` at the notifier's stages.
    pub fn new(notifier: Notifier, vault: &str) -> Self {
        Self { notifier, vault: vault.to_owned(), seen: Mutex::default() }
    }

    /// After a sweep that listed `expiring` and queued rotations of the secrets in
    /// `queued` (names as listed): publishes each warning due now; returns how many.
    pub fn after_sweep(&self, expiring: &[Expiring], queued: &HashSet<String>, now: OffsetDateTime) -> usize {
        let stages = self.notifier.expiry_stages();
        let mut seen = self.seen.lock().expect("expiry warning memory poisoned");
        let mut current = HashMap::new();
        let mut sent = 0;
        for item in expiring {
            let Some(stage) = stage_reached(stages, item.expires, now) else { continue };
            let key = (item.secret.to_ascii_lowercase(), item.expires.unix_timestamp());
            let next = match seen.get(&key) {
                Some(Seen::Warned(done)) if *done <= stage => Seen::Warned(*done),
                None if queued.contains(&item.secret) => Seen::RotationQueued,
                _ => {
                    self.notifier.publish(self.event(item, stage, now));
                    sent += 1;
                    Seen::Warned(stage)
                }
            };
            current.insert(key, next);
        }
        // Only what this sweep saw within a stage: the memory stays as large as the vault.
        *seen = current;
        sent
    }

    fn event(&self, item: &Expiring, stage: u32, now: OffsetDateTime) -> CloudEvent {
        let data = json!({
            "vault": self.vault,
            "secret": item.secret,
            "expires": super::rfc3339(item.expires),
            "stageDays": stage,
            "daysLeft": (item.expires - now).whole_days(),
            "time": super::rfc3339(now),
        });
        CloudEvent {
            event_type: TYPE_EXPIRY_WARNING,
            subject: item.secret.clone(),
            vault: self.vault.clone(),
            data,
            time: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_stage_reached_counts() {
        let now = OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        let stages = [1, 7, 30];
        assert_eq!(stage_reached(&stages, now + 40 * day, now), None);
        assert_eq!(stage_reached(&stages, now + 30 * day, now), Some(30));
        assert_eq!(stage_reached(&stages, now + 6 * day, now), Some(7));
        assert_eq!(stage_reached(&stages, now + day / 2, now), Some(1));
        assert_eq!(stage_reached(&stages, now - day, now), Some(1), "expired: the last stage");
        assert_eq!(stage_reached(&[], now, now), None, "no stages: no warnings");
    }
}
