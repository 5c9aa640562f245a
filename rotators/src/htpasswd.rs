//! Apache htpasswd rotator (bcrypt entries), the demo's real target.
//!
//! - [`HtpasswdConfig`]: the file, the bcrypt cost of new entries, and whether the
//!   admin credential may reset a password (a target profile with `kind = "htpasswd"`).
//! - [`HtpasswdRotator`]: the [`Rotator`]. `verify` reads the file and checks the
//!   user's bcrypt hash. `set_password` "logs in" the way an htpasswd user changes its
//!   own password — by proving the current or a previous password against the file —
//!   or, when `allow_admin_reset = true` and the request carries an admin credential,
//!   resets it (write access to the file is the admin power here; the admin password
//!   itself is not checked against anything). Then it rewrites the file atomically and
//!   reads it back, which is `verify`'s own check (`pending_verified`). The pending
//!   password is checked first unless the engine just journaled it (`pending_is_new`).
//! - [`add_user`]: adds or replaces an entry; the demo seeds its file with it.
//! - [`check_policy`]: whether a password policy fits bcrypt's 71-byte limit.
//!
//! Rewrites keep every other byte of the file (other users, comments, blank lines, CRLF
//! line ends) and the file's mode and owner: a temporary file in the same directory is
//! written, fsynced, then renamed over the original, and the directory is fsynced. A
//! symlinked path is followed, so the real file is replaced and the link kept.
//!
//! Rotations in one process are serialized so two users' changes cannot overwrite each
//! other. Several processes rewriting one file are not coordinated: point one worker at
//! a given file.
//!
//! Only bcrypt entries (`$2y$`, `$2b$`, `$2a$`) are understood; an entry in another
//! format (`$apr1$`, `{SHA}`, crypt) is a permanent error for that user. bcrypt reads at
//! most 72 bytes (71 plus a NUL): longer pending passwords are refused rather than
//! silently truncated.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use crate::common::pending_may_work;
use crate::{
    PasswordPolicy, Rotator, RotatorError, RotatorResult, SetPasswordOutcome, SetPasswordRequest, SetPasswordResponse,
    VerifyRequest, VerifyResponse,
};

/// Smallest bcrypt cost accepted.
pub const MIN_COST: u32 = 4;
/// Largest bcrypt cost accepted.
pub const MAX_COST: u32 = 31;
/// Default bcrypt cost of new entries (Apache's `htpasswd -B` uses 5; 10 is today's
/// usual floor for interactive logins).
pub const DEFAULT_COST: u32 = 10;
/// Longest password bcrypt uses whole.
pub const MAX_PASSWORD_BYTES: usize = 71;

/// Settings of an htpasswd target.
///
/// ```toml
/// [targets.demo-web]
/// kind = "htpasswd"
/// path = "/etc/nginx/htpasswd"
/// bcrypt_cost = 10
/// allow_admin_reset = false
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HtpasswdConfig {
    /// The htpasswd file.
    pub path: PathBuf,
    /// bcrypt cost of new entries, 4..=31. Default 10.
    #[serde(default = "default_cost", deserialize_with = "cost_in_range")]
    pub bcrypt_cost: u32,
    /// Whether a request's admin credential may reset a password no known password
    /// opens. Default false.
    #[serde(default)]
    pub allow_admin_reset: bool,
}

fn default_cost() -> u32 {
    DEFAULT_COST
}

fn cost_in_range<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let cost = u32::deserialize(d)?;
    check_cost(cost).map_err(serde::de::Error::custom)?;
    Ok(cost)
}

/// Why an htpasswd setting cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HtpasswdSettingError {
    /// `bcrypt_cost` outside what bcrypt takes.
    #[error("bcrypt_cost = {0} is out of range: it must be between {MIN_COST} and {MAX_COST}")]
    Cost(u32),
    /// A password policy making passwords longer than bcrypt uses.
    #[error("password.length = {0} is too long for bcrypt, which uses at most {MAX_PASSWORD_BYTES} bytes")]
    PasswordLength(usize),
}

