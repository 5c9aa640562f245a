//! The operator's commands against real services: `kv-rotator check` (a good
//! configuration passes and changes nothing; a wrong admin password, a closed port, a
//! target that accepts any password and a bad key each fail, naming the profile or the
//! key), `kv-rotator events send` (to a running `serve`'s webhook: the right key gets a
//! rotation, a wrong one the webhook's 401) and `kv-rotator completions`.

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::devsite::DevSite;
use common::pg::{self, Roles};
use common::proc::Proc;
use kv_rotator_keyvault::{NewSecretVersion, SecretProperties};
use kv_rotator_rotators::PasswordPolicy;
use secrecy::{ExposeSecret, SecretString};
use sha2::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");
const TOY_USER: &str = "toy-user";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins").canonicalize().unwrap()
}

fn text(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into(), String::from_utf8_lossy(&output.stderr).into())
}

/// The line of `check`'s text output for `check` (e.g. `targets.pg admin`).
fn check_line<'a>(stdout: &'a str, check: &str) -> &'a str {
    let needle = format!(" {check}: ");
    stdout.lines().find(|l| l.contains(&needle)).unwrap_or_else(|| panic!("no line for {check}:\n{stdout}"))
}

/// A dev vault with an htpasswd target, PostgreSQL roles (an admin and a user) and an
/// exec plugin target (the example toy file), each with a managed secret.
struct Site {
    dev: DevSite,
    /// Exec plugins and their files live here: the plugin check refuses world-writable
    /// directories such as /tmp.
    plugins: tempfile::TempDir,
    roles: Roles,
    good_toml: String,
}

impl Site {
    async fn new() -> Site {
        let dev = DevSite::start().await;
        let plugins = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        dev.user("alpha-password", "alpha").await;
        let roles = Roles::create("kvr_check", 2).await;
        let (admin, admin_password) = &roles.0[0];
        let (user, user_password) = &roles.0[1];
        put(&dev, "pg-admin", admin_password, &[]).await;
        dev.managed_secret("pg-user-password", "pg", user, user_password).await;
        let toy = plugins.path().join("toy.txt");
        let toy_password = PasswordPolicy::default().generate();
        let digest = hex::encode(sha2::Sha256::digest(toy_password.expose_secret().as_bytes()));
        std::fs::write(&toy, format!("{TOY_USER} {digest}\n")).unwrap();
        dev.managed_secret("toy-password", "toy", TOY_USER, &toy_password).await;
        let good_toml = format!(
            "{}{}[targets.pg]\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nport = 5432\nsslmode = \"disable\"\n\
             accounts = [\"kvr_check_*\"]\nadmin = {{ username = \"{admin}\", secret = \"pg-admin\" }}\n\
             [targets.toy]\nkind = \"exec\"\ncommand = \"{}\"\naccounts = [\"*\"]\nsettings = {{ path = \"{}\" }}\n",
            dev.vault_toml(),
            dev.htpasswd_target_toml(),
            examples().join("toy_file.sh").display(),
            toy.display()
        );
        Site { dev, plugins, roles, good_toml }
    }

    fn config(&self, extra: &str) -> PathBuf {
        let path = self.dev.dir.path().join("kv-rotator.toml");
        std::fs::write(&path, format!("{}{extra}", self.good_toml)).unwrap();
        path
    }

    /// An exec plugin that describes itself and accepts every password.
    fn accept_all_plugin(&self) -> PathBuf {
        let path = self.plugins.path().join("accept-all.sh");
        std::fs::write(
            &path,
            "#!/bin/sh\nreq=$(cat)\ncase \"$req\" in\n  *'\"operation\":\"describe\"'*) \
             echo '{\"protocol\":1,\"outcome\":\"described\",\"strategies\":[\"single-user\"]}' ;;\n  \
             *) echo '{\"protocol\":1,\"outcome\":\"accepted\"}' ;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn check(&self, config: &Path, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("KV_ROTATOR_CONFIG")
            .env_remove("KVR_CHECK_UNSET_KEY")
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.success(), stdout, stderr)
    }

    /// Every secret's every version, and the htpasswd and toy files.
    async fn state(&self) -> (BTreeMap<String, Vec<SecretProperties>>, Vec<u8>, Vec<u8>) {
        let read = |p: PathBuf| std::fs::read(p).unwrap();
        (self.dev.vault_state().await, read(self.dev.htpasswd.clone()), read(self.plugins.path().join("toy.txt")))
    }
}

