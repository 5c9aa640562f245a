//! The htpasswd rotator against real files in a temporary directory.
#![cfg(feature = "htpasswd")]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use kv_rotator_rotators::htpasswd::{add_user, HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::testkit::{contains_secret, run_conformance, ConformanceFixture};
use kv_rotator_rotators::{
    Credential, PasswordPolicy, Rotator, RotatorError, SetPasswordOutcome, SetPasswordRequest, VerifyRequest,
    VerifyResponse,
};
use secrecy::SecretString;
use tempfile::TempDir;

/// Low cost keeps the tests fast; the code path is the same.
const COST: u32 = 4;

fn policy() -> PasswordPolicy {
    PasswordPolicy::default()
}

fn rotator(path: &Path, allow_admin_reset: bool) -> HtpasswdRotator {
    HtpasswdRotator::new(HtpasswdConfig { path: path.to_owned(), bcrypt_cost: COST, allow_admin_reset }, policy())
}

/// A file with a comment, a blank line and an unrelated user, as a real one would have.
fn seeded_file(dir: &TempDir) -> PathBuf {
    let path = dir.path().join("htpasswd");
    fs::write(&path, "# managed by kv-rotator tests\n\nother:$apr1$abcdefgh$0123456789abcdefghijkl\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

struct FileFixture {
    path: PathBuf,
    admin: Option<Credential>,
    next: usize,
}

#[async_trait]
impl ConformanceFixture for FileFixture {
    async fn create_user(&mut self, password: &SecretString) -> Result<String, String> {
        self.next += 1;
        let user = format!("user{}", self.next);
        add_user(&self.path, &user, password, COST).map_err(|e| e.to_string())?;
        Ok(user)
    }

    fn admin(&self) -> Option<Credential> {
        self.admin.clone()
    }

    /// Write access to the file is the admin power: there is no admin password to get wrong.
    fn wrong_admin(&self, _wrong_password: SecretString) -> Option<Credential> {
        None
    }
}

#[tokio::test]
async fn htpasswd_passes_conformance_with_admin_reset() {
    let dir = TempDir::new().unwrap();
    let path = seeded_file(&dir);
    let admin = Credential::new("file-admin", policy().generate());
    let mut fixture = FileFixture { path: path.clone(), admin: Some(admin), next: 0 };
    let report =
        run_conformance(&rotator(&path, true), &mut fixture).await.unwrap_or_else(|e| panic!("conformance: {e}"));
    println!("{report}");
    assert_eq!(report.skipped.len(), 1, "only the wrong-admin check is skipped: {report}");
    assert!(fs::read_to_string(&path).unwrap().starts_with("# managed by kv-rotator tests\n\nother:$apr1$"));
}

#[tokio::test]
async fn htpasswd_passes_conformance_without_admin() {
    let dir = TempDir::new().unwrap();
    let path = seeded_file(&dir);
    let mut fixture = FileFixture { path: path.clone(), admin: None, next: 0 };
    let report =
        run_conformance(&rotator(&path, false), &mut fixture).await.unwrap_or_else(|e| panic!("conformance: {e}"));
    println!("{report}");
}

#[tokio::test]
async fn admin_credential_is_ignored_unless_allowed() {
    let dir = TempDir::new().unwrap();
    let path = seeded_file(&dir);
    let p0 = policy().generate();
    add_user(&path, "alice", &p0, COST).unwrap();
    let admin = Credential::new("file-admin", policy().generate());
    let req = SetPasswordRequest::new("alice", policy().generate(), policy().generate()).with_admin(admin);
    let err = rotator(&path, false).set_password(req.clone()).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("allow_admin_reset = false"), "{err}");
    let verify = VerifyRequest::new("alice", p0);
    assert_eq!(rotator(&path, false).verify(verify.clone()).await.unwrap(), VerifyResponse::Accepted);

    let resp = rotator(&path, true).set_password(req).await.unwrap();
    assert_eq!(resp.outcome, SetPasswordOutcome::ChangedWithAdmin);
    assert_eq!(rotator(&path, true).verify(verify).await.unwrap(), VerifyResponse::Rejected);
}

#[tokio::test]
async fn rewrite_keeps_other_bytes_and_mode_and_leaves_no_temp_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("htpasswd");
    let p0 = policy().generate();
    let old_hash = bcrypt::hash_with_result(secrecy::ExposeSecret::expose_secret(&p0), COST)
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    // CRLF lines, a comment that looks like an entry, another format, no final newline.
    let before = format!("# alice:commented out\r\nbob:$apr1$xyz$abc\r\n\r\nalice:{old_hash}\r\ncarol:{{SHA}}qUqP5cyxm6YcTAhz05Hph5gvu9M=");
    fs::write(&path, &before).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();

    let p1 = policy().generate();
    let resp = rotator(&path, false).set_password(SetPasswordRequest::new("alice", p1.clone(), p0)).await.unwrap();
    assert_eq!(resp.outcome, SetPasswordOutcome::ChangedWithCurrent);

    let after = fs::read_to_string(&path).unwrap();
    let start = before.find(&old_hash).unwrap();
    assert_eq!(after[..start], before[..start], "bytes before the entry changed");
    let new_hash = &after[start..after[start..].find("\r\n").unwrap() + start];
    assert!(new_hash.starts_with(&format!("$2y${COST:02}$")), "{new_hash}");
    assert_eq!(after[start + new_hash.len()..], before[start + old_hash.len()..], "bytes after the entry changed");
    assert!(!contains_secret(&after, &p1));
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("htpasswd")], "temporary file left behind");
}