impl From<HtpasswdSettingError> for RotatorError {
    fn from(e: HtpasswdSettingError) -> Self {
        RotatorError::Permanent(e.to_string())
    }
}

fn check_cost(cost: u32) -> Result<(), HtpasswdSettingError> {
    if (MIN_COST..=MAX_COST).contains(&cost) {
        Ok(())
    } else {
        Err(HtpasswdSettingError::Cost(cost))
    }
}

impl HtpasswdConfig {
    /// The file at `path`, cost [`DEFAULT_COST`], no admin reset.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), bcrypt_cost: DEFAULT_COST, allow_admin_reset: false }
    }
}

/// Rotates bcrypt passwords in an Apache htpasswd file.
#[derive(Debug, Clone)]
pub struct HtpasswdRotator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: HtpasswdConfig,
    policy: PasswordPolicy,
    /// Serializes read-modify-write cycles on the file.
    lock: Mutex<()>,
}

impl HtpasswdRotator {
    /// A rotator for the file in `cfg`, generating passwords under `policy`.
    pub fn new(cfg: HtpasswdConfig, policy: PasswordPolicy) -> Self {
        Self { inner: Arc::new(Inner { cfg, policy, lock: Mutex::new(()) }) }
    }

    /// Its settings.
    pub fn config(&self) -> &HtpasswdConfig {
        &self.inner.cfg
    }

    /// Runs blocking file and bcrypt work off the async executor.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> RotatorResult<T> + Send + 'static,
    ) -> RotatorResult<T> {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(result) => result,
            // No detail: a panic message is not guaranteed to be free of secrets.
            Err(e) if e.is_panic() => Err(RotatorError::Permanent("htpasswd rotator panicked".to_owned())),
            Err(_) => Err(RotatorError::Transient("htpasswd task was cancelled".to_owned())),
        }
    }
}

impl crate::registry::KindSettings for HtpasswdConfig {
    fn offers(&self, strategy: crate::common::Strategy) -> Result<(), std::borrow::Cow<'static, str>> {
        match strategy {
            crate::common::Strategy::SingleUser => Ok(()),
            _ => Err("an htpasswd file keeps one password per user".into()),
        }
    }

    fn build(
        &self,
        profile: &crate::registry::ProfileContext<'_>,
    ) -> Result<Arc<dyn Rotator>, crate::registry::BuildError> {
        Ok(Arc::new(HtpasswdRotator::new(self.clone(), profile.password.clone())))
    }
}

#[async_trait]
impl Rotator for HtpasswdRotator {
    fn kind(&self) -> &'static str {
        "htpasswd"
    }

    fn password_policy(&self) -> &PasswordPolicy {
        &self.inner.policy
    }

    async fn set_password(&self, req: SetPasswordRequest) -> RotatorResult<SetPasswordResponse> {
        self.blocking(move |inner| inner.set_password(&req)).await
    }

    async fn verify(&self, req: VerifyRequest) -> RotatorResult<VerifyResponse> {
        self.blocking(move |inner| {
            check_user_name(&req.username)?;
            let path = &inner.cfg.path;
            let text = read(path)?;
            let entry = find_entry(&text, &req.username).ok_or_else(|| unknown_user(path, &req.username))?;
            Ok(if entry.matches(&req.password, path)? { VerifyResponse::Accepted } else { VerifyResponse::Rejected })
        })
        .await
    }

    /// The file reads, and opens for writing (opened, not written: nothing changes).
    async fn check_setup(&self) -> RotatorResult<Option<String>> {
        self.blocking(|inner| {
            let path = &inner.cfg.path;
            read(path)?;
            OpenOptions::new().append(true).open(path).map_err(|e| io_error("opening for writing", path, e))?;
            Ok(Some(format!("the file {} is readable and writable", path.display())))
        })
        .await
    }

    /// No admin login: write access to the file is the admin power here.
    async fn check_admin(&self, _admin: &crate::Credential) -> RotatorResult<crate::AdminCheck> {
        Ok(crate::AdminCheck::NotChecked(
            "htpasswd has no admin login: write access to the file is its admin power (allow_admin_reset)".to_owned(),
        ))
    }
}

