//! The custom kind passes the same conformance checks as the built-in ones, and the
//! binary built here knows it: `kv-rotator plugin test` runs those checks through the
//! command line, with a configuration that names `kind = "legacy-users"`.

use std::path::{Path, PathBuf};
use std::process::Command;

use async_trait::async_trait;
use kv_rotator_custom_example::legacy_users::{LegacyUsersConfig, LegacyUsersRotator};
use kv_rotator_rotators::testkit::{run_conformance, ConformanceFixture};
use kv_rotator_rotators::{Credential, PasswordPolicy};
use secrecy::SecretString;

struct Fixture {
    path: PathBuf,
    next: usize,
    admin: SecretString,
}

#[async_trait]
impl ConformanceFixture for Fixture {
    async fn create_user(&mut self, password: &SecretString) -> Result<String, String> {
        self.next += 1;
        let user = format!("report-bot-{}", self.next);
        LegacyUsersRotator::put_user(&self.path, &user, password, false).map_err(|e| e.to_string())?;
        Ok(user)
    }

    fn admin(&self) -> Option<Credential> {
        Some(Credential::new("operator", self.admin.clone()))
    }
}

fn users_file(dir: &Path) -> (PathBuf, SecretString) {
    let path = dir.join("users.json");
    let admin = PasswordPolicy::default().generate();
    LegacyUsersRotator::put_user(&path, "operator", &admin, true).unwrap();
    (path, admin)
}

#[tokio::test]
async fn the_custom_rotator_passes_the_conformance_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (path, admin) = users_file(dir.path());
    let rotator = LegacyUsersRotator::new(LegacyUsersConfig { users_file: path.clone() }, PasswordPolicy::default());
    let report = run_conformance(&rotator, &mut Fixture { path, next: 0, admin }).await.unwrap();
    assert!(report.skipped.is_empty(), "{report}");
}

#[test]
fn the_binary_knows_the_kind_and_runs_its_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = users_file(dir.path());
    let config = dir.path().join("kv-rotator.toml");
    std::fs::write(
        &config,
        format!(
            "[vault]\nurl = \"https://unused.vault.azure.net/\"\n[targets.reports]\nkind = \"legacy-users\"\n\
             users_file = \"{}\"\naccounts = [\"report-*\"]\n",
            path.display()
        ),
    )
    .unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixture.py");
    let output = Command::new(env!("CARGO_BIN_EXE_kv-rotator-custom"))
        .args(["plugin", "test", "--config"])
        .arg(&config)
        .arg("--fixture")
        .arg(&fixture)
        .arg("--fixture-arg")
        .arg(&path)
        .arg("reports")
        .env_remove("KV_ROTATOR_CONFIG")
        .output()
        .unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{out}");
    assert!(out.contains("kind \"legacy-users\"") && out.contains("ok       only the admin login works"), "{out}");

    // A typo in the kind's own keys is named by the stock loader.
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace("users_file", "user_file")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kv-rotator-custom"))
        .args(["plugin", "test", "--config"])
        .arg(&config)
        .args(["--fixture", "/bin/false", "reports"])
        .env_remove("KV_ROTATOR_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && err.contains("unknown field `user_file`"), "{err}");
}
