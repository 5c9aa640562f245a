//! The emergency run: `kv-rotator rotate --all --concurrency 8` through a running `serve`'s
//! admin API over 200 managed secrets on every target kind there is — PostgreSQL,
//! MariaDB, Redis, OpenLDAP, htpasswd and RabbitMQ (the exec plugin) — with the engine's
//! queue smaller than the job. Every new value is checked against its target by a client
//! of its own and the old one is refused; the JSON lines and the summary are checked, and
//! the job never had more than 8 of its secrets rotating at once.
//!
//! Needs every setup script that `scripts/test.sh` runs.

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;
/// The end-to-end suites' clients of each target: one copy of them.
#[path = "../../tests/tests/common/mod.rs"]
mod e2e;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::devsite::DevSite;
use common::proc::Proc;
use e2e::{ldap, rabbitmq, redis};
use kv_rotator_rotators::PasswordPolicy;
use mysql_async::prelude::Queryable;
use secrecy::{ExposeSecret, SecretString};

const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");
const TOKEN: &str = "emergency-admin-token-0123456789abcdef";
/// Secrets per target profile: 200 in all.
const COUNTS: [(&str, usize); 6] = [("pg", 50), ("db", 40), ("cache", 30), ("directory", 20), ("site", 50), ("mq", 10)];
const JOB_CONCURRENCY: usize = 8;

/// One managed account: its profile, its account name and its first password.
struct Account {
    profile: &'static str,
    name: String,
    first: SecretString,
}

/// Whether `password` logs in as `account` on its target, through a client of the target's own.
async fn logs_in(site: &DevSite, account: &Account, password: &SecretString) -> bool {
    let name = account.name.as_str();
    match account.profile {
        "pg" => common::pg::logs_in(name, password).await,
        "db" => e2e::mariadb_runs(name, password, "SELECT 1").await,
        "cache" => redis::redis_logs_in(name, password).await,
        "directory" => ldap::binds(name, password).await,
        "site" => site.logs_in(name, password).await,
        "mq" => rabbitmq::amqp_login(name, password).await.is_ok(),
        other => unreachable!("{other}"),
    }
}

