//! The configuration example in the README is a real configuration: it loads, and says
//! what the README says it does.

use kv_rotator_config::figment::providers::{Format, Toml};
use kv_rotator_config::figment::Figment;
use kv_rotator_config::load::from_figment;
use kv_rotator_config::CredentialConfig;
use kv_rotator_rotators::exec::ExecConfig;
use kv_rotator_rotators::htpasswd::HtpasswdConfig;
use kv_rotator_rotators::ldap::LdapConfig;
use kv_rotator_rotators::mariadb::MariaDbConfig;
use kv_rotator_rotators::postgres::PostgresConfig;
use kv_rotator_rotators::redis::RedisConfig;

/// The first ```toml block after the "## Configuration" heading.
fn readme_example() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = &readme[readme.find("## Configuration").expect("a Configuration section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + section[start..].find("```").expect("the block's end");
    section[start..end].to_owned()
}

#[test]
fn the_readme_configuration_example_loads() {
    let config = from_figment(Figment::from(Toml::string(&readme_example())))
        .unwrap_or_else(|e| panic!("README example does not load: {e}"));
    assert_eq!(config.vault.url, "https://my-vault.vault.azure.net/");
    assert_eq!(config.vault.credential, CredentialConfig::default(), "managed identity");
    assert!(config.targets["orders-db"].target.settings::<PostgresConfig>().is_some());
    assert!(config.targets["shop-db"].target.settings::<MariaDbConfig>().is_some());
    assert!(config.targets["sessions-cache"].target.settings::<RedisConfig>().is_some());
    assert!(config.targets["directory"].target.settings::<LdapConfig>().is_some());
    assert!(config.targets["intranet"].target.settings::<HtpasswdConfig>().is_some());
    assert!(config.targets["legacy-app"].target.settings::<ExecConfig>().is_some());
    assert_eq!(config.engine.max_attempts, 5);
    assert!(config.admin.enabled && config.admin.listen.ip().is_loopback(), "the admin listener on loopback");
    assert!(
        matches!(config.admin.auth, Some(kv_rotator_config::AdminAuthConfig::StaticToken { .. })),
        "the admin API with a static token"
    );
}
