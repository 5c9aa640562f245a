//! When a version is due for rotation: one rule for the sweeper and for Event Grid's
//! events alike.
//!
//! A version is due at its `exp` minus a lead of `min(window, validity × lead_percent /
//! 100)`, where the validity is the version's own `ValidityPeriodDays` tag (or the
//! engine's default). A version kv-rotator wrote expires `validity` after its creation,
//! so it lives at least `validity × (1 - lead_percent / 100)` before it is due again:
//! no validity, however short against the window, rotates at every sweep. A version
//! without `exp` is due at once (it has no policy to wait for); a disabled one never
//! (an operator disabled it on purpose, and it cannot be read).
//!
//! The minimum interval between rotations ([`DueRule::too_soon`]) is the second guard:
//! `exp` is a property anyone with write access can move, and `created` is not.

use std::time::Duration;

use kv_rotator_config::{EngineConfig, SweeperConfig};
use kv_rotator_keyvault::SecretProperties;
use time::OffsetDateTime;

use kv_rotator_core::tags::TAG_VALIDITY_DAYS;

/// Longest validity a `ValidityPeriodDays` tag may ask for (ten years).
pub const MAX_VALIDITY_DAYS: u32 = 3650;

/// Whether a version is due, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// No `exp`: due now.
    NoExpiry,
    /// `exp` has passed.
    Expired,
    /// Within the lead before `exp`.
    NearExpiry,
    /// Not yet: due at this instant.
    NotYet {
        /// When the version becomes due.
        due_at: OffsetDateTime,
    },
    /// The version is disabled: never rotated by a schedule.
    Disabled,
}

impl Due {
    /// Whether a rotation is wanted now.
    pub fn is_due(self) -> bool {
        matches!(self, Due::NoExpiry | Due::Expired | Due::NearExpiry)
    }
}

/// The due rule and the minimum interval, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueRule {
    /// `sweeper.window_days`.
    pub window_days: u32,
    /// `sweeper.lead_percent`.
    pub lead_percent: u32,
    /// `engine.default_validity_days`.
    pub default_validity_days: u32,
    /// `engine.min_rotation_interval_secs`.
    pub min_interval: Duration,
}

impl Default for DueRule {
    fn default() -> Self {
        Self::from_config(&EngineConfig::default(), &SweeperConfig::default())
    }
}

impl DueRule {
    /// The rule the configuration sets.
    pub fn from_config(engine: &EngineConfig, sweeper: &SweeperConfig) -> Self {
        Self {
            window_days: sweeper.window_days,
            lead_percent: sweeper.lead_percent.clamp(1, 90),
            default_validity_days: engine.default_validity_days,
            min_interval: Duration::from_secs(engine.min_rotation_interval_secs),
        }
    }

    /// The validity a version's `ValidityPeriodDays` tag asks for, or the default when
    /// it has none; an error naming the tag when it is not a whole number of days in range.
    pub fn validity_days(&self, properties: &SecretProperties) -> Result<u32, String> {
        match properties.tags.get(TAG_VALIDITY_DAYS) {
            None => Ok(self.default_validity_days),
            Some(raw) => match raw.trim().parse::<u32>() {
                Ok(days) if (1..=MAX_VALIDITY_DAYS).contains(&days) => Ok(days),
                _ => Err(format!(
                    "tag {TAG_VALIDITY_DAYS:?} = {raw:?} is not a whole number of days between 1 and {MAX_VALIDITY_DAYS}"
                )),
            },
        }
    }

    /// The lead before `exp` at which a version of this validity is due.
    pub fn lead(&self, validity_days: u32) -> time::Duration {
        let window = time::Duration::days(i64::from(self.window_days));
        let share = time::Duration::seconds(i64::from(validity_days) * 86_400 * i64::from(self.lead_percent) / 100);
        window.min(share)
    }

    /// Whether the version with these properties is due at `now`. An unreadable
    /// validity tag counts as the default here; the engine refuses it when it plans.
    pub fn check(&self, properties: &SecretProperties, now: OffsetDateTime) -> Due {
        if !properties.enabled {
            return Due::Disabled;
        }
        let validity = self.validity_days(properties).unwrap_or(self.default_validity_days);
        match properties.expires {
            None => Due::NoExpiry,
            Some(exp) if exp <= now => Due::Expired,
            Some(exp) => {
                let due_at = exp - self.lead(validity);
                if due_at <= now {
                    Due::NearExpiry
                } else {
                    Due::NotYet { due_at }
                }
            }
        }
    }

