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
//!
//! Rotation windows ([`Windows`]): a version due by the rule above waits for its window
//! (the secret's `RotationWindow` tag, else its profile's `rotation_window`) when the
//! window is closed — unless it has expired, or the window opens less than
//! `engine.window_expiry_margin_hours` before `exp`: no window, whatever a tag says,
//! keeps a secret unrotated until it expires. A tag that is not a usable window is
//! reported and the profile's window applies. Waiting needs no state: the sweeper sees
//! the version due again at its first sweep inside the window.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_rotator_config::window::{RotationWindow, SWEEPS_PER_SPAN};
use kv_rotator_config::{EngineConfig, SweeperConfig, TargetProfile};
use kv_rotator_keyvault::SecretProperties;
use time::OffsetDateTime;

use kv_rotator_core::tags::{TAG_ROTATION_WINDOW, TAG_ROTATOR, TAG_VALIDITY_DAYS};

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
    /// Due (near expiry, or without `exp`), but its rotation window is closed.
    WaitingForWindow {
        /// When the window opens.
        opens_at: OffsetDateTime,
    },
    /// Near expiry, and the window opens too close to `exp` to wait for: due now,
    /// outside the window.
    WindowTooLate {
        /// When the window would have opened.
        opens_at: OffsetDateTime,
    },
    /// The version is disabled: never rotated by a schedule.
    Disabled,
}

impl Due {
    /// Whether a rotation is wanted now.
    pub fn is_due(self) -> bool {
        matches!(self, Due::NoExpiry | Due::Expired | Due::NearExpiry | Due::WindowTooLate { .. })
    }
}

/// The rotation windows of the target profiles, and whether the secrets' tags may
/// narrow or widen them.
#[derive(Debug, Clone, Default)]
pub struct Windows {
    /// `rotation_window` by profile name.
    profiles: Arc<BTreeMap<String, RotationWindow>>,
    /// `sweeper.interval_secs`: a tag's window must fit its sweeps, as a profile's must.
    sweep_interval_secs: u64,
    /// Off when the sweeper's due scan is: nothing would start a deferred rotation.
    enabled: bool,
    /// In a running service, when its sweeper last succeeded: waiting is a promise that a
    /// sweep starts the rotation, kept only while sweeps succeed. `None` (the read-only
    /// commands): judged as if they do.
    sweeps: Option<Arc<SweepClock>>,
}

/// When the sweeper last succeeded ([`Windows::with_sweep_clock`]).
#[derive(Debug)]
pub struct SweepClock {
    /// Unix seconds of the last good sweep; the service's start until the first one.
    last_ok: AtomicI64,
}

impl SweepClock {
    /// A clock whose last good sweep is `now`: the sweeper runs its first at startup.
    pub fn started(now: OffsetDateTime) -> Arc<Self> {
        Arc::new(Self { last_ok: AtomicI64::new(now.unix_timestamp()) })
    }

    /// Notes a good sweep at `now`.
    pub fn sweep_succeeded(&self, now: OffsetDateTime) {
        self.last_ok.fetch_max(now.unix_timestamp(), Ordering::Relaxed);
    }

    /// Whether a sweep succeeded within [`SWEEPS_PER_SPAN`] intervals (plus a minute).
    fn recent(&self, now: OffsetDateTime, interval_secs: u64) -> bool {
        let allowed = SWEEPS_PER_SPAN.saturating_mul(interval_secs).saturating_add(60);
        let since = now.unix_timestamp().saturating_sub(self.last_ok.load(Ordering::Relaxed));
        u64::try_from(since).map_or(true, |since| since <= allowed)
    }
}

impl Windows {
    /// The windows of the configured profiles, applied only when the sweeper's due scan is on.
    pub fn from_config(targets: &BTreeMap<String, TargetProfile>, sweeper: &SweeperConfig) -> Self {
        let profiles = targets
            .iter()
            .filter_map(|(name, profile)| Some((name.clone(), profile.rotation_window.clone()?)))
            .collect();
        Self::new(profiles, sweeper)
    }

    /// These windows by profile name, applied only when the sweeper's due scan is on.
    pub fn new(profiles: BTreeMap<String, RotationWindow>, sweeper: &SweeperConfig) -> Self {
        Self {
            profiles: Arc::new(profiles),
            sweep_interval_secs: sweeper.interval_secs,
            enabled: sweeper.enabled,
            sweeps: None,
        }
    }