/// The accounts of every kind, made on their servers with random first passwords, and
/// the admins' passwords (by vault secret name) that some profiles need.
async fn make_accounts(site: &DevSite, run: &str) -> (Vec<Account>, Vec<(&'static str, SecretString)>) {
    let policy = PasswordPolicy::default();
    let mut accounts = Vec::new();
    let mut root = e2e::mariadb_root().await;
    let mut redis_conn = redis::redis_admin_connection().await;
    for (profile, count) in COUNTS {
        for i in 0..count {
            let (name, first) = (format!("kvr_em_{run}_{profile}_{i}"), policy.generate());
            match profile {
                "pg" => {
                    let sql =
                        format!("CREATE ROLE {name} LOGIN IN ROLE kvr_scram PASSWORD '{}'", first.expose_secret());
                    common::pg::superuser().await.batch_execute(&sql).await.expect("create role");
                }
                "db" => {
                    let sql = format!("CREATE USER '{name}'@'%' IDENTIFIED BY '{}'", first.expose_secret());
                    root.query_drop(sql).await.expect("create MariaDB user");
                }
                "cache" => {
                    let hash = format!("#{}", redis::sha256_hex(&first));
                    redis::redis_acl(&mut redis_conn, &["SETUSER", &name, "reset", "on", &hash, "~app:*", "+get"])
                        .await;
                }
                "directory" => ldap::add_entry(&name, &first).await,
                "site" => {
                    kv_rotator_rotators::htpasswd::add_user(&site.htpasswd, &name, &first, 4).unwrap();
                }
                "mq" => {
                    rabbitmq::create_user(&name, &first, "").await;
                    let permissions = serde_json::json!({ "configure": "^kvr-", "write": "^kvr-", "read": "^kvr-" });
                    let path = format!("permissions/%2F/{name}");
                    assert_eq!(rabbitmq::api(reqwest::Method::PUT, &path, Some(permissions)).await, 201);
                }
                other => unreachable!("{other}"),
            }
            accounts.push(Account { profile, name, first });
        }
    }
    let (redis_admin, mq_admin, db_admin) = (policy.generate(), policy.generate(), policy.generate());
    // A MariaDB user may change its own password but not read its host entries: an admin does.
    let dba = format!("kvr_em_{run}_dba");
    root.query_drop(format!("CREATE USER '{dba}'@'%' IDENTIFIED BY '{}'", db_admin.expose_secret())).await.unwrap();
    root.query_drop(format!("GRANT CREATE USER ON *.* TO '{dba}'@'%'")).await.unwrap();
    for table in ["user", "global_priv"] {
        root.query_drop(format!("GRANT SELECT ON mysql.{table} TO '{dba}'@'%'")).await.unwrap();
    }
    let hash = format!("#{}", redis::sha256_hex(&redis_admin));
    redis::redis_acl(&mut redis_conn, &["SETUSER", &format!("kvr_em_{run}_redisadm"), "on", &hash, "+acl"]).await;
    rabbitmq::create_user(&format!("kvr_em_{run}_mqadm"), &mq_admin, "administrator").await;
    let admins = vec![
        ("em-redis-admin", redis_admin),
        ("em-mq-admin", mq_admin),
        ("em-db-admin", db_admin),
        ("em-ldap-admin", ldap::service_password()),
    ];
    (accounts, admins)
}

/// Removes every account `make_accounts` made.
async fn remove_accounts(accounts: &[Account], run: &str) {
    let mut root = e2e::mariadb_root().await;
    let mut redis_conn = redis::redis_admin_connection().await;
    let su = common::pg::superuser().await;
    for account in accounts {
        let name = account.name.as_str();
        match account.profile {
            "pg" => drop(su.batch_execute(&format!("DROP ROLE IF EXISTS {name}")).await),
            "db" => drop(root.query_drop(format!("DROP USER IF EXISTS '{name}'@'%'")).await),
            "cache" => redis::redis_acl(&mut redis_conn, &["DELUSER", name]).await,
            "directory" => ldap::delete_entry(name).await,
            "mq" => drop(rabbitmq::api(reqwest::Method::DELETE, &format!("users/{name}"), None).await),
            _ => {}
        }
    }
    redis::redis_acl(&mut redis_conn, &["DELUSER", &format!("kvr_em_{run}_redisadm")]).await;
    let _ = root.query_drop(format!("DROP USER IF EXISTS 'kvr_em_{run}_dba'@'%'")).await;
    rabbitmq::api(reqwest::Method::DELETE, &format!("users/kvr_em_{run}_mqadm"), None).await;
}

/// The configuration of `serve` and `rotate`: one profile per kind, the admin API with a
/// static token, and an engine whose queue (64) is smaller than the job.
fn config_text(site: &DevSite, run: &str, webhook: u16, admin: u16) -> String {
    let plugin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/rabbitmq.py");
    let ca = |var: &str, default: &str| e2e::test_ca(var, default);
    format!(
        r#"{vault}
[webhook]
listen = "127.0.0.1:{webhook}"
auth = {{ mode = "none" }}

[admin]
listen = "127.0.0.1:{admin}"
auth = {{ mode = "static-token", token = {{ env = "ADMIN_TOKEN" }} }}

[sweeper]
enabled = false

[engine]
concurrency = 16
queue_capacity = 64
initial_backoff_ms = 50
max_backoff_ms = 500

[targets.pg]
kind = "postgres"
host = "127.0.0.1"
sslmode = "verify-full"
channel_binding = "require"
sslrootcert = "{pg_ca}"
accounts = ["kvr_em_*"]

[targets.db]
kind = "mariadb"
host = "127.0.0.1"
tls = "verify-full"
tls_ca_file = "{db_ca}"
admin = {{ username = "kvr_em_{run}_dba", secret = "em-db-admin" }}
accounts = ["kvr_em_*"]

[targets.cache]
kind = "redis"
host = "127.0.0.1"
port = 6380
tls = "verify-full"
tls_ca_file = "{redis_ca}"
acl_save = "never"
admin = {{ username = "kvr_em_{run}_redisadm", secret = "em-redis-admin" }}
accounts = ["kvr_em_*"]

[targets.directory]
kind = "ldap"
url = "{ldap_url}"
tls_ca_file = "{ldap_ca}"
user_dn_template = "uid={{}},ou=people,{suffix}"
admin = {{ username = "{ldap_admin}", secret = "em-ldap-admin" }}
accounts = ["kvr_em_*"]

[targets.mq]
kind = "exec"
command = "{plugin}"
admin = {{ username = "kvr_em_{run}_mqadm", secret = "em-mq-admin" }}
accounts = ["kvr_em_*"]
[targets.mq.settings]
management_url = "{management}"
amqp_host = "{amqp_host}"
amqp_port = {amqp_port}

{htpasswd}"#,
        vault = site.vault_toml(),
        pg_ca = ca("KVR_TEST_PG_CA", "/var/lib/postgresql/kvr-test-tls/ca.pem"),
        db_ca = ca("KVR_TEST_MARIADB_CA", "/var/lib/mysql-kvr-test-tls/ca.pem"),
        redis_ca = ca("KVR_TEST_REDIS_CA", "/var/lib/redis/kvr-test-tls/ca.pem"),
        ldap_url = ldap::ldaps_url(),
        ldap_ca = ldap::ca(),
        suffix = ldap::suffix_dn(),
        ldap_admin = ldap::service_admin("em-ldap-admin").username,
        plugin = plugin.canonicalize().unwrap().display(),
        management = rabbitmq::MANAGEMENT,
        amqp_host = rabbitmq::AMQP.0,
        amqp_port = rabbitmq::AMQP.1,
        htpasswd = site.htpasswd_target_toml(),
    )
}

/// Follows job `id` on the admin API until it is done: the most of its secrets seen
/// running at once, and the job as it ended.
async fn watch_job(admin: u16, id: String) -> (usize, serde_json::Value) {
    let http = reqwest::Client::new();
    let mut most = 0;
    loop {
        let job: serde_json::Value = http
            .get(format!("http://127.0.0.1:{admin}/api/rotations/{id}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let running = job["secrets"].as_array().unwrap().iter().filter(|s| s["state"] == "running").count();
        most = most.max(running);
        if job["done"] == true {
            return (most, job);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_all_through_the_admin_api_rotates_200_secrets_on_every_kind_within_its_concurrency() {
    let site = DevSite::start().await;
    let run = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let (accounts, admins) = make_accounts(&site, &run).await;
    let mut first_versions = HashMap::new();
    for (i, account) in accounts.iter().enumerate() {
        let secret = format!("em-{}-{i}", account.profile);
        let version = site.managed_secret(&secret, account.profile, &account.name, &account.first).await;
        first_versions.insert(secret, (version, i));
    }
    for (secret, password) in &admins {
        let plain = kv_rotator_keyvault::NewSecretVersion {
            value: password.clone(),
            tags: BTreeMap::new(),
            content_type: None,
            expires: None,
            not_before: None,
        };
        site.store.set_secret(secret, plain).await.unwrap();
    }
    // Port 0: the OS picks the ports (none is bound, dropped and bound again), serve logs
    // them, and the file then names them for `rotate`, as an operator's would.
    let config = site.dir.path().join("kv-rotator.toml");
    std::fs::write(&config, config_text(&site, &run, 0, 0)).unwrap();
    let mut serve = Proc::spawn(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("ADMIN_TOKEN", TOKEN)
            .env("KVR_LEASE_SETTLE_MS", "0")
            .env_remove(common::proc::ADMIN_LISTEN_ENV),
    );
    let webhook = serve.logged_addr("webhook_addr").await.port();
    let admin = serve.logged_addr("admin_addr").await.port();
    std::fs::write(&config, config_text(&site, &run, webhook, admin)).unwrap();
    serve.wait_healthy(webhook).await;

    // Without a limit the job is more than the engine's queue holds: refused, nothing read.
    let refused = Command::new(BIN)
        .args(["rotate", "--all", "--reason", "INC-42 without a limit", "--config"])
        .arg(&config)
        .env("ADMIN_TOKEN", TOKEN)
        .env_remove(common::proc::ADMIN_LISTEN_ENV)
        .output()
        .unwrap();
    let refusal = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && refusal.contains("HTTP 413"), "{refusal}");
    assert!(refusal.contains("concurrency limit"), "the refusal says what to do: {refusal}");

    // The emergency run, its stdout a pipe: JSON lines. The job id is on stderr, for the watcher.
    let started = std::time::Instant::now();
    let mut rotate = Command::new(BIN)
        .args(["rotate", "--all", "--concurrency", &JOB_CONCURRENCY.to_string(), "--reason", "INC-42 host compromised"])
        .arg("--config")
        .arg(&config)
        .env("ADMIN_TOKEN", TOKEN)
        .env_remove(common::proc::ADMIN_LISTEN_ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr_lines = Arc::new(Mutex::new(Vec::new()));
    let (job_id_tx, job_id_rx) = tokio::sync::oneshot::channel();
    let reader = {
        let (stderr, lines) = (rotate.stderr.take().unwrap(), stderr_lines.clone());
        std::thread::spawn(move || {
            let mut job_id_tx = Some(job_id_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(id) = line.split("(job ").nth(1).and_then(|rest| rest.split(')').next()) {
                    if let Some(tx) = job_id_tx.take() {
                        let _ = tx.send(id.to_owned());
                    }
                }
                lines.lock().unwrap().push(line);
            }
        })
    };
    let id = tokio::time::timeout(Duration::from_secs(60), job_id_rx).await.expect("rotate names its job").unwrap();
    let (most_running, job) = watch_job(admin, id).await;
    let out = tokio::task::spawn_blocking(move || rotate.wait_with_output()).await.unwrap().unwrap();
    reader.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = stderr_lines.lock().unwrap().join("\n");
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", serve.output());

    eprintln!(
        "emergency run: {} secrets rotated through the admin API in {:.1} s, at most {most_running} at once \
         (limit {JOB_CONCURRENCY})",
        job["secrets"].as_array().map_or(0, Vec::len),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(job["concurrency"], JOB_CONCURRENCY, "{job}");
    assert!(
        (1..=JOB_CONCURRENCY).contains(&most_running),
        "at most {JOB_CONCURRENCY} of the job's secrets rotate at once; seen {most_running}"
    );

    // One JSON line per secret, then the summary.
    let lines: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let total: usize = COUNTS.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 200);
    assert_eq!(lines.len(), total + 1, "{stdout}");
    let summary = serde_json::json!({"type": "summary", "total": total, "failed": 0, "states": {"rotated": total}});
    assert_eq!(lines[total], summary);
    let mut seen = BTreeMap::new();
    for line in &lines[..total] {
        assert_eq!(
            (line["type"].as_str(), line["state"].as_str(), line["ok"].as_bool()),
            (Some("secret"), Some("rotated"), Some(true)),
            "{line}"
        );
        let secret = line["secret"].as_str().unwrap().to_owned();
        let (first_version, index) =
            first_versions.get(&secret).unwrap_or_else(|| panic!("{secret} is not one of the test's"));
        assert_eq!(line["version"].as_str(), Some(first_version.as_str()), "{line}");
        assert!(seen.insert(secret, (*index, line["newVersion"].as_str().unwrap().to_owned())).is_none(), "{line}");
    }
    assert_eq!(seen.len(), total, "every secret exactly once");

    // Every new value works on its target and the old one does not.
    for (secret, (index, new_version)) in &seen {
        let account = &accounts[*index];
        let latest = site.store.get_latest(secret).await.unwrap();
        assert_eq!(&latest.version, new_version, "{secret}: the vault's latest is the version reported");
        assert!(
            logs_in(&site, account, &latest.value).await,
            "{secret}: the new value does not log in as {}",
            account.name
        );
        assert!(
            !logs_in(&site, account, &account.first).await,
            "{secret}: the old value still logs in as {}",
            account.name
        );
        assert!(!stdout.contains(latest.value.expose_secret()) && !stderr.contains(latest.value.expose_secret()));
    }
    for (secret, _) in &admins {
        assert_eq!(site.store.list_versions(secret).await.unwrap().len(), 1, "{secret} is not managed");
    }

    serve.terminate();
    remove_accounts(&accounts, &run).await;
    site.vault.shutdown().await;
}
