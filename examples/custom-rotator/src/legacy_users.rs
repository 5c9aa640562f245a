//! `kind = "legacy-users"`: an in-house application that keeps its logins in a JSON file,
//! one salted SHA-256 per user:
//!
//! ```json
//! {"users": {"report-bot": {"salt": "9f0c…", "sha256": "1b4e…", "admin": false}}}
//! ```
//!
//! Three parts make a kind:
//! 1. the profile's settings, a serde type that refuses unknown keys ([`LegacyUsersConfig`]);
//! 2. [`KindSettings`] on it: the strategies the kind offers, and how to build its rotator;
//! 3. the [`Rotator`] ([`LegacyUsersRotator`]), keeping the contract written on
//!    [`SetPasswordRequest`]: a pending password that already works is `AlreadySet`, then
//!    the current, previous and admin logins are tried in that order, and an error never
//!    holds a password.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use kv_rotator_rotators::common::Strategy;
use kv_rotator_rotators::registry::{BuildError, KindSettings, ProfileContext};
use kv_rotator_rotators::{
    PasswordPolicy, Rotator, RotatorError, RotatorResult, SetPasswordOutcome, SetPasswordRequest, SetPasswordResponse,
    VerifyRequest, VerifyResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `kind = "…"` name this example registers.
pub const KIND: &str = "legacy-users";

/// A `[targets.NAME]` section of kind `legacy-users`.
///
/// ```toml
/// [targets.reports]
/// kind = "legacy-users"
/// users_file = "/srv/reports/users.json"
/// accounts = ["report-*"]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyUsersConfig {
    /// The application's users file.
    pub users_file: PathBuf,
}

impl KindSettings for LegacyUsersConfig {
    fn offers(&self, strategy: Strategy) -> Result<(), Cow<'static, str>> {
        match strategy {
            Strategy::SingleUser => Ok(()),
            _ => Err("the legacy application keeps one password per user".into()),
        }
    }

    fn build(&self, profile: &ProfileContext<'_>) -> Result<Arc<dyn Rotator>, BuildError> {
        Ok(Arc::new(LegacyUsersRotator::new(self.clone(), profile.password.clone())))
    }
}

/// One user's entry in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    salt: String,
    sha256: String,
    #[serde(default)]
    admin: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UsersFile {
    users: BTreeMap<String, Entry>,
}

fn hash(salt: &str, password: &SecretString) -> String {
    hex::encode(Sha256::new().chain_update(salt).chain_update(password.expose_secret()).finalize())
}

impl Entry {
    fn new(password: &SecretString, admin: bool) -> Self {
        let salt = hex::encode(rand::random::<[u8; 16]>());
        Entry { sha256: hash(&salt, password), salt, admin }
    }

    /// An empty password never logs in (as LDAP's unauthenticated bind would let it).
    fn accepts(&self, password: &SecretString) -> bool {
        !password.expose_secret().is_empty() && hash(&self.salt, password) == self.sha256
    }
}

/// The rotator of one `legacy-users` profile.
#[derive(Debug)]
pub struct LegacyUsersRotator {
    cfg: LegacyUsersConfig,
    policy: PasswordPolicy,
}

impl LegacyUsersRotator {
    /// The rotator of `cfg`, generating passwords by `policy`.
    pub fn new(cfg: LegacyUsersConfig, policy: PasswordPolicy) -> Self {
        Self { cfg, policy }
    }

    /// Adds or replaces `user` (tests and onboarding; rotations never create users). A
    /// missing file is started; one that cannot be read is an error, never overwritten.
    pub fn put_user(path: &Path, user: &str, password: &SecretString, admin: bool) -> std::io::Result<()> {
        let _lock = lock(path)?;
        let mut file = match read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => UsersFile::default(),
            other => other?,
        };
        file.users.insert(user.to_owned(), Entry::new(password, admin));
        write(path, &file)
    }
}

/// An exclusive lock on `<file>.lock`, held while the file is read, changed and written
/// back: two profiles, two workers or the application itself never lose each other's
/// change. (A blocking call: users files are small and local.)
fn lock(path: &Path) -> std::io::Result<std::fs::File> {
    let lock = std::fs::OpenOptions::new().create(true).append(true).open(path.with_extension("lock"))?;
    lock.lock()?;
    Ok(lock)
}

fn read(path: &Path) -> std::io::Result<UsersFile> {
    let text = std::fs::read(path)?;
    serde_json::from_slice(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Written whole to a temporary file, synced, renamed over the old one and the directory
/// synced: a crash or a power loss leaves the old file or the new one, never half of one.
fn write(path: &Path, file: &UsersFile) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension(format!("tmp-{:016x}", rand::random::<u64>()));
    let mut out = std::fs::File::create(&tmp)?;
    out.write_all(&serde_json::to_vec_pretty(file)?)?;
    out.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn unreadable(path: &Path, e: std::io::Error) -> RotatorError {
    // The message names the file and the OS error; the file holds hashes, never printed.
    RotatorError::Transient(format!("users file {}: {e}", path.display()))
}

#[async_trait]
impl Rotator for LegacyUsersRotator {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn password_policy(&self) -> &PasswordPolicy {
        &self.policy
    }

    async fn set_password(&self, req: SetPasswordRequest) -> RotatorResult<SetPasswordResponse> {
        let path = &self.cfg.users_file;
        let _one_at_a_time = lock(path).map_err(|e| unreadable(path, e))?;
        let mut file = read(path).map_err(|e| unreadable(path, e))?;
        let Some(entry) = file.users.get(&req.username) else {
            return Err(RotatorError::Permanent(format!("no user {:?} in {}", req.username, path.display())));
        };
        if !req.pending_is_new && entry.accepts(&req.pending) {
            return Ok(SetPasswordResponse::new(SetPasswordOutcome::AlreadySet).with_pending_verified(true));
        }
        let admin_works = req.admin.as_ref().is_some_and(|admin| {
            admin.username != req.username
                && file.users.get(&admin.username).is_some_and(|a| a.admin && a.accepts(&admin.password))
        });
        let outcome = if entry.accepts(&req.current) {
            SetPasswordOutcome::ChangedWithCurrent
        } else if req.previous.iter().any(|p| entry.accepts(p)) {
            SetPasswordOutcome::ChangedWithPrevious
        } else if admin_works {
            SetPasswordOutcome::ChangedWithAdmin
        } else {
            return Err(RotatorError::Permanent(format!(
                "no known login of {:?} works (current, {} previous, admin {})",
                req.username,
                req.previous.len(),
                if req.admin.is_some() { "given" } else { "none" }
            )));
        };
        let admin = entry.admin;
        file.users.insert(req.username.clone(), Entry::new(&req.pending, admin));
        // Once the rename may have happened, the new password may be in use: say so
        // (`NotYetVisible`), so that the engine keeps it and retries.
        write(path, &file).map_err(|e| RotatorError::NotYetVisible(format!("users file {}: {e}", path.display())))?;
        // Read back, as `verify` would check: the engine then skips its own login.
        let verified = read(path).ok().and_then(|f| f.users.get(&req.username).map(|e| e.accepts(&req.pending)));
        Ok(SetPasswordResponse::new(outcome).with_pending_verified(verified == Some(true)))
    }

    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse> {
        let path = &self.cfg.users_file;
        let file = read(path).map_err(|e| unreadable(path, e))?;
        Ok(match file.users.get(&req.username) {
            Some(entry) if entry.accepts(&req.password) => VerifyResponse::Accepted,
            _ => VerifyResponse::Rejected,
        })
    }
}