#[tokio::test]
async fn symlinked_path_replaces_the_target_and_keeps_the_link() {
    let dir = TempDir::new().unwrap();
    let real = seeded_file(&dir);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let p0 = policy().generate();
    add_user(&link, "alice", &p0, COST).unwrap();
    let p1 = policy().generate();
    rotator(&link, false).set_password(SetPasswordRequest::new("alice", p1.clone(), p0)).await.unwrap();
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(rotator(&real, false).verify(VerifyRequest::new("alice", p1)).await.unwrap(), VerifyResponse::Accepted);
}

#[tokio::test]
async fn unknown_user_missing_file_and_foreign_hash_are_permanent() {
    let dir = TempDir::new().unwrap();
    let path = seeded_file(&dir);
    let r = rotator(&path, true);
    let set = |user: &str| {
        SetPasswordRequest::new(user, policy().generate(), policy().generate())
            .with_admin(Credential::new("a", policy().generate()))
    };
    let verify = |user: &str| VerifyRequest::new(user, policy().generate());

    let err = r.set_password(set("mallory")).await.unwrap_err();
    assert!(matches!(&err, RotatorError::Permanent(m) if m.contains("\"mallory\" not found")), "{err:?}");
    let err = r.verify(verify("mallory")).await.unwrap_err();
    assert!(matches!(&err, RotatorError::Permanent(m) if m.contains("not found")), "{err:?}");

    let err = r.verify(verify("other")).await.unwrap_err();
    assert!(matches!(&err, RotatorError::Permanent(m) if m.contains("not a bcrypt hash")), "{err:?}");

    let missing = rotator(&dir.path().join("absent"), true);
    let err = missing.verify(verify("alice")).await.unwrap_err();
    assert!(matches!(&err, RotatorError::Permanent(m) if m.contains("absent")), "{err:?}");
}

#[tokio::test]
async fn pending_longer_than_bcrypt_takes_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = seeded_file(&dir);
    let p0 = policy().generate();
    add_user(&path, "alice", &p0, COST).unwrap();
    let long = PasswordPolicy { length: 80, ..policy() }.generate();
    let err = rotator(&path, false).set_password(SetPasswordRequest::new("alice", long.clone(), p0)).await.unwrap_err();
    // Refused, not merely permanent: the engine may journal another password in its place.
    assert!(matches!(&err, RotatorError::Refused(m) if m.contains("at most 71")), "{err:?}");
    assert!(!contains_secret(&format!("{err:?}"), &long));
}

#[test]
fn add_user_creates_a_private_file_and_replaces_existing_entries() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("new-htpasswd");
    let (p0, p1) = (policy().generate(), policy().generate());
    add_user(&path, "alice", &p0, COST).unwrap();
    add_user(&path, "bob", &p0, COST).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    add_user(&path, "alice", &p1, COST).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().filter(|l| l.starts_with("alice:")).count(), 1, "{text}");
    assert_eq!(text.lines().count(), 2);
    let hash = text.lines().find_map(|l| l.strip_prefix("alice:")).unwrap();
    assert!(bcrypt::verify(secrecy::ExposeSecret::expose_secret(&p1), hash).unwrap());
    assert!(!bcrypt::verify(secrecy::ExposeSecret::expose_secret(&p0), hash).unwrap());
    let err = add_user(&path, "alice", &p1, 3).unwrap_err();
    assert!(err.to_string().contains("bcrypt_cost = 3"), "{err}");
}