    /// These windows, waited for only while `clock` says sweeps succeed.
    pub fn with_sweep_clock(mut self, clock: Arc<SweepClock>) -> Self {
        self.sweeps = Some(clock);
        self
    }

    /// Notes a good sweep at `now` (in a service with a [`SweepClock`]).
    pub fn sweep_succeeded(&self, now: OffsetDateTime) {
        if let Some(clock) = &self.sweeps {
            clock.sweep_succeeded(now);
        }
    }

    /// Whether a waiting rotation would be started by a sweep: no sweep has succeeded for
    /// [`SWEEPS_PER_SPAN`] intervals (a vault that cannot be listed, a Functions timer
    /// slower than `sweeper.interval_secs`) means nothing would, so nothing waits.
    pub fn sweeps_stalled(&self, now: OffsetDateTime) -> bool {
        self.sweeps.as_ref().is_some_and(|clock| !clock.recent(now, self.sweep_interval_secs))
    }

    /// The window that applies to a version: its tag's, else its profile's (`None`: any
    /// time), and why the tag was passed over when it was.
    pub fn of<'a>(&'a self, properties: &SecretProperties) -> (Option<Cow<'a, RotationWindow>>, Option<String>) {
        if !self.enabled {
            return (None, None);
        }
        let profile = properties.tags.get(TAG_ROTATOR).and_then(|name| self.profiles.get(name)).map(Cow::Borrowed);
        let Some(raw) = properties.tags.get(TAG_ROTATION_WINDOW) else { return (profile, None) };
        let problem = match raw.parse::<RotationWindow>() {
            Ok(window) => match window.sweeps_problem(self.sweep_interval_secs) {
                None => return (Some(Cow::Owned(window)), None),
                Some(problem) => problem,
            },
            Err(e) => e.to_string(),
        };
        let fallback = if profile.is_some() { "the profile's rotation_window applies" } else { "any time applies" };
        (profile, Some(format!("tag {TAG_ROTATION_WINDOW:?} is not used ({problem}); {fallback}")))
    }
}

