//! Target profiles of every kind load, and a wrong key or value in one is named.

use kv_rotator_config::figment::providers::{Format, Toml};
use kv_rotator_config::figment::Figment;
use kv_rotator_config::load::from_figment;
use kv_rotator_config::Config;
use kv_rotator_rotators::exec::ExecConfig;
use kv_rotator_rotators::mariadb::MariaDbConfig;
use kv_rotator_rotators::redis::AclSave;
use kv_rotator_rotators::redis::RedisConfig;
use kv_rotator_rotators::tls::TlsMode;

const VAULT: &str = "[vault]\nurl = \"https://v.vault.azure.net/\"\n";

fn load(profile: &str) -> Result<Config, String> {
    from_figment(Figment::from(Toml::string(&format!("{VAULT}{profile}")))).map_err(|e| e.to_string())
}

#[test]
fn mariadb_profiles_load_with_verified_tls_by_default_and_mysql_is_refused() {
    let profile = |kind: &str| {
        format!(
            "[targets.shop]\nkind = \"{kind}\"\nhost = \"shop-db.internal\"\naccounts = [\"shop_*\"]\n\
             admin = {{ username = \"rotation_admin\", secret = \"shop-admin\" }}\n"
        )
    };
    let config = load(&profile("mariadb")).unwrap();
    let db = config.targets["shop"].target.settings::<MariaDbConfig>().expect("wrong kind");
    assert_eq!((db.host.as_str(), db.port, db.tls), ("shop-db.internal", 3306, TlsMode::VerifyFull));
    // MySQL lacks the SQL (is_role, IDENTIFIED BY PASSWORD in ALTER USER) and the hash in
    // SHOW GRANTS that proves a login.
    let e = load(&profile("mysql")).unwrap_err();
    assert!(e.contains("kind \"mysql\": not supported (MariaDB only)"), "{e}");
    let config = load(
        "[targets.shop]\nkind = \"mariadb\"\nhost = \"10.0.0.5\"\nport = 3307\ntls_ca_file = \"/etc/ca.pem\"\n\
         tls_server_name = \"shop-db.internal\"\nstrategy = \"single-user\"\naccounts = [\"*\"]\n",
    )
    .unwrap();
    let db = config.targets["shop"].target.settings::<MariaDbConfig>().expect("wrong kind");
    assert_eq!(db.tls_server_name.as_deref(), Some("shop-db.internal"));
}

#[test]
fn redis_profiles_load_with_verified_tls_and_acl_save_by_default() {
    let config =
        load("[targets.cache]\nkind = \"redis\"\nhost = \"cache.internal\"\nport = 6380\naccounts = [\"app\"]\n")
            .unwrap();
    let redis = config.targets["cache"].target.settings::<RedisConfig>().expect("wrong kind");
    assert_eq!((redis.port, redis.tls, redis.acl_save), (6380, TlsMode::VerifyFull, AclSave::Required));
    let config = load(
        "[targets.cache]\nkind = \"redis\"\nhost = \"c\"\ntls = \"disable\"\nacl_save = \"never\"\naccounts = [\"*\"]\n",
    )
    .unwrap();
    let redis = config.targets["cache"].target.settings::<RedisConfig>().expect("wrong kind");
    assert_eq!((redis.tls, redis.acl_save), (TlsMode::Disable, AclSave::Never));
}

#[test]
fn multi_password_profiles_get_a_grace_period() {
    let profile = |extra: &str| {
        format!("[targets.cache]\nkind = \"redis\"\nhost = \"c\"\naccounts = [\"*\"]\nstrategy = \"multi-password\"\n{extra}")
    };
    let config = load(&profile("")).unwrap();
    assert_eq!(config.targets["cache"].grace_period(), Some(std::time::Duration::from_secs(86_400)));
    let config = load(&profile("grace_period_secs = 90\n")).unwrap();
    assert_eq!(config.targets["cache"].grace_period(), Some(std::time::Duration::from_secs(90)));
    let config = load("[targets.db]\nkind = \"postgres\"\nhost = \"h\"\naccounts = [\"*\"]\n").unwrap();
    assert_eq!(config.targets["db"].grace_period(), None, "single-user has no grace period");
}