impl Inner {
    fn set_password(&self, req: &SetPasswordRequest) -> RotatorResult<SetPasswordResponse> {
        let path = &self.cfg.path;
        let user = &req.username;
        check_user_name(user)?;
        check_cost(self.cfg.bcrypt_cost)?;
        check_new_password(&req.pending)?;
        // A poisoned lock only means another rotation panicked; the file is whole
        // (renames are atomic), so carry on.
        let _guard = self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());

        let mut text = read(path)?;
        let entry = find_entry(&text, user).ok_or_else(|| unknown_user(path, user))?;
        // A password the engine just journaled cannot be in the file: one bcrypt check saved.
        if pending_may_work(req) && entry.matches(&req.pending, path)? {
            // The same bcrypt check `verify` makes: proven.
            return Ok(SetPasswordResponse { outcome: SetPasswordOutcome::AlreadySet, pending_verified: true });
        }

        let mut outcome = None;
        if entry.matches(&req.current, path)? {
            outcome = Some(SetPasswordOutcome::ChangedWithCurrent);
        } else {
            for previous in &req.previous {
                if entry.matches(previous, path)? {
                    outcome = Some(SetPasswordOutcome::ChangedWithPrevious);
                    break;
                }
            }
        }
        if outcome.is_none() && req.admin.is_some() && self.cfg.allow_admin_reset {
            outcome = Some(SetPasswordOutcome::ChangedWithAdmin);
        }
        let Some(outcome) = outcome else {
            let admin = match (&req.admin, self.cfg.allow_admin_reset) {
                (None, _) => "no admin credential given",
                (Some(_), false) => "admin credential not used: allow_admin_reset = false",
                (Some(_), true) => unreachable!("admin reset would have been chosen"),
            };
            return Err(RotatorError::Permanent(format!(
                "no known password of user {user:?} matches its entry in {} (tried the current password and {} previous; {admin})",
                path.display(),
                req.previous.len()
            )));
        };

        let hash = hash(&req.pending, self.cfg.bcrypt_cost)?;
        text.replace_range(entry.hash, &hash);
        write_atomic(path, text.as_bytes()).map_err(|e| io_error("rewriting", path, e))?;

        // Read back: what the web server will read is what counts.
        let text = read(path)?;
        let entry = find_entry(&text, user).ok_or_else(|| unknown_user(path, user))?;
        if !entry.matches(&req.pending, path)? {
            return Err(RotatorError::Permanent(format!(
                "{} was rewritten but user {user:?}'s entry does not match the new password",
                path.display()
            )));
        }
        // The read-back is what `verify` would do: the engine's test step need not repeat it.
        Ok(SetPasswordResponse { outcome, pending_verified: true })
    }
}

/// Checks that `policy` only makes passwords bcrypt uses whole (at most
/// [`MAX_PASSWORD_BYTES`]); configuration loading can call it so an unusable profile is
/// refused at startup rather than at its first rotation.
pub fn check_policy(policy: &PasswordPolicy) -> Result<(), HtpasswdSettingError> {
    // Generated passwords are ASCII: characters are bytes.
    if policy.length > MAX_PASSWORD_BYTES {
        return Err(HtpasswdSettingError::PasswordLength(policy.length));
    }
    Ok(())
}

/// Adds `user` with `password` to the htpasswd file at `path`, or replaces its hash if
/// it is there; creates the file (mode 0600) if missing. Other lines are kept.
pub fn add_user(path: impl AsRef<Path>, user: &str, password: &SecretString, cost: u32) -> RotatorResult<()> {
    let path = path.as_ref();
    check_user_name(user)?;
    check_cost(cost)?;
    check_new_password(password)?;
    let mut text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_error("reading", path, e)),
    };
    let hash = hash(password, cost)?;
    match find_entry(&text, user) {
        Some(entry) => text.replace_range(entry.hash, &hash),
        None => {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("{user}:{hash}\n"));
        }
    }
    write_atomic(path, text.as_bytes()).map_err(|e| io_error("writing", path, e))
}