    /// When the minimum interval since the version's creation ends, if it has not yet.
    pub fn too_soon(&self, properties: &SecretProperties, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let created = properties.created?;
        let allowed_at = created + self.min_interval;
        (allowed_at > now).then_some(allowed_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: time::Duration = time::Duration::days(1);

    fn rule() -> DueRule {
        DueRule {
            window_days: 30,
            lead_percent: 50,
            default_validity_days: 60,
            min_interval: Duration::from_secs(3600),
        }
    }

    fn version(created: OffsetDateTime, validity: Option<u32>, expires: Option<OffsetDateTime>) -> SecretProperties {
        let mut p =
            SecretProperties { name: "s".into(), enabled: true, expires, created: Some(created), ..Default::default() };
        if let Some(days) = validity {
            p.tags.insert(TAG_VALIDITY_DAYS.into(), days.to_string());
        }
        p
    }

    #[test]
    fn the_basic_cases() {
        let now = OffsetDateTime::now_utc();
        let r = rule();
        assert_eq!(r.check(&version(now, None, None), now), Due::NoExpiry);
        assert_eq!(r.check(&version(now, None, Some(now - DAY)), now), Due::Expired);
        assert_eq!(r.check(&version(now, None, Some(now + DAY * 29)), now), Due::NearExpiry);
        assert!(!r.check(&version(now, None, Some(now + DAY * 31)), now).is_due());
        let mut disabled = version(now, None, None);
        disabled.enabled = false;
        assert_eq!(r.check(&disabled, now), Due::Disabled);
    }

    /// A fresh version written by a rotation (exp = created + validity) is never due at
    /// once, whatever its validity against the window — the loop of issue 9, item 1.
    #[test]
    fn a_fresh_version_is_never_due_for_any_validity() {
        let now = OffsetDateTime::now_utc();
        for lead_percent in [1, 25, 50, 90] {
            let r = DueRule { lead_percent, ..rule() };
            for days in 1..=400u32 {
                let fresh = version(now, Some(days), Some(now + DAY * days));
                let due = r.check(&fresh, now + time::Duration::minutes(1));
                assert!(!due.is_due(), "validity {days} lead {lead_percent}% -> {due:?}");
            }
        }
    }

    /// Each version is due exactly once per period: walking a simulated clock in hour
    /// steps over a year, rotating whenever due, gives one rotation per
    /// `validity - lead`, never more.
    #[test]
    fn one_rotation_per_period_over_a_simulated_year() {
        let r = rule();
        for days in [7u32, 14, 30, 60, 90] {
            let start = OffsetDateTime::now_utc();
            let mut current = version(start, Some(days), Some(start + DAY * 2));
            let mut rotations: u32 = 0;
            let mut t = start;
            while t < start + DAY * 365 {
                if r.check(&current, t).is_due() {
                    rotations += 1;
                    current = version(t, Some(days), Some(t + DAY * days));
                }
                t += time::Duration::hours(1);
            }
            let lives = time::Duration::days(i64::from(days)) - r.lead(days);
            let span: time::Duration = DAY * 363;
            let expected = 1 + (span.as_seconds_f64() / lives.as_seconds_f64()).floor() as u32;
            assert!(rotations.abs_diff(expected) <= 1, "validity {days}: {rotations} rotations, expected ~{expected}");
            println!("validity {days} d: {rotations} rotations in a simulated year (one every {lives})");
        }
    }

    #[test]
    fn the_lead_is_the_smaller_of_window_and_share() {
        let r = rule();
        assert_eq!(r.lead(60), DAY * 30);
        assert_eq!(r.lead(365), DAY * 30);
        assert_eq!(r.lead(30), DAY * 15);
        assert_eq!(r.lead(7), time::Duration::hours(84));
    }

    #[test]
    fn the_minimum_interval_counts_from_creation() {
        let now = OffsetDateTime::now_utc();
        let r = rule();
        assert!(r.too_soon(&version(now - time::Duration::minutes(5), None, None), now).is_some());
        assert!(r.too_soon(&version(now - time::Duration::hours(2), None, None), now).is_none());
        let off = DueRule { min_interval: Duration::ZERO, ..r };
        assert!(off.too_soon(&version(now, None, None), now).is_none());
    }

    #[test]
    fn bad_validity_tags_are_named() {
        let r = rule();
        let mut p = version(OffsetDateTime::now_utc(), None, None);
        for bad in ["0", "-3", "30.5", "abc", "3651"] {
            p.tags.insert(TAG_VALIDITY_DAYS.into(), bad.into());
            let e = r.validity_days(&p).unwrap_err();
            assert!(e.contains(TAG_VALIDITY_DAYS) && e.contains(bad), "{e}");
        }
        p.tags.insert(TAG_VALIDITY_DAYS.into(), " 14 ".into());
        assert_eq!(r.validity_days(&p), Ok(14));
    }
}
