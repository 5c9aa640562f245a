//! Loading: a full file parses into the model; typos and bad values are errors that
//! name the key; environment variables override the file.
// figment::Jail's closure signature returns figment::Error.
#![allow(clippy::result_large_err)]

use std::io::Write;

use kv_rotator_config::{load, ConfigError, CredentialConfig};
use kv_rotator_rotators::htpasswd::HtpasswdConfig;
use kv_rotator_rotators::postgres::PostgresConfig;

/// Runs `f` holding figment's process-wide lock on the environment, so the test that
/// sets `KV_ROTATOR_*` variables cannot leak them into the others.
fn jailed<T>(f: impl FnOnce() -> T) -> T {
    let mut out = None;
    figment::Jail::expect_with(|_| {
        out = Some(f());
        Ok(())
    });
    out.unwrap()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

const FULL: &str = r#"
[vault]
url = "https://my-vault.vault.azure.net/"
credential = { kind = "workload-identity", client_id = "11111111-1111-1111-1111-111111111111" }

[webhook]
listen = "127.0.0.1:9000"

[engine]
max_attempts = 3

[targets.orders-db]
kind = "postgres"
host = "db.example.internal"
port = 6432
sslmode = "disable"
admin = { username = "rotation_admin", secret = "orders-db-admin" }
password = { length = 24, min_symbols = 1 }
accounts = ["orders_app", "orders_report_*"]

[targets.intranet]
kind = "htpasswd"
path = "/srv/www/.htpasswd"
accounts = ["*"]
"#;

#[test]
fn full_file_parses() {
    let f = file(FULL);
    let config = jailed(|| load(Some(f.path()))).expect("valid config");
    assert_eq!(config.webhook.listen.port(), 9000);
    assert_eq!(config.engine.max_attempts, 3);
    assert_eq!(config.engine.concurrency, 8, "default kept");
    assert!(matches!(config.vault.credential, CredentialConfig::WorkloadIdentity { client_id: Some(_), .. }));
    let db = &config.targets["orders-db"];
    let pg = db.target.settings::<PostgresConfig>().unwrap_or_else(|| panic!("wrong kind {:?}", db.target));
    assert_eq!(db.target.name(), "postgres");
    assert_eq!(pg.host, "db.example.internal");
    assert_eq!(pg.port, 6432);
    assert_eq!(db.admin.as_ref().unwrap().secret, "orders-db-admin");
    assert_eq!(db.password.length, 24);
    assert_eq!(db.accounts, ["orders_app", "orders_report_*"]);
    assert!(!db.allow_admin_account, "the admin's own account is opt-in");
    assert!(config.targets["intranet"].target.settings::<HtpasswdConfig>().is_some());
}

fn error_of(text: &str) -> String {
    let f = file(text);
    jailed(|| load(Some(f.path()))).expect_err("should be rejected").to_string()
}

#[test]
fn unknown_keys_are_named() {
    let e = error_of("[vault]\nurl = \"https://v.vault.azure.net/\"\nulr = 1\n");
    assert!(e.contains("ulr"), "{e}");
    let e = error_of("[vault]\nurl = \"https://v.vault.azure.net/\"\n[webhook]\nlisten_addr = \"0.0.0.0:1\"\n");
    assert!(e.contains("listen_addr"), "{e}");
    // Inside a target profile, next to the flattened kind-specific keys.
    let e = error_of("[vault]\nurl = \"https://v.vault.azure.net/\"\n[targets.db]\nkind = \"postgres\"\nhots = \"x\"\nhost = \"y\"\nsslmode = \"disable\"\naccounts = [\"*\"]\n");
    assert!(e.contains("hots"), "{e}");
    let e = error_of("[vault]\nurl = \"https://v.vault.azure.net/\"\n[targets.db]\nkind = \"postgres\"\nhost = \"y\"\nsslmode = \"disable\"\npassword = { lenght = 20 }\naccounts = [\"*\"]\n");
    assert!(e.contains("lenght"), "{e}");
}

#[test]
fn unknown_target_kind_and_credential_kind_are_named() {
    let e = error_of(
        "[vault]\nurl = \"https://v.vault.azure.net/\"\n[targets.db]\nkind = \"oracle\"\naccounts = [\"*\"]\n",
    );
    assert!(e.contains("oracle"), "{e}");
    let e = error_of("[vault]\nurl = \"https://v.vault.azure.net/\"\ncredential = { kind = \"magic\" }\n");
    assert!(e.contains("magic"), "{e}");
}

#[test]
fn invalid_values_are_explained() {
    let e = error_of("[vault]\nurl = \"http://v.vault.azure.net/\"\n");
    assert!(e.contains("vault.url") && e.contains("https"), "{e}");
    let e = error_of("[vault]\nurl = \"https://v.vault.azure.net/\"\ncredential = { kind = \"dev-vault\" }\n");
    assert!(e.contains("connect_to"), "{e}");
    let e = error_of(
        "[vault]\nurl = \"https://v.vault.azure.net/\"\n[engine]\nconcurrency = 0\n[targets.db]\nkind = \"htpasswd\"\npath = \"/x\"\nadmin = { username = \"a\", secret = \"bad_name!\" }\npassword = { length = 4 }\naccounts = [\"*\"]\n",
    );
    assert!(e.contains("engine.concurrency"), "{e}");
    assert!(e.contains("targets.db.admin.secret"), "{e}");
    assert!(e.contains("targets.db.password"), "{e}");
}

#[test]
fn a_profile_must_say_which_accounts_it_may_rotate() {
    let profile = "[vault]\nurl = \"https://v.vault.azure.net/\"\n[targets.db]\nkind = \"htpasswd\"\npath = \"/x\"\n";
    let e = error_of(profile);
    assert!(e.contains("accounts"), "{e}");
    let e = error_of(&format!("{profile}accounts = []\n"));
    assert!(e.contains("targets.db.accounts is empty"), "{e}");
    let e = error_of(&format!("{profile}accounts = [\"app_[\"]\n"));
    assert!(e.contains("targets.db.accounts") && e.contains("app_["), "{e}");
}

#[test]
fn missing_file_and_missing_vault_are_errors() {
    let e = jailed(|| load(Some(std::path::Path::new("/nonexistent/kv-rotator.toml")))).unwrap_err();
    assert!(matches!(e, ConfigError::Parse(_)));
    assert!(e.to_string().contains("/nonexistent/kv-rotator.toml"));
    let e = error_of("[webhook]\nlisten = \"0.0.0.0:1\"\n");
    assert!(e.contains("vault"), "{e}");
}

#[test]
fn environment_overrides_the_file() {
    let f = file(FULL);
    figment::Jail::expect_with(|jail| {
        jail.set_env("KV_ROTATOR_WEBHOOK__LISTEN", "127.0.0.1:7777");
        jail.set_env("KV_ROTATOR_ENGINE__CONCURRENCY", "2");
        // A kind's own key, read by its registration rather than by figment directly.
        jail.set_env("KV_ROTATOR_TARGETS__ORDERS-DB__PORT", "5433");
        let config = load(Some(f.path())).map_err(|e| e.to_string())?;
        assert_eq!(config.webhook.listen.port(), 7777);
        assert_eq!(config.engine.concurrency, 2);
        let pg = config.targets["orders-db"].target.settings::<PostgresConfig>().expect("postgres");
        assert_eq!(pg.port, 5433);
        Ok(())
    });
}

#[test]
fn the_command_lines_own_variables_are_not_configuration_keys() {
    // `--config` and `--log-format` can come from KV_ROTATOR_CONFIG and
    // KV_ROTATOR_LOG_FORMAT (the README and the deploy manifests use them): the loader must
    // not refuse them as unknown keys.
    let f = file(FULL);
    figment::Jail::expect_with(|jail| {
        jail.set_env("KV_ROTATOR_CONFIG", f.path().display().to_string());
        jail.set_env("KV_ROTATOR_LOG_FORMAT", "json");
        load(Some(f.path())).map_err(|e| e.to_string())?;
        // A real unknown key still is refused.
        jail.set_env("KV_ROTATOR_LOG_FORMATS", "json");
        let e = load(Some(f.path())).unwrap_err().to_string();
        assert!(e.contains("log_formats"), "{e}");
        Ok(())
    });
}

#[test]
fn the_admin_listener_is_loopback_by_default_and_apart_from_the_webhook() {
    let vault = "[vault]\nurl = \"https://v.vault.azure.net/\"\n";
    let f = file(vault);
    let config = jailed(|| load(Some(f.path()))).unwrap();
    assert!(config.admin.enabled);
    assert_eq!(config.admin.listen, "127.0.0.1:9464".parse().unwrap());
    let f = file(&format!("{vault}[admin]\nlisten = \"0.0.0.0:9100\"\n"));
    assert_eq!(jailed(|| load(Some(f.path()))).unwrap().admin.listen.port(), 9100);
    let f = file(&format!("{vault}[admin]\nenabled = false\n"));
    assert!(!jailed(|| load(Some(f.path()))).unwrap().admin.enabled);
    assert_eq!(config.admin.vault_failing_secs, 120, "/readyz gives the vault two minutes by default");
    let f = file(&format!("{vault}[admin]\nvault_failing_secs = 90\n"));
    assert_eq!(jailed(|| load(Some(f.path()))).unwrap().admin.vault_failing_secs, 90);
    // Shorter than the lease's life (60 s by default), one retried 429 would flap /readyz.
    for short in [0, 30] {
        let e = error_of(&format!("{vault}[admin]\nvault_failing_secs = {short}\n"));
        assert!(e.contains("admin.vault_failing_secs") && e.contains("lease.ttl_secs"), "{e}");
    }

    let e = error_of(&format!("{vault}[admin]\nlisten_on = \"127.0.0.1:1\"\n"));
    assert!(e.contains("listen_on"), "{e}");
    let e = error_of(&format!("{vault}[admin]\nlisten = \"not an address\"\n"));
    assert!(e.contains("admin") || e.contains("listen"), "{e}");
    // On the webhook's port: the same address, or either on the wildcard address.
    for (webhook, admin) in [("127.0.0.1:8080", "127.0.0.1:8080"), ("0.0.0.0:8080", "127.0.0.1:8080")] {
        let e = error_of(&format!("{vault}[webhook]\nlisten = \"{webhook}\"\n[admin]\nlisten = \"{admin}\"\n"));
        assert!(e.contains("admin.listen") && e.contains("webhook.listen"), "{e}");
    }
    // Disabled, or on another address or port, or a port the OS picks: fine.
    for admin in
        ["enabled = false\nlisten = \"0.0.0.0:8080\"", "listen = \"10.0.0.1:8080\"", "listen = \"127.0.0.1:0\""]
    {
        let f = file(&format!("{vault}[webhook]\nlisten = \"127.0.0.2:8080\"\n[admin]\n{admin}\n"));
        jailed(|| load(Some(f.path()))).unwrap_or_else(|e| panic!("{admin}: {e}"));
    }
}

#[test]
fn secret_env_names_come_from_the_file_and_the_environment_without_a_full_load() {
    use kv_rotator_config::load::secret_env_names;
    let client_secret = file(
        "[vault]\ncredential = { kind = \"client-secret\", tenant_id = \"t\", client_id = \"c\" }\n\
         [webhook]\nauth = { mode = \"shared-key\", key = { env = \"HOOK_KEY\" }, previous_key = { env = \"OLD_HOOK_KEY\" } }\n",
    );
    // No vault.url: a full load would refuse this file, the names are still found.
    assert_eq!(
        jailed(|| secret_env_names(Some(client_secret.path()))),
        ["AZURE_CLIENT_SECRET", "HOOK_KEY", "OLD_HOOK_KEY"]
    );
    let certificate = file(
        "[vault]\ncredential = { kind = \"client-certificate\", tenant_id = \"t\", client_id = \"c\", \
         certificate_file = \"/c.pfx\", password_env = \"PFX_PASSWORD\" }\n\
         [webhook]\nauth = { mode = \"shared-key\", key = { file = \"/run/key\" } }\n",
    );
    assert_eq!(jailed(|| secret_env_names(Some(certificate.path()))), ["PFX_PASSWORD"]);
    assert!(jailed(|| secret_env_names(Some(file(FULL).path()))).is_empty());
    assert!(jailed(|| secret_env_names(None)).is_empty());
    figment::Jail::expect_with(|jail| {
        jail.set_env("KV_ROTATOR_VAULT__CREDENTIAL__KIND", "client-secret");
        jail.set_env("KV_ROTATOR_VAULT__CREDENTIAL__SECRET_ENV", "SP_SECRET");
        jail.set_env("KV_ROTATOR_VAULT__CREDENTIAL__TENANT_ID", "t");
        jail.set_env("KV_ROTATOR_VAULT__CREDENTIAL__CLIENT_ID", "c");
        assert_eq!(secret_env_names(None), ["SP_SECRET"]);
        Ok(())
    });
}

#[test]
fn admin_auth_modes_are_checked_where_they_are_read() {
    let vault = "[vault]\nurl = \"https://v.vault.azure.net/\"\n";
    let f = file(vault);
    assert!(jailed(|| load(Some(f.path()))).unwrap().admin.auth.is_none(), "no [admin.auth]: no admin API");
    let token = file(&format!(
        "{vault}[admin]\nlisten = \"0.0.0.0:9464\"\nauth = {{ mode = \"static-token\", token = {{ env = \"ADMIN_TOKEN\" }} }}\n"
    ));
    let config = jailed(|| load(Some(token.path()))).unwrap();
    assert!(matches!(config.admin.auth, Some(kv_rotator_config::AdminAuthConfig::StaticToken { .. })));
    assert_eq!(jailed(|| kv_rotator_config::load::secret_env_names(Some(token.path()))), ["ADMIN_TOKEN"]);
    let entra = file(&format!(
        "{vault}[admin.auth]\nmode = \"entra-id\"\ntenant_id = \"t\"\naudience = [\"api://kv-rotator-admin\"]\nrole = \"KvRotator.Rotate\"\n"
    ));
    jailed(|| load(Some(entra.path()))).unwrap();
    let loopback_none = file(&format!("{vault}[admin]\nauth = {{ mode = \"none\" }}\n"));
    jailed(|| load(Some(loopback_none.path()))).unwrap();

    for (toml, expected) in [
        ("listen = \"0.0.0.0:9464\"\nauth = { mode = \"none\" }", "only allowed when admin.listen is a loopback"),
        ("auth = { mode = \"static-token\", token = {} }", "admin.auth.token: set exactly one of env or file"),
        ("auth = { mode = \"static-token\", token = { env = \"A\", file = \"/b\" } }", "exactly one of env or file"),
        ("auth = { mode = \"static-token\", token = \"in-the-file\" }", "admin"),
        ("auth = { mode = \"static-token\", token = { env = \"T\" }, extra = 1 }", "extra"),
        ("auth = { mode = \"entra-id\", tenant_id = \"t\", audience = [\"a\"] }", "role"),
        ("auth = { mode = \"entra-id\", tenant_id = \"t\", audience = [\"a\"], role = \" \" }", "admin.auth.role"),
        ("auth = { mode = \"basic\" }", "basic"),
    ] {
        let e = error_of(&format!("{vault}[admin]\n{toml}\n"));
        assert!(e.contains(expected), "{toml}: {e}");
    }
}

#[test]
fn the_proof_file_and_client_credential_are_entra_id_settings() {
    let vault = "[vault]\nurl = \"https://v.vault.azure.net/\"\n";
    let entra = "mode = \"entra-id\"\ntenant_id = \"t\"\naudience = [\"api://kv-rotator-admin\"]\nrole = \"KvRotator.Rotate\"\n";
    let with_both = file(&format!(
        "{vault}[admin.auth]\n{entra}proof_file = \"/run/kv-rotator/admin-proof\"\n\
         client_credential = {{ kind = \"client-secret\", tenant_id = \"t\", client_id = \"c\", secret_env = \"OPS_SECRET\" }}\n"
    ));
    let config = jailed(|| load(Some(with_both.path()))).unwrap();
    let Some(kv_rotator_config::AdminAuthConfig::EntraId { proof_file, client_credential, .. }) = config.admin.auth
    else {
        panic!("entra-id")
    };
    assert_eq!(proof_file.unwrap(), std::path::Path::new("/run/kv-rotator/admin-proof"));
    assert!(matches!(client_credential.as_deref(), Some(CredentialConfig::ClientSecret { .. })));
    // The client secret leaves the environment at startup like the vault credential's.
    assert_eq!(jailed(|| kv_rotator_config::load::secret_env_names(Some(with_both.path()))), ["OPS_SECRET"]);

    for (key, value) in
        [("proof_file", "\"/run/kv-rotator/admin-proof\""), ("client_credential", "{ kind = \"azure-cli\" }")]
    {
        for mode in ["auth = { mode = \"static-token\", token = { env = \"T\" }", "auth = { mode = \"none\""] {
            let e = error_of(&format!("{vault}[admin]\n{mode}, {key} = {value} }}\n"));
            assert!(e.contains(&format!("admin.auth.{key}")) && e.contains("only mode = \"entra-id\""), "{mode}: {e}");
            assert_eq!(e.contains("static token"), mode.contains("static-token"), "{mode}: {e}");
        }
    }
    let e = error_of(&format!("{vault}[admin.auth]\n{entra}client_credential = {{ kind = \"dev-vault\" }}\n"));
    assert!(e.contains("admin.auth.client_credential") && e.contains("dev-vault"), "{e}");
    let e = error_of(&format!("{vault}[admin.auth]\n{entra}proof_file = \"/\"\n"));
    assert!(e.contains("admin.auth.proof_file") && e.contains("name a file"), "{e}");
    let e = error_of(&format!("{vault}[admin.auth]\n{entra}proof_file = \"run/admin-proof\"\n"));
    assert!(e.contains("admin.auth.proof_file run/admin-proof: give an absolute path"), "{e}");
}