/// A user's line: where its hash is in the file text, and the hash.
#[derive(Debug)]
struct Entry<'a> {
    hash: Range<usize>,
    value: &'a str,
    user: &'a str,
}

impl Entry<'_> {
    /// Whether `password` matches; an empty password never does.
    fn matches(&self, password: &SecretString, path: &Path) -> RotatorResult<bool> {
        if !self.value.starts_with("$2") {
            return Err(RotatorError::Permanent(format!(
                "the entry of user {:?} in {} is not a bcrypt hash: only $2y$/$2b$/$2a$ entries are supported",
                self.user,
                path.display()
            )));
        }
        let password = password.expose_secret();
        if password.is_empty() {
            return Ok(false);
        }
        // Truncating verify, as Apache does, so entries made by `htpasswd -B` work.
        bcrypt::verify(password, self.value).map_err(|e| {
            RotatorError::Permanent(format!(
                "the entry of user {:?} in {} is not a valid bcrypt hash ({e})",
                self.user,
                path.display()
            ))
        })
    }
}

/// The first entry for `user` (Apache uses the first match too).
fn find_entry<'a>(text: &'a str, user: &str) -> Option<Entry<'a>> {
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\n', '\r']);
        if !content.starts_with('#') {
            if let Some((name, value)) = content.split_once(':') {
                if name == user {
                    let from = start + name.len() + 1;
                    return Some(Entry { hash: from..from + value.len(), value, user: name });
                }
            }
        }
        start += line.len();
    }
    None
}

fn hash(password: &SecretString, cost: u32) -> RotatorResult<String> {
    let hash = bcrypt::non_truncating_hash_with_result(password.expose_secret(), cost)
        .map(|parts| parts.format_for_version(bcrypt::Version::TwoY))
        // BcryptError names the cost or the length, never the password.
        .map_err(|e| RotatorError::Permanent(format!("bcrypt hashing failed: {e}")))?;
    #[cfg(feature = "leak-ledger")]
    kv_rotator_leakscan::record(kv_rotator_leakscan::Kind::Derived, &hash);
    Ok(hash)
}

fn check_user_name(user: &str) -> RotatorResult<()> {
    if user.is_empty() || user.contains([':', '\n', '\r']) || user.starts_with('#') {
        return Err(RotatorError::Permanent(format!(
            "{user:?} cannot be an htpasswd user name (empty, or contains ':' or a line break, or starts with '#')"
        )));
    }
    Ok(())
}

fn check_new_password(password: &SecretString) -> RotatorResult<()> {
    let len = password.expose_secret().len();
    if len == 0 {
        return Err(RotatorError::Refused("the new password is empty".to_owned()));
    }
    if len > MAX_PASSWORD_BYTES {
        return Err(RotatorError::Refused(format!(
            "the new password is {len} bytes but bcrypt uses at most {MAX_PASSWORD_BYTES}: lower the profile's password.length"
        )));
    }
    Ok(())
}

fn unknown_user(path: &Path, user: &str) -> RotatorError {
    RotatorError::Permanent(format!("user {user:?} not found in {}", path.display()))
}

fn read(path: &Path) -> RotatorResult<String> {
    fs::read_to_string(path).map_err(|e| io_error("reading", path, e))
}

/// A missing file or a refused access needs an operator; anything else may pass.
fn io_error(action: &str, path: &Path, e: io::Error) -> RotatorError {
    let message = format!("{action} {}: {e}", path.display());
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidData => {
            RotatorError::Permanent(message)
        }
        _ => RotatorError::Transient(message),
    }
}