/// The due rule, the rotation windows and the minimum interval, from the configuration.
#[derive(Debug, Clone)]
pub struct DueRule {
    /// `sweeper.window_days`.
    pub window_days: u32,
    /// `sweeper.lead_percent`.
    pub lead_percent: u32,
    /// `engine.default_validity_days`.
    pub default_validity_days: u32,
    /// `engine.min_rotation_interval_secs`.
    pub min_interval: Duration,
    /// `engine.window_expiry_margin_hours`, or two sweeps when that is longer.
    pub window_margin: time::Duration,
    /// The rotation windows (none until [`DueRule::with_windows`]).
    pub windows: Windows,
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
            // At least two sweeps: the one that sees the margin reached must come before `exp`.
            window_margin: time::Duration::hours(i64::from(engine.window_expiry_margin_hours)).max(
                time::Duration::seconds(
                    i64::try_from(SWEEPS_PER_SPAN.saturating_mul(sweeper.interval_secs)).unwrap_or(i64::MAX),
                ),
            ),
            windows: Windows::default(),
        }
    }

    /// This rule with the profiles' rotation windows.
    pub fn with_windows(mut self, windows: Windows) -> Self {
        self.windows = windows;
        self
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

    /// Whether the version with these properties is due at `now`, its rotation window
    /// considered. An unreadable validity tag counts as the default here; the engine
    /// refuses it when it plans.
    pub fn check(&self, properties: &SecretProperties, now: OffsetDateTime) -> Due {
        match self.check_expiry(properties, now) {
            due @ (Due::NoExpiry | Due::NearExpiry) => self.within_window(properties, now, due),
            other => other,
        }
    }

    /// A due version against its window: due still when the window is open, or opens
    /// within the margin before `exp`; waiting otherwise.
    fn within_window(&self, properties: &SecretProperties, now: OffsetDateTime, due: Due) -> Due {
        let Some(window) = self.windows.of(properties).0 else { return due };
        if window.contains(now) || self.windows.sweeps_stalled(now) {
            return due;
        }
        let Some(opens_at) = window.next_opening(now) else { return due };
        match properties.expires {
            Some(exp) if opens_at > exp - self.window_margin => Due::WindowTooLate { opens_at },
            _ => Due::WaitingForWindow { opens_at },
        }
    }

    /// [`DueRule::check`] without the window: the version's `exp` against the lead.
    fn check_expiry(&self, properties: &SecretProperties, now: OffsetDateTime) -> Due {
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
    use kv_rotator_config::SweeperConfig;

    const DAY: time::Duration = time::Duration::days(1);

    fn rule() -> DueRule {
        DueRule {
            window_days: 30,
            lead_percent: 50,
            default_validity_days: 60,
            min_interval: Duration::from_secs(3600),
            window_margin: time::Duration::hours(24),
            windows: Windows::default(),
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

    fn with_window(rule: &DueRule, tag: Option<&str>, expires: Option<OffsetDateTime>, now: OffsetDateTime) -> Due {
        let mut p = version(now - DAY * 50, None, expires);
        p.tags.insert(TAG_ROTATOR.into(), "db".into());
        if let Some(tag) = tag {
            p.tags.insert(TAG_ROTATION_WINDOW.into(), tag.into());
        }
        rule.check(&p, now)
    }

    fn windowed(profile: Option<&str>, sweeper: SweeperConfig) -> DueRule {
        let profiles = profile.map(|w| ("db".to_owned(), w.parse().unwrap())).into_iter().collect();
        DueRule { windows: Windows::new(profiles, &sweeper), ..rule() }
    }

    fn sweeping_every(secs: u64) -> SweeperConfig {
        SweeperConfig { interval_secs: secs, ..Default::default() }
    }

    #[test]
    fn a_due_version_waits_for_a_closed_window_unless_exp_is_near() {
        // 2026-11-30 is a Monday.
        let now = time::macros::datetime!(2026-11-30 12:00 UTC);
        let r = windowed(Some("daily 22:00-04:00 UTC"), sweeping_every(600));
        let tonight = time::macros::datetime!(2026-11-30 22:00 UTC);
        assert_eq!(with_window(&r, None, Some(now + DAY * 10), now), Due::WaitingForWindow { opens_at: tonight });
        assert_eq!(with_window(&r, None, None, now), Due::WaitingForWindow { opens_at: tonight }, "no exp: waits");
        assert_eq!(with_window(&r, None, Some(now + DAY * 10), tonight), Due::NearExpiry, "open");
        assert_eq!(with_window(&r, None, Some(now + DAY * 40), now), Due::NotYet { due_at: now + DAY * 10 }, "not due");
        // Opens 10 h from now, expires in 30 h: inside the 24 h margin.
        let soon = with_window(&r, None, Some(now + time::Duration::hours(30)), now);
        assert_eq!(soon, Due::WindowTooLate { opens_at: tonight });
        assert!(soon.is_due());
        assert_eq!(with_window(&r, None, Some(now - DAY), now), Due::Expired, "expired: never waits");
        // The tag overrides the profile, either way.
        assert_eq!(with_window(&r, Some("daily 11:00-13:00 UTC"), Some(now + DAY * 10), now), Due::NearExpiry);
        // A sweeper whose due scan is off would never start a deferred rotation.
        let off = windowed(Some("daily 22:00-04:00 UTC"), SweeperConfig { enabled: false, ..sweeping_every(600) });
        assert_eq!(with_window(&off, None, Some(now + DAY * 10), now), Due::NearExpiry);
    }

    /// Waiting is a promise that a sweep starts the rotation: in a service whose sweeps
    /// have not succeeded for two intervals, nothing waits.
    #[test]
    fn nothing_waits_while_sweeps_are_stalled() {
        let now = time::macros::datetime!(2026-11-30 12:00 UTC);
        let mut r = windowed(Some("daily 22:00-04:00 UTC"), sweeping_every(600));
        let clock = SweepClock::started(now - time::Duration::hours(1));
        r.windows = r.windows.with_sweep_clock(clock.clone());
        let exp = Some(now + DAY * 10);
        assert_eq!(with_window(&r, None, exp, now), Due::NearExpiry, "no good sweep for an hour (interval 10 min)");
        clock.sweep_succeeded(now - time::Duration::minutes(15));
        assert!(matches!(with_window(&r, None, exp, now), Due::WaitingForWindow { .. }), "a sweep 15 minutes ago");
        // An older sweep reported late does not move the clock back.
        clock.sweep_succeeded(now - time::Duration::hours(3));
        assert!(matches!(with_window(&r, None, exp, now), Due::WaitingForWindow { .. }));
        assert_eq!(with_window(&r, None, exp, now + time::Duration::minutes(20)), Due::NearExpiry, "stalled again");
    }

    #[test]
    fn the_margin_holds_two_sweeps_however_short_it_is_set() {
        let engine = EngineConfig { window_expiry_margin_hours: 1, ..Default::default() };
        let rule = DueRule::from_config(&engine, &SweeperConfig { interval_secs: 86_400, ..Default::default() });
        assert_eq!(rule.window_margin, DAY * 2);
        let rule = DueRule::from_config(&engine, &sweeping_every(600));
        assert_eq!(rule.window_margin, time::Duration::hours(1));
    }

    #[test]
    fn an_unusable_window_tag_is_named_and_the_profile_window_applies() {
        let now = time::macros::datetime!(2026-11-30 12:00 UTC);
        let r = windowed(Some("daily 22:00-04:00 UTC"), sweeping_every(3600));
        let tonight = time::macros::datetime!(2026-11-30 22:00 UTC);
        for bad in ["whenever", "daily 11:00-13:00 Mars/Base", "daily 11:00-12:30 UTC"] {
            let due = with_window(&r, Some(bad), Some(now + DAY * 10), now);
            assert_eq!(due, Due::WaitingForWindow { opens_at: tonight }, "{bad}");
            let mut p = version(now, None, None);
            p.tags.insert(TAG_ROTATOR.into(), "db".into());
            p.tags.insert(TAG_ROTATION_WINDOW.into(), bad.into());
            let (window, problem) = r.windows.of(&p);
            assert_eq!(window.map(|w| w.to_string()).as_deref(), Some("daily 22:00-04:00 UTC"));
            let problem = problem.expect("the tag is reported");
            assert!(
                problem.contains(TAG_ROTATION_WINDOW) && problem.contains("profile's rotation_window"),
                "{problem}"
            );
        }
        // 90 minutes fits sweeps every 10 minutes.
        let often = windowed(None, sweeping_every(600));
        assert_eq!(with_window(&often, Some("daily 11:00-12:30 UTC"), Some(now + DAY * 10), now), Due::NearExpiry);
        // No profile window: a bad tag leaves the version due at once.
        assert_eq!(with_window(&often, Some("whenever"), Some(now + DAY * 10), now), Due::NearExpiry);
    }

    /// Whatever window a tag names — any day, hour and zone — a due version is due no
    /// later than the margin before its `exp` (at once when already inside it), and
    /// while it waits it is never inside its window: walked in 30-minute steps.
    #[test]
    fn no_window_keeps_a_version_waiting_into_its_margin_before_exp() {
        let start = time::macros::datetime!(2026-03-26 00:00 UTC); // DST changes that weekend
        let r = windowed(None, sweeping_every(600));
        let step = time::Duration::minutes(30);
        let mut cases = 0;
        for day in ["Mon", "Wed", "Sat", "Sun"] {
            for hours in ["00:00-01:00", "03:00-03:30", "11:00-23:00", "23:30-00:15"] {
                for zone in ["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Europe/Amsterdam"] {
                    let tag = format!("{day} {hours} {zone}");
                    let window: RotationWindow = tag.parse().unwrap();
                    for hours_to_exp in [1, 12, 25, 49, 24 * 3, 24 * 9, 24 * 20] {
                        let exp = start + time::Duration::hours(hours_to_exp);
                        let mut now = start;
                        let due_at = loop {
                            let due = with_window(&r, Some(&tag), Some(exp), now);
                            if due.is_due() {
                                break now;
                            }
                            assert!(matches!(due, Due::WaitingForWindow { .. }), "{tag}: {due:?}");
                            assert!(!window.contains(now), "{tag}: waits while open at {now}");
                            now += step;
                        };
                        // Already inside the margin: due at once.
                        let latest = (exp - r.window_margin + step).max(start);
                        assert!(due_at <= latest, "{tag}, exp {exp}: due only at {due_at}");
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 4 * 4 * 4 * 7);
    }
}
