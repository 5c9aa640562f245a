//! Target profiles turned into rotators: one [`Rotator`] per `[targets.NAME]` section.

use std::collections::BTreeMap;
use std::sync::Arc;

use kv_rotator_config::{AdminRef, TargetKind, TargetProfile};
use kv_rotator_rotators::htpasswd::HtpasswdRotator;
use kv_rotator_rotators::postgres::PostgresRotator;
use kv_rotator_rotators::Rotator;

/// The configured targets, by profile name.
#[derive(Debug, Default)]
pub struct Targets {
    rotators: BTreeMap<String, Arc<dyn Rotator>>,
    admins: BTreeMap<String, AdminRef>,
}

impl Targets {
    /// Builds a rotator for every profile.
    pub fn from_profiles(profiles: &BTreeMap<String, TargetProfile>) -> Self {
        let mut targets = Targets::default();
        for (name, profile) in profiles {
            let rotator: Arc<dyn Rotator> = match &profile.target {
                TargetKind::Postgres(cfg) => Arc::new(PostgresRotator::new(cfg.clone(), profile.password.clone())),
                TargetKind::Htpasswd(cfg) => Arc::new(HtpasswdRotator::new(cfg.clone(), profile.password.clone())),
            };
            targets.insert(name, rotator, profile.admin.clone());
        }
        targets
    }

    /// Adds (or replaces) one target.
    pub fn insert(&mut self, name: &str, rotator: Arc<dyn Rotator>, admin: Option<AdminRef>) {
        self.rotators.insert(name.to_owned(), rotator);
        match admin {
            Some(admin) => self.admins.insert(name.to_owned(), admin),
            None => self.admins.remove(name),
        };
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