/// Replaces `path` with `contents` so a reader sees the old file or the new one, never
/// a mix, and a crash leaves one of the two on disk.
fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    // Follow a symlink: replace the file it points to, keep the link.
    let (target, existing) = match fs::canonicalize(path) {
        Ok(target) => {
            let meta = fs::metadata(&target)?;
            (target, Some(meta))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (path.to_path_buf(), None),
        Err(e) => return Err(e),
    };
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.kvr-{:016x}.tmp", rand::random::<u64>()));

    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Private from the first byte; the original mode is applied below.
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    let result = (|| {
        #[cfg(unix)]
        if let Some(meta) = &existing {
            use std::os::unix::fs::{fchown, MetadataExt, PermissionsExt};
            let mine = file.metadata()?;
            if (mine.uid(), mine.gid()) != (meta.uid(), meta.gid()) {
                // The web server must still be able to read it; fail rather than
                // leave a file it cannot open.
                fchown(&file, Some(meta.uid()), Some(meta.gid())).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot keep owner {}:{} ({e})", meta.uid(), meta.gid()))
                })?;
            }
            file.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o777))?;
        }
        #[cfg(not(unix))]
        let _ = &existing;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, &target)?;
        // The rename itself is durable only once the directory is.
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let cfg: HtpasswdConfig = serde_json::from_str(r#"{"path": "/x/htpasswd"}"#).unwrap();
        assert_eq!(cfg, HtpasswdConfig::new("/x/htpasswd"));
        assert_eq!(cfg.bcrypt_cost, 10);
        assert!(!cfg.allow_admin_reset);
        for (json, text) in [
            (r#"{"path": "p", "bcrypt_cost": 3}"#, "bcrypt_cost = 3 is out of range"),
            (r#"{"path": "p", "bcrypt_cost": 32}"#, "between 4 and 31"),
            (r#"{"path": "p", "cost": 5}"#, "unknown field `cost`"),
        ] {
            let e = serde_json::from_str::<HtpasswdConfig>(json).unwrap_err().to_string();
            assert!(e.contains(text), "{e}");
        }
        let cfg: HtpasswdConfig =
            serde_json::from_str(r#"{"path": "p", "bcrypt_cost": 4, "allow_admin_reset": true}"#).unwrap();
        assert_eq!((cfg.bcrypt_cost, cfg.allow_admin_reset), (4, true));
    }

    #[test]
    fn find_entry_skips_comments_and_takes_the_first_match() {
        let text = "# alice:commented\r\nbob:$2y$b\r\n\nalice:$2y$first\nalice:$2y$second";
        let e = find_entry(text, "alice").unwrap();
        assert_eq!(e.value, "$2y$first");
        assert_eq!(&text[e.hash.clone()], "$2y$first");
        let e = find_entry(text, "bob").unwrap();
        assert_eq!(&text[e.hash], "$2y$b");
        assert!(find_entry(text, "ali").is_none());
        assert!(find_entry(text, "# alice").is_none());
    }

    #[test]
    fn bad_user_names_are_refused() {
        for name in ["", "a:b", "a\nb", "#x"] {
            assert!(check_user_name(name).is_err(), "{name:?}");
        }
        check_user_name("alice@example.com").unwrap();
    }

    #[test]
    fn policies_longer_than_bcrypt_takes_are_refused() {
        check_policy(&PasswordPolicy::default()).unwrap();
        check_policy(&PasswordPolicy { length: 71, ..PasswordPolicy::default() }).unwrap();
        let err = check_policy(&PasswordPolicy { length: 72, ..PasswordPolicy::default() }).unwrap_err();
        assert!(err.to_string().contains("password.length = 72"), "{err}");
    }

    #[test]
    fn long_passwords_are_refused_not_truncated() {
        check_new_password(&SecretString::from("x".repeat(71))).unwrap();
        let err = check_new_password(&SecretString::from("x".repeat(72))).unwrap_err();
        assert!(err.to_string().contains("at most 71"), "{err}");
        assert!(!err.to_string().contains(&"x".repeat(72)));
    }
}