async fn put(dev: &DevSite, name: &str, value: &SecretString, tags: &[(&str, &str)]) {
    let new = NewSecretVersion {
        value: value.clone(),
        tags: tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        content_type: None,
        expires: None,
        not_before: None,
    };
    dev.store.set_secret(name, new).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_a_good_configuration_and_changes_nothing() {
    let site = Site::new().await;
    let config = site.config("");
    let before = site.state().await;

    let (ok, stdout, stderr) = site.check(&config, &[]);
    assert!(ok, "{stdout}\n{stderr}");
    for (check, expected) in [
        ("config", "ok "),
        ("webhook.auth", "skipped "),
        ("alerts", "skipped "),
        ("notifications", "skipped "),
        ("vault", "ok "),
        ("targets.site setup", "ok "),
        ("targets.site admin", "skipped "),
        ("targets.site canary", "ok "),
        ("targets.pg admin", "ok "),
        ("targets.pg canary", "ok "),
        ("targets.toy setup", "ok "),
        ("targets.toy admin", "skipped "),
        ("targets.toy canary", "ok "),
    ] {
        let line = check_line(&stdout, check);
        assert!(line.starts_with(expected), "{check}: {line:?}");
    }
    assert!(check_line(&stdout, "targets.site canary").contains("account \"alpha\" was refused"), "{stdout}");
    assert!(check_line(&stdout, "targets.pg admin").contains(&format!("{:?} logs in", site.roles.0[0].0)));
    assert!(check_line(&stdout, "targets.toy setup").contains("describes itself: protocol 1"), "{stdout}");
    assert!(check_line(&stdout, "vault").contains("3 managed"), "{stdout}");

    let (ok, stdout, stderr) = site.check(&config, &["--json"]);
    assert!(ok, "{stdout}\n{stderr}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 13, "{stdout}");
    assert!(lines.iter().all(|l| l["status"] == "ok" || l["status"] == "skipped"), "{stdout}");
    assert!(lines.iter().any(|l| l["check"] == "targets.pg canary" && l["status"] == "ok"), "{stdout}");

    // Nothing changed: no vault write, the files as they were, every password still works.
    assert_eq!(before, site.state().await, "check wrote to the vault or a target");
    for (role, password) in &site.roles.0 {
        assert!(pg::logs_in(role, password).await, "{role} no longer logs in");
    }
    site.dev.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_naming_the_profile_and_the_reason() {
    let site = Site::new().await;
    let (_closed_socket, closed) = common::refused_port();
    let accept_all = site.accept_all_plugin();
    // A plugin profile that accepts anything; a hostile account (whoever writes tags writes
    // what check prints: escaped); a profile the configuration does not have.
    for (secret, profile, account) in [
        ("anyone-password", "yes", "anyone"),
        ("hostile-password", "hostile", "x\u{1b}]0;pwned\u{7}\u{1b}[2J"),
        ("ghost-password", "nowhere", "g"),
    ] {
        let tags = [("rotator", profile), ("CredentialId", account)];
        put(&site.dev, secret, &PasswordPolicy::default().generate(), &tags).await;
    }
    // A rotation window tag that is not a window (and carries terminal escapes).
    let tags = [("rotator", "elsewhere"), ("CredentialId", "w"), ("RotationWindow", "Mon-Fri 25:00 \u{1b}[2J")];
    put(&site.dev, "windowed-password", &PasswordPolicy::default().generate(), &tags).await;
    let config = site.config(&format!(
        "[webhook.auth]\nmode = \"shared-key\"\nkey = {{ env = \"KVR_CHECK_UNSET_KEY\" }}\n\
         [alerts]\nwebhook_url = {{ file = \"/nonexistent/kvr-alert-url\" }}\n\
         [notifications]\nsink = {{ kind = \"webhook\", url = {{ env = \"KVR_CHECK_UNSET_KEY\" }} }}\n\
         [targets.hostile]\nkind = \"htpasswd\"\npath = \"{}\"\naccounts = [\"*\"]\n\
         [targets.down]\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nport = {closed}\nsslmode = \"disable\"\n\
         accounts = [\"*\"]\nadmin = {{ username = \"{}\", secret = \"pg-admin\" }}\n\
         [targets.yes]\nkind = \"exec\"\ncommand = \"{}\"\naccounts = [\"*\"]\n",
        site.dev.htpasswd.display(),
        site.roles.0[0].0,
        accept_all.display()
    ));
    let before = site.state().await;

    let (ok, stdout, stderr) = site.check(&config, &[]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("checks failed"), "{stderr}");
    let down = check_line(&stdout, "targets.down admin");
    assert!(down.starts_with("FAILED ") && down.contains(&format!("127.0.0.1:{closed}")), "{down}");
    let yes = check_line(&stdout, "targets.yes canary");
    assert!(
        yes.starts_with("FAILED ")
            && yes.contains("target yes accepted a random wrong password for account \"anyone\""),
        "{yes}"
    );
    let secrets = check_line(&stdout, "secrets");
    assert!(secrets.starts_with("FAILED ") && secrets.contains("\"nowhere\" (1)"), "{secrets}");
    let windows = check_line(&stdout, "secret windows");
    assert!(
        windows.starts_with("FAILED ") && windows.contains("windowed-password: tag \"RotationWindow\" is not used"),
        "{windows}"
    );
    let auth = check_line(&stdout, "webhook.auth");
    assert!(auth.starts_with("FAILED ") && auth.contains("KVR_CHECK_UNSET_KEY is not set"), "{auth}");
    let alerts = check_line(&stdout, "alerts");
    assert!(alerts.starts_with("FAILED ") && alerts.contains("alerts.webhook_url: cannot read"), "{alerts}");
    let notifications = check_line(&stdout, "notifications");
    assert!(
        notifications.starts_with("FAILED ") && notifications.contains("notifications.sink.url: environment variable"),
        "{notifications}"
    );
    let hostile = check_line(&stdout, "targets.hostile canary");
    assert!(hostile.starts_with("FAILED ") && hostile.contains("x\\u{1b}]0;pwned"), "{hostile}");
    assert!(!stdout.contains('\u{1b}') && !stderr.contains('\u{1b}'), "vault text is escaped:\n{stdout}");
    // The good profiles still pass beside them.
    assert!(check_line(&stdout, "targets.pg admin").starts_with("ok "), "{stdout}");
    assert!(check_line(&stdout, "targets.yes setup").starts_with("ok "), "{stdout}");

    // A wrong admin password in the vault.
    put(&site.dev, "pg-admin", &PasswordPolicy::default().generate(), &[]).await;
    let (ok, stdout, _) = site.check(&config, &["--json"]);
    assert!(!ok, "{stdout}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let pg_admin = lines.iter().find(|l| l["check"] == "targets.pg admin").expect(&stdout);
    assert_eq!(pg_admin["status"], "failed", "{pg_admin}");
    assert!(pg_admin["reason"].as_str().unwrap().contains("refused the password of the admin"), "{pg_admin}");
    let pg_canary = lines.iter().find(|l| l["check"] == "targets.pg canary").expect(&stdout);
    assert_eq!(pg_canary["status"], "ok", "the user's canary does not need the admin: {pg_canary}");
    let mut after = site.state().await;
    after.0.remove("pg-admin");
    let mut expected = before;
    expected.0.remove("pg-admin");
    assert_eq!(expected, after, "check wrote to the vault or a target");
    assert!(pg::logs_in(&site.roles.0[1].0, &site.roles.0[1].1).await);

    // A configuration error names the key, and nothing else is tried.
    let bad = site.dev.dir.path().join("bad.toml");
    std::fs::write(&bad, format!("{}colour = \"blue\"\n", site.good_toml)).unwrap();
    let (ok, stdout, _) = site.check(&bad, &[]);
    assert!(!ok, "{stdout}");
    let config_line = check_line(&stdout, "config");
    assert!(config_line.starts_with("FAILED ") && config_line.contains("colour"), "{config_line}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    site.dev.vault.shutdown().await;
}

/// A `serve` on the dev vault whose webhook takes a shared key, and two due secrets.
struct Hook {
    dev: DevSite,
    proc: Proc,
    url: String,
}

const HOOK_KEY: &str = "ops-cli-test-key-0123456789";

impl Hook {
    async fn start() -> Hook {
        let dev = DevSite::start().await;
        for (secret, user) in [("alpha-password", "alpha"), ("beta-password", "beta"), ("gamma-password", "gamma")] {
            dev.user(secret, user).await;
        }
        let config = dev.dir.path().join("kv-rotator.toml");
        std::fs::write(
            &config,
            format!(
                // No sweeper: only the events sent here may rotate (every secret is due).
                "{}[sweeper]\nenabled = false\n[webhook]\nlisten = \"127.0.0.1:0\"\n\
                 auth = {{ mode = \"shared-key\", key = {{ env = \"KVR_TEST_HOOK_KEY\" }} }}\n{}",
                dev.vault_toml(),
                dev.htpasswd_target_toml()
            ),
        )
        .unwrap();
        let mut proc = Proc::spawn(
            Command::new(BIN)
                .args(["serve", "--config"])
                .arg(&config)
                .env("KVR_TEST_HOOK_KEY", HOOK_KEY)
                .env("RUST_LOG", "info")
                .env("KVR_LEASE_SETTLE_MS", "0"),
        );
        let port = proc.logged_addr("webhook_addr").await.port();
        proc.wait_healthy(port).await;
        Hook { dev, proc, url: format!("http://127.0.0.1:{port}/api/eventgrid") }
    }

    fn send(&self, secret: &str, args: &[&str], key: Option<&str>) -> (bool, String, String) {
        let mut command = Command::new(BIN);
        command
            .args(["events", "send", "--url", &self.url, "--vault", self.dev.vault.endpoint().as_str(), "--secret"])
            .arg(secret)
            .args(args);
        if let Some(key) = key {
            command.args(["--shared-key-env", "KVR_TEST_SEND_KEY"]).env("KVR_TEST_SEND_KEY", key);
        }
        let out = command.output().unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.success(), stdout, stderr)
    }

    async fn versions(&self, secret: &str) -> usize {
        self.dev.store.list_versions(secret).await.unwrap().len()
    }

    /// Waits (at most 60 s) for `secret`'s second version; its password logs in.
    async fn rotated(&mut self, secret: &str, user: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.versions(secret).await < 2 {
            self.proc.assert_running();
            assert!(Instant::now() < deadline, "{secret} not rotated within 60 s:\n{}", self.proc.output());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let latest = self.dev.store.get_latest(secret).await.unwrap();
        assert!(latest.properties.tags.contains_key("rotation-id"), "{:?}", latest.properties.tags);
        assert!(self.dev.logs_in(user, &latest.value).await, "the new password of {user} does not log in");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_send_reaches_the_webhook_with_its_key_and_shows_a_refusal() {
    let mut hook = Hook::start().await;

    // A wrong key: the webhook's 401, shown; non-zero exit; nothing queued.
    let (ok, stdout, stderr) = hook.send("gamma-password", &[], Some("not-the-key-but-long-enough"));
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("401 Unauthorized") && stdout.contains("invalid credential"), "{stdout}");
    assert!(stderr.contains("answered 401"), "{stderr}");
    // No key at all.
    let (ok, stdout, _) = hook.send("gamma-password", &["--schema", "cloudevents"], None);
    assert!(!ok && stdout.contains("401 Unauthorized"), "{stdout}");

    // Event Grid schema, the key in its header: queued and rotated.
    let (ok, stdout, stderr) = hook.send("alpha-password", &[], Some(HOOK_KEY));
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("Microsoft.KeyVault.SecretNearExpiry") && stdout.contains("200 OK"), "{stdout}");
    assert!(stdout.contains("1 rotation request(s) queued"), "{stdout}");
    hook.rotated("alpha-password", "alpha").await;

    // CloudEvents, the key in the query string, a named version.
    let version = hook.dev.store.get_latest("beta-password").await.unwrap().version;
    let args = ["--schema", "cloudevents", "--event-type", "expired", "--key-query-parameter", "--version", &version];
    let (ok, stdout, stderr) = hook.send("beta-password", &args, Some(HOOK_KEY));
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("Microsoft.KeyVault.SecretExpired") && stdout.contains("queued"), "{stdout}");
    hook.rotated("beta-password", "beta").await;

    assert_eq!(hook.versions("gamma-password").await, 1, "a refused delivery rotated nothing");
    let output = hook.proc.output();
    assert!(!output.contains(HOOK_KEY), "the key reached the log");
    hook.dev.vault.shutdown().await;
}

#[test]
fn completions_cover_the_commands_and_bash_accepts_the_script() {
    let out = Command::new(BIN).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for command in ["rotate", "status", "check", "events", "completions", "--dry-run", "--shared-key-env"] {
        assert!(script.contains(command), "{command} missing from the bash completions");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv-rotator.bash");
    std::fs::write(&path, &script).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(syntax.status.success(), "bash -n: {}", String::from_utf8_lossy(&syntax.stderr));
    for shell in ["zsh", "fish", "powershell"] {
        let out = Command::new(BIN).args(["completions", shell]).output().unwrap();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("check"), "{shell}");
    }
    let out = Command::new(BIN).args(["completions", "tcsh"]).output().unwrap();
    assert!(!out.status.success(), "an unknown shell is refused");
}
