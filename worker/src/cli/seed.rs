//! The demo target and a real-shaped Event Grid delivery, shared by `demo` and `dev`.
//!
//! The demo target is an Apache htpasswd file (bcrypt): a real target type whose login
//! check needs no installed server. Its password lives in the dev vault as a managed
//! secret with the tags a user would set: `rotator`, `CredentialId`, `ValidityPeriodDays`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use kv_rotator_keyvault::{NewSecretVersion, SecretStore};
use kv_rotator_rotators::htpasswd::{self, HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::PasswordPolicy;
use secrecy::SecretString;
use time::OffsetDateTime;

use super::events::{delivery, EventSpec, EventType, Schema};
use crate::targets::Targets;
use kv_rotator_core::tags::{TAG_CREDENTIAL_ID, TAG_ROTATOR, TAG_VALIDITY_DAYS};

/// The demo secret's name.
pub const DEMO_SECRET: &str = "demo-htpasswd-password";
/// The demo target profile's name (the secret's `rotator` tag).
pub const DEMO_PROFILE: &str = "demo-htpasswd";
/// The user in the htpasswd file (the secret's `CredentialId` tag).
pub const DEMO_USER: &str = "demo-bot";
/// The demo secret's `ValidityPeriodDays`.
pub const DEMO_VALIDITY_DAYS: u32 = 30;

/// A seeded demo target.
#[derive(Debug)]
pub struct DemoTarget {
    /// The htpasswd file.
    pub htpasswd: PathBuf,
    /// A rotator over it, for the report's login checks.
    pub rotator: Arc<HtpasswdRotator>,
    /// The secret's first version.
    pub initial_version: String,
    /// Its password (to prove it stops working).
    pub initial_password: SecretString,
}

/// Creates the htpasswd file in `dir` with a fresh password for [`DEMO_USER`], stores the
/// password in the vault as a managed secret that expires in 5 days, and registers the
/// target profile in `targets`.
pub async fn seed_demo_target(
    store: &dyn SecretStore,
    dir: &Path,
    targets: &mut Targets,
) -> anyhow::Result<DemoTarget> {
    let htpasswd_path = dir.join("demo.htpasswd");
    let config = HtpasswdConfig { path: htpasswd_path.clone(), bcrypt_cost: 8, allow_admin_reset: false };
    let policy = PasswordPolicy::default();
    let rotator = Arc::new(HtpasswdRotator::new(config, policy.clone()));
    let initial_password = policy.generate();
    htpasswd::add_user(&htpasswd_path, DEMO_USER, &initial_password, 8)
        .with_context(|| format!("cannot create {}", htpasswd_path.display()))?;
    let tags = BTreeMap::from([
        (TAG_ROTATOR.to_owned(), DEMO_PROFILE.to_owned()),
        (TAG_CREDENTIAL_ID.to_owned(), DEMO_USER.to_owned()),
        (TAG_VALIDITY_DAYS.to_owned(), DEMO_VALIDITY_DAYS.to_string()),
        ("ProviderAddress".to_owned(), htpasswd_path.display().to_string()),
    ]);
    let seeded = store
        .set_secret(
            DEMO_SECRET,
            NewSecretVersion {
                value: initial_password.clone(),
                tags,
                content_type: Some("text/plain".to_owned()),
                expires: Some(OffsetDateTime::now_utc() + time::Duration::days(5)),
                not_before: None,
            },
        )
        .await
        .context("cannot seed the demo secret")?;
    targets.insert(DEMO_PROFILE, rotator.clone(), None);
    Ok(DemoTarget { htpasswd: htpasswd_path, rotator, initial_version: seeded.version, initial_password })
}

/// An Event Grid schema delivery (a JSON array of one event) of
/// `Microsoft.KeyVault.SecretNearExpiry`, shaped like the service's: PascalCase `data`,
/// `NBF`/`EXP` as numbers, `topic` the vault's ARM id, `subject` the secret name.
pub fn near_expiry_delivery(
    vault_name: &str,
    vault_host: &str,
    secret: &str,
    version: &str,
    exp: OffsetDateTime,
) -> serde_json::Value {
    let spec = EventSpec {
        schema: Schema::Eventgrid,
        event_type: EventType::NearExpiry,
        vault_name,
        vault_host,
        secret,
        version: Some(version),
        exp: Some(exp),
    };
    delivery(&spec).0
}
