//! Target profiles turned into rotators: one [`Rotator`] per `[targets.NAME]` section.

use std::collections::BTreeMap;
use std::sync::Arc;

use kv_rotator_config::window::RotationWindow;
use kv_rotator_config::{AdminRef, TargetProfile};
use kv_rotator_rotators::common::Strategy;
use kv_rotator_rotators::registry::ProfileContext;
use kv_rotator_rotators::Rotator;

use crate::engine::value::Shape;

/// The configured targets, by profile name.
#[derive(Debug, Default)]
pub struct Targets {
    rotators: BTreeMap<String, Arc<dyn Rotator>>,
    admins: BTreeMap<String, AdminRef>,
    accounts: BTreeMap<String, Accounts>,
    /// Grace periods (multi-password and alternating-users profiles).
    grace_periods: BTreeMap<String, std::time::Duration>,
    /// Multi-password profiles.
    multi_password: std::collections::BTreeSet<String>,
    /// How each profile's secrets hold their login (plain unless alternating-users).
    shapes: BTreeMap<String, Shape>,
    /// Rotation windows (`rotation_window`), by profile.
    windows: BTreeMap<String, RotationWindow>,
}

/// Which accounts a profile may rotate: `accounts` patterns, and whether its admin's own.
#[derive(Debug, Clone)]
pub struct Accounts {
    patterns: Vec<glob::Pattern>,
    allow_admin: bool,
}

impl Accounts {
    /// From a profile's `accounts` patterns (invalid ones match nothing; the
    /// configuration's validation names them) and `allow_admin_account`.
    pub fn new<S: AsRef<str>>(patterns: &[S], allow_admin: bool) -> Self {
        let patterns = patterns.iter().filter_map(|p| glob::Pattern::new(p.as_ref()).ok()).collect();
        Self { patterns, allow_admin }
    }

    /// Any account but an admin's.
    pub fn any() -> Self {
        Self::new(&["*"], false)
    }
}

impl Targets {
    /// Builds a rotator for every profile, by its kind's registration; fails, naming the
    /// profile, when one cannot be set up (TLS trust anchors that cannot be read).
    pub fn from_profiles(profiles: &BTreeMap<String, TargetProfile>) -> anyhow::Result<Self> {
        let mut targets = Targets::default();
        for (name, profile) in profiles {
            let context = ProfileContext::new(name, &profile.password, profile.strategy);
            let rotator = profile.target.build(&context).map_err(|e| anyhow::anyhow!("targets.{name}: {e}"))?;
            targets.insert(name, rotator, profile.admin.clone());
            targets.set_accounts(name, Accounts::new(&profile.accounts, profile.allow_admin_account));
            if let Some(grace) = profile.grace_period() {
                targets.set_grace_period(name, grace, profile.strategy == Strategy::MultiPassword);
            }
            if let Some(suffix) = profile.twin_suffix() {
                targets.set_shape(name, Shape::Pair { twin_suffix: suffix.to_owned() });
            }
            if let Some(window) = &profile.rotation_window {
                targets.set_rotation_window(name, window.clone());
            }
        }
        Ok(targets)
    }

    /// Sets which accounts profile `name` may rotate (default for [`Targets::insert`]:
    /// [`Accounts::any`]).
    pub fn set_accounts(&mut self, name: &str, accounts: Accounts) {
        self.accounts.insert(name.to_owned(), accounts);
    }

    /// Why profile `name` may not rotate `account`, if it may not: outside its
    /// `accounts`, or its admin's own account without `allow_admin_account`.
    pub fn refuse_account(&self, name: &str, account: &str) -> Option<String> {
        let accounts = self.accounts.get(name).cloned().unwrap_or_else(Accounts::any);
        // Exact, case-sensitive: PostgreSQL, MariaDB and LDAP names may differ in case only.
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: false,
            require_literal_leading_dot: false,
        };
        if !accounts.patterns.iter().any(|p| p.matches_with(account, options)) {
            return Some(format!("account {account:?} is not in targets.{name}.accounts"));
        }
        if let Some(admin) = self.admins.get(name) {
            if admin.username == account && !accounts.allow_admin {
                return Some(format!(
                    "account {account:?} is the admin login of targets.{name}; it is rotated only with allow_admin_account = true"
                ));
            }
        }
        None
    }

    /// Adds (or replaces) one target; it may rotate any account but its admin's until
    /// [`Targets::set_accounts`] says otherwise.
    pub fn insert(&mut self, name: &str, rotator: Arc<dyn Rotator>, admin: Option<AdminRef>) {
        self.rotators.insert(name.to_owned(), rotator);
        match admin {
            Some(admin) => self.admins.insert(name.to_owned(), admin),
            None => self.admins.remove(name),
        };
    }

    /// Gives profile `name` a grace period: the previous value works until `grace` after
    /// a rotation (no rotation but a forced one comes sooner). With `multi_password` its
    /// old passwords are then retired (its rotator must add passwords, not replace them).
    pub fn set_grace_period(&mut self, name: &str, grace: std::time::Duration, multi_password: bool) {
        self.grace_periods.insert(name.to_owned(), grace);
        if multi_password {
            self.multi_password.insert(name.to_owned());
        } else {
            self.multi_password.remove(name);
        }
    }

    /// Whether profile `name` is multi-password: an account holds several passwords, and
    /// old ones are retired after the grace period.
    pub fn multi_password(&self, name: &str) -> bool {
        self.multi_password.contains(name)
    }

    /// Makes profile `name` hold its secrets' login as `shape` (alternating-users: a pair).
    pub fn set_shape(&mut self, name: &str, shape: Shape) {
        self.shapes.insert(name.to_owned(), shape);
    }

    /// How profile `name`'s secrets hold their login.
    pub fn shape(&self, name: &str) -> Shape {
        self.shapes.get(name).cloned().unwrap_or(Shape::Plain)
    }

    /// The grace period of profile `name` (multi-password, alternating users).
    pub fn grace_period(&self, name: &str) -> Option<std::time::Duration> {
        self.grace_periods.get(name).copied()
    }

    /// Sets profile `name`'s rotation window (what `rotation_window` sets).
    pub fn set_rotation_window(&mut self, name: &str, window: RotationWindow) {
        self.windows.insert(name.to_owned(), window);
    }

    /// The profiles' rotation windows, by profile name.
    pub fn rotation_windows(&self) -> &BTreeMap<String, RotationWindow> {
        &self.windows
    }

    /// The rotator of profile `name`.
    pub fn rotator(&self, name: &str) -> Option<Arc<dyn Rotator>> {
        self.rotators.get(name).cloned()
    }

    /// The admin login reference of profile `name`.
    pub fn admin(&self, name: &str) -> Option<&AdminRef> {
        self.admins.get(name)
    }
}