#[test]
fn alternating_users_profiles_name_the_twin_by_a_suffix() {
    let profile = |extra: &str| {
        format!(
            "[targets.db]\nkind = \"postgres\"\nhost = \"h\"\naccounts = [\"app*\"]\nstrategy = \"alternating-users\"\n\
             admin = {{ username = \"rot\", secret = \"db-admin\" }}\n{extra}"
        )
    };
    assert_eq!(load(&profile("")).unwrap().targets["db"].twin_suffix(), Some("_clone"));
    assert_eq!(load(&profile("twin_suffix = \"_b\"\n")).unwrap().targets["db"].twin_suffix(), Some("_b"));
    let single = load("[targets.db]\nkind = \"postgres\"\nhost = \"h\"\naccounts = [\"*\"]\n").unwrap();
    assert_eq!(single.targets["db"].twin_suffix(), None);
}

#[test]
fn wrong_keys_and_values_are_named() {
    let cases = [
        ("kind = \"mariadb\"\nhots = \"x\"\nhost = \"y\"", "hots"),
        ("kind = \"redis\"\nhost = \"y\"\nacl_sav = \"never\"", "acl_sav"),
        ("kind = \"mariadb\"\nhost = \"y\"\ntls = \"required\"", "tls \"required\" is refused"),
        ("kind = \"redis\"\nhost = \"y\"\ntls = \"prefer\"", "tls \"prefer\" is refused"),
        ("kind = \"redis\"\nhost = \"y\"\nacl_save = \"sometimes\"", "sometimes"),
        ("kind = \"mariadb\"\nhost = \"y\"\nstrategy = \"multi-password\"", "RETAIN CURRENT PASSWORD"),
        ("kind = \"redis\"\nhost = \"y\"\nstrategy = \"alternating-users\"", "use multi-password"),
        ("kind = \"postgres\"\nhost = \"y\"\nstrategy = \"multi-password\"", "one password per role"),
        ("kind = \"redis\"\nhost = \"y\"\nstrategy = \"multi_password\"", "unknown strategy \"multi_password\""),
        ("kind = \"redis\"\nhost = \"y\"\ngrace_period_secs = 60", "applies to strategies \"multi-password\" and"),
        ("kind = \"postgres\"\nhost = \"y\"\ntwin_suffix = \"_b\"", "applies to strategy \"alternating-users\" only"),
        ("kind = \"postgres\"\nhost = \"y\"\nstrategy = \"alternating-users\"", "needs an admin login"),
        (
            "kind = \"mariadb\"\nhost = \"y\"\nstrategy = \"alternating-users\"\ntwin_suffix = \"'; DROP\"\n\
             admin = { username = \"r\", secret = \"s\" }",
            "twin_suffix \"'; DROP\": 1-32 of",
        ),
        ("kind = \"redis\"\nhost = \"y\"\nstrategy = \"multi-password\"\ngrace_period_secs = 0", "at least 1"),
        ("kind = \"mariadb\"\nhost = \"y\"\nconnect_timeout_secs = 0", "at least 1"),
        ("kind = \"postgre\"\nhost = \"y\"", "postgre"),
        ("kind = \"ldap\"\nurl = \"ldaps://l\"\nuser_dn_template = \"uid={}\"\nstart_tls = true", "start_tls"),
        ("kind = \"ldap\"\nurl = \"ldaps://l\"", "user_dn_template"),
        (
            "kind = \"ldap\"\nurl = \"ldaps://l\"\nuser_dn_template = \"uid={}\"\nstrategy = \"multi-password\"",
            "one password per account",
        ),
    ];
    for (profile, want) in cases {
        let e = load(&format!("[targets.t]\n{profile}\naccounts = [\"*\"]\n")).unwrap_err();
        assert!(e.contains(want), "{profile:?}: {e}");
    }
}

