//! `kv-rotator plugin test` on a real target: the RabbitMQ plugin
//! (`examples/plugins/rabbitmq.py`) with its fixture (`rabbitmq_fixture.py`), against the
//! machine's RabbitMQ, exactly as a plugin author would run them. Needs
//! `scripts/setup-rabbitmq.sh` (the management API on 127.0.0.1:15672, guest an
//! administrator there).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");
const MANAGEMENT: &str = "http://127.0.0.1:15672";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins").canonicalize().unwrap()
}

/// Deletes the users the fixture made (named `prefix…`), passed or failed.
async fn delete_users(prefix: &str) {
    let http = reqwest::Client::new();
    let users: serde_json::Value = http
        .get(format!("{MANAGEMENT}/api/users"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("the management API: run scripts/setup-rabbitmq.sh")
        .json()
        .await
        .unwrap();
    for name in users.as_array().unwrap().iter().filter_map(|u| u["name"].as_str()).filter(|n| n.starts_with(prefix)) {
        let url = format!("{MANAGEMENT}/api/users/{name}");
        if let Err(e) = http.delete(url).basic_auth("guest", Some("guest")).send().await {
            eprintln!("cleanup: could not delete RabbitMQ user {name}: {e}");
        }
    }
}

#[tokio::test]
async fn the_rabbitmq_plugin_passes_plugin_test_with_its_fixture() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture's own login (an administrator of the test server), in a file of its own.
    let login = dir.path().join("login");
    std::fs::write(&login, "guest:guest\n").unwrap();
    std::fs::set_permissions(&login, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("kv-rotator.toml");
    std::fs::write(
        &config,
        format!(
            "[vault]\nurl = \"https://unused.vault.azure.net/\"\n\
             [targets.mq]\nkind = \"exec\"\ncommand = \"{}\"\nstrategy = \"single-user\"\naccounts = [\"*\"]\n\
             settings = {{ management_url = \"{MANAGEMENT}\", amqp_host = \"127.0.0.1\", amqp_port = 5672 }}\n",
            examples().join("rabbitmq.py").display()
        ),
    )
    .unwrap();
    let prefix = format!("kvr_pt_{}_", std::process::id());

    let output = tokio::process::Command::new(BIN)
        .args(["plugin", "test", "--config"])
        .arg(&config)
        .arg("--fixture")
        .arg(examples().join("rabbitmq_fixture.py"))
        .arg("--fixture-arg")
        .arg(&login)
        .args(["--fixture-arg", &prefix, "mq"])
        .env_remove("KV_ROTATOR_CONFIG")
        .output()
        .await
        .unwrap();
    delete_users(&prefix).await;

    let out = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{out}");
    assert!(out.contains("testing targets.mq (kind \"exec\""), "{out}");
    for check in [
        "ok       set_password of a new pending password with the current password",
        "ok       only the admin login works → ChangedWithAdmin",
        "ok       wrong admin password → permanent error, nothing changed",
        "ok       no password in any Debug/Display text",
    ] {
        assert!(out.contains(check), "missing {check:?}: {out}");
    }
    assert!(out.contains(", 0 skipped") && !out.contains("FAILED"), "{out}");
}