#[test]
fn exec_profiles_load_with_settings_and_refuse_secrets_and_twins() {
    let config = load(
        "[targets.legacy]\nkind = \"exec\"\ncommand = \"/opt/plugins/legacy.py\"\nargs = [\"--site\", \"eu\"]\n\
         timeout_secs = 10\nenv = [\"HTTPS_PROXY\"]\naccounts = [\"*\"]\nstrategy = \"multi-password\"\n\
         [targets.legacy.settings]\nurl = \"https://legacy.internal\"\nretries = 3\n",
    )
    .unwrap();
    let exec = config.targets["legacy"].target.settings::<ExecConfig>().expect("wrong kind");
    assert_eq!(exec.command, std::path::Path::new("/opt/plugins/legacy.py"));
    assert_eq!((exec.timeout_secs, exec.args.len(), exec.env.len()), (10, 2, 1));
    assert_eq!(exec.settings["url"], "https://legacy.internal");
    assert_eq!(exec.settings["retries"], 3);
    assert_eq!(config.targets["legacy"].target.name(), "exec");

    let profile = |extra: &str| format!("[targets.x]\nkind = \"exec\"\ncommand = \"/p\"\naccounts = [\"*\"]\n{extra}");
    let e = load(&profile("settings = { admin_password = \"x\" }\n")).unwrap_err();
    assert!(e.contains("settings.admin_password looks like a secret"), "{e}");
    let e = load(&profile("strategy = \"alternating-users\"\n")).unwrap_err();
    assert!(e.contains("exec plugins offer single-user and multi-password"), "{e}");
    let e = load("[targets.x]\nkind = \"exec\"\ncommand = \"p.sh\"\naccounts = [\"*\"]\n").unwrap_err();
    assert!(e.contains("absolute path"), "{e}");
    let e = load(&profile("timeout = 5\n")).unwrap_err();
    assert!(e.contains("timeout"), "{e}");
}

#[test]
fn rotation_windows_load_and_wrong_ones_are_named_with_their_key() {
    let profile = "[targets.db]\nkind = \"redis\"\nhost = \"y\"\naccounts = [\"*\"]\n";
    let config = load(&format!("{profile}rotation_window = \"Mon-Fri 22:00-05:00 Europe/Amsterdam\"\n")).unwrap();
    let window = config.targets["db"].rotation_window.as_ref().expect("a window");
    assert_eq!(window.to_string(), "Mon-Fri 22:00-05:00 Europe/Amsterdam");
    assert_eq!(load(profile).unwrap().targets["db"].rotation_window, None, "no window: any time");
    for (extra, want) in [
        ("rotation_window = \"Mon-Fri 22:00-05:00 Mars/Base\"\n", "not a time zone"),
        ("rotation_window = \"weekdays 22:00-05:00 UTC\"\n", "\"weekdays\" is not a day"),
        ("rotation_window = 5\n", "rotation_window"),
        // The default sweep runs hourly: a one-hour span could see no sweep.
        (
            "rotation_window = \"Sun 03:00-04:00 UTC\"\n",
            "targets.db.rotation_window \"Sun 03:00-04:00 UTC\": a span of 60 minutes is shorter than 2 sweeps",
        ),
        (
            "rotation_window = \"Sun 03:00-06:00 UTC\"\n[sweeper]\nenabled = false\n",
            "targets.db.rotation_window needs sweeper.enabled = true",
        ),
        ("[engine]\nwindow_expiry_margin_hours = 0\n", "engine.window_expiry_margin_hours = 0"),
    ] {
        let e = load(&format!("{profile}{extra}")).unwrap_err();
        assert!(e.contains(want), "{extra:?}: {e}");
    }
    let daily = format!("{profile}[engine]\nwindow_expiry_margin_hours = 1\n[sweeper]\ninterval_secs = 86400\n");
    assert!(load(&daily).is_ok(), "a margin shorter than two sweeps is widened, not refused");
    // A short span is fine when the sweeper runs often enough.
    let ok = format!("{profile}rotation_window = \"Sun 03:00-04:00 UTC\"\n[sweeper]\ninterval_secs = 600\n");
    assert!(load(&ok).is_ok());
}
